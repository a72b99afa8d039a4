"""Deployment names in inference requests, resolved from the controller's snapshot.

Three forms address an on-demand deployment (SPEC; the Fireworks wire):

- ``accounts/{a}/deployments/{d}``: its base model;
- ``<model>#accounts/{a}/deployments/{d}`` (legacy; ``<model>#{d}`` for the
  caller's own): the base model, or an add-on placed on the deployment;
- ``accounts/{a}/deployedModels/{id}``: an add-on placed on a deployment.

Another account's deployment is the same 404 as a missing one. Lookups are
dict reads of the last reconcile pass: no query on the request path.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from firebox.accounts.bootstrap import PLATFORM_ACCOUNT
from firebox.catalog.index import ResolvedModel
from firebox.deployments.controller import Routes
from firebox.errors import InvalidArgument, NotFound

_DEPLOYMENT = re.compile(r"^accounts/([^/#]+)/deployments/([^/#]+)$")
_DEPLOYED = re.compile(r"^accounts/([^/#]+)/deployedModels/([^/#]+)$")


def is_deployment_name(name: str) -> bool:
    """Whether ``name`` addresses a deployment rather than a catalog model."""
    return "#" in name or "/deployments/" in name or "/deployedModels/" in name


def _not_found(name: str) -> NotFound:
    return NotFound(
        f"Deployment {name!r} was not found. List your deployments with "
        "GET /v1/accounts/<account>/deployments.",
        code="deployment_not_found",
        param="model",
    )


class DeploymentRouting:
    """Resolves deployment names for the inference gateway (``ModelResolver.deployments``)."""

    def __init__(self, routes: Callable[[], Routes]) -> None:
        self._routes = routes

    def resolve_deployment(
        self, account_id: str, name: str
    ) -> tuple[ResolvedModel, str, int | None]:
        """(the model to run, the deployment's name, its maxContextLength) or a 4xx."""
        routes = self._routes()
        model_part, _, deployment_part = name.rpartition("#")
        if not model_part:
            deployed = _DEPLOYED.match(name)
            if deployed is not None:
                if deployed.group(1) != account_id or name not in routes.deployed:
                    raise NotFound(
                        f"Deployed model {name!r} was not found on any running deployment. "
                        "Load the add-on onto a deployment with POST "
                        f"/v1/accounts/{account_id}/deployedModels "
                        '{"model": ..., "deployment": ...}.',
                        code="deployed_model_not_found",
                        param="model",
                    )
                deployment, addon = routes.deployed[name]
                return addon, deployment, routes.targets[deployment].max_context_length
        if model_part and "/" not in deployment_part:  # model#<id>: the caller's deployment
            deployment_part = f"accounts/{account_id}/deployments/{deployment_part}"
        match = _DEPLOYMENT.match(deployment_part)
        if match is None:
            raise InvalidArgument(
                f"Model {name!r} is not a deployment name: use accounts/<a>/deployments/<id>, "
                "<model>#accounts/<a>/deployments/<id> or accounts/<a>/deployedModels/<id>.",
                code="invalid_model_name",
                param="model",
            )
        if match.group(1) != account_id:
            raise _not_found(deployment_part)
        found = routes.targets.get(deployment_part)
        if found is None:
            raise _not_found(deployment_part)
        target = found
        if not model_part:
            return target.base_model, target.name, target.max_context_length
        wanted = (
            model_part if "/" in model_part else f"accounts/{PLATFORM_ACCOUNT}/models/{model_part}"
        )
        if wanted == target.base_model.name:
            return target.base_model, target.name, target.max_context_length
        for addon in target.addons:
            if addon.name == wanted:
                return addon, target.name, target.max_context_length
        raise InvalidArgument(
            f"Deployment {target.name} serves {target.base_model.name}"
            + (
                f" and the add-ons {', '.join(a.name for a in target.addons)}"
                if target.addons
                else ""
            )
            + f", not {model_part!r}. Load an add-on onto it with deployedModels.",
            code="model_not_on_deployment",
            param="model",
        )
