"""Routes of deployments and deployment shapes, as the ``fireworks-ai`` SDK calls them.

``/v1/accounts/{account}/deployments``: create (``deploymentId``,
``validateOnly`` in the query), list (paging, ``filter``, ``orderBy``,
``showDeleted``), get, PATCH (``updateMask``, or the keys present),
``PATCH …/{id}:scale``, DELETE (soft; ``hard``), ``POST …/{id}:undelete``.
Ids are matched as paths because the SDK percent-encodes a full resource
name passed as an id (``accounts%2Fa%2Fdeployments%2Fd``) and the server
decodes it before routing. Handlers are plain ``def`` (thread pool).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request

from firebox.catalog.endpoints import ReadMask
from firebox.deployments.schemas import (
    Deployment,
    DeploymentList,
    DeploymentSpec,
    ScaleRequest,
    UndeleteRequest,
)
from firebox.deployments.service import DeploymentService
from firebox.deployments.shape_schemas import (
    DeploymentShape,
    DeploymentShapeList,
    DeploymentShapeVersion,
    DeploymentShapeVersionList,
    MatchRequest,
    ShapeSpec,
)
from firebox.deployments.shapes import ShapeService
from firebox.http.auth import CurrentPrincipal

_DUMP: dict[str, Any] = {"response_model_by_alias": True}
PREFIX = "/v1/accounts/{account}"

PageSize = Annotated[int | None, Query(alias="pageSize")]
PageToken = Annotated[str | None, Query(alias="pageToken")]


def _deployments(request: Request) -> DeploymentService:
    service: DeploymentService = request.app.state.services.deployments.service
    return service


def _shapes(request: Request) -> ShapeService:
    service: ShapeService = request.app.state.services.deployments.shapes
    return service


def build_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["deployments"])
    _deployment_routes(router)
    _shape_routes(router)
    return router


def _deployment_routes(router: APIRouter) -> None:
    @router.post("/deployments", response_model=Deployment, **_DUMP)
    def create_deployment(
        request: Request,
        principal: CurrentPrincipal,
        account: str,
        body: Annotated[DeploymentSpec, Body()],
        deployment_id: Annotated[str | None, Query(alias="deploymentId", max_length=255)] = None,
        validate_only: Annotated[bool, Query(alias="validateOnly")] = False,
    ) -> Deployment:
        return _deployments(request).create(
            principal, account, body, deployment_id, validate_only=validate_only
        )

    @router.get("/deployments", response_model=DeploymentList, **_DUMP)
    def list_deployments(
        request: Request,
        principal: CurrentPrincipal,
        account: str,
        _: ReadMask,
        page_size: PageSize = None,
        page_token: PageToken = None,
        filter_: Annotated[str | None, Query(alias="filter", max_length=2000)] = None,
        order_by: Annotated[str | None, Query(alias="orderBy", max_length=500)] = None,
        show_deleted: Annotated[bool, Query(alias="showDeleted")] = False,
    ) -> DeploymentList:
        return _deployments(request).list(
            principal,
            account,
            size=page_size,
            token=page_token,
            filter_=filter_,
            order_by=order_by,
            show_deleted=show_deleted,
        )

    # The verbs first: ``{deployment:path}`` would otherwise swallow ``id:scale``.
    @router.patch("/deployments/{deployment:path}:scale", response_model=Deployment, **_DUMP)
    def scale_deployment(
        request: Request,
        principal: CurrentPrincipal,
        account: str,
        deployment: str,
        body: ScaleRequest,
    ) -> Deployment:
        return _deployments(request).scale(principal, account, deployment, body.replica_count)

    @router.post("/deployments/{deployment:path}:undelete", response_model=Deployment, **_DUMP)
    def undelete_deployment(
        request: Request,
        principal: CurrentPrincipal,
        account: str,
        deployment: str,
        body: Annotated[UndeleteRequest | None, Body()] = None,
    ) -> Deployment:
        return _deployments(request).undelete(principal, account, deployment)

    @router.get("/deployments/{deployment:path}", response_model=Deployment, **_DUMP)
    def get_deployment(
        request: Request, principal: CurrentPrincipal, account: str, deployment: str, _: ReadMask
    ) -> Deployment:
        return _deployments(request).get(principal, account, deployment)

    @router.patch("/deployments/{deployment:path}", response_model=Deployment, **_DUMP)
    def update_deployment(
        request: Request,
        principal: CurrentPrincipal,
        account: str,
        deployment: str,
        body: DeploymentSpec,
        update_mask: Annotated[str | None, Query(alias="updateMask", max_length=1000)] = None,
    ) -> Deployment:
        return _deployments(request).update(principal, account, deployment, body, update_mask)

    @router.delete("/deployments/{deployment:path}")
    def delete_deployment(
        request: Request,
        principal: CurrentPrincipal,
        account: str,
        deployment: str,
        hard: bool = False,
        ignore_checks: Annotated[bool, Query(alias="ignoreChecks")] = False,
    ) -> dict[str, Any]:
        _deployments(request).delete(principal, account, deployment, hard=hard)
        return {}


def _shape_routes(router: APIRouter) -> None:
    @router.get("/deploymentShapes", response_model=DeploymentShapeList, **_DUMP)
    def list_shapes(
        request: Request,
        principal: CurrentPrincipal,
        account: str,
        _: ReadMask,
        page_size: PageSize = None,
        page_token: PageToken = None,
        target_model: Annotated[str | None, Query(alias="targetModel", max_length=255)] = None,
    ) -> DeploymentShapeList:
        return _shapes(request).list_shapes(principal, account, page_size, page_token, target_model)

    @router.post("/deploymentShapes", response_model=DeploymentShape, **_DUMP)
    def create_shape(
        request: Request,
        principal: CurrentPrincipal,
        account: str,
        body: ShapeSpec,
        shape_id: Annotated[str, Query(alias="deploymentShapeId", max_length=63)],
    ) -> DeploymentShape:
        """Operator only: a new shape."""
        return _shapes(request).create(principal, account, shape_id, body)

    @router.get("/deploymentShapes/{shape}", response_model=DeploymentShape, **_DUMP)
    def get_shape(
        request: Request, principal: CurrentPrincipal, account: str, shape: str, _: ReadMask
    ) -> DeploymentShape:
        return _shapes(request).get_shape(principal, account, shape)

    @router.patch("/deploymentShapes/{shape}", response_model=DeploymentShape, **_DUMP)
    def update_shape(
        request: Request, principal: CurrentPrincipal, account: str, shape: str, body: ShapeSpec
    ) -> DeploymentShape:
        """Operator only: a new version with the fields given over the latest."""
        return _shapes(request).update(principal, account, shape, body)

    @router.delete("/deploymentShapes/{shape}")
    def delete_shape(
        request: Request, principal: CurrentPrincipal, account: str, shape: str
    ) -> dict[str, Any]:
        _shapes(request).delete(principal, account, shape)
        return {}

    @router.get(
        "/deploymentShapes/{shape}/versions", response_model=DeploymentShapeVersionList, **_DUMP
    )
    def list_shape_versions(
        request: Request,
        principal: CurrentPrincipal,
        account: str,
        shape: str,
        _: ReadMask,
        page_size: PageSize = None,
        page_token: PageToken = None,
    ) -> DeploymentShapeVersionList:
        return _shapes(request).list_versions(principal, account, shape)

    @router.get(
        "/deploymentShapes/{shape}/versions/{version}",
        response_model=DeploymentShapeVersion,
        **_DUMP,
    )
    def get_shape_version(
        request: Request,
        principal: CurrentPrincipal,
        account: str,
        shape: str,
        version: str,
        _: ReadMask,
    ) -> DeploymentShapeVersion:
        return _shapes(request).get_version(principal, account, shape, version)

    @router.post(
        "/deploymentShapeVersions:match", response_model=DeploymentShapeVersionList, **_DUMP
    )
    def match_shape_versions(
        request: Request, principal: CurrentPrincipal, account: str, body: MatchRequest
    ) -> DeploymentShapeVersionList:
        return _shapes(request).match(principal, account, body)
