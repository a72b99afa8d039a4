"""The table of deployed models: LoRA add-ons loaded for serving in an account."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from firebox.store.base import Base, UTCDateTime


class DeployedState(StrEnum):
    """A deployed model's state, with the SDK's ``DeployedModel.state`` values.

    Only ``DEPLOYED`` serves requests; the others last while the engine is told.
    """

    DEPLOYING = "DEPLOYING"
    DEPLOYED = "DEPLOYED"
    UNDEPLOYING = "UNDEPLOYING"


class DeployedModelRow(Base):
    """A LoRA add-on (of this account, or a public one of the platform) loaded in an account.

    An account loads an add-on at most once. Deleting the add-on is refused by
    the catalog while it is loaded; the cascade only serves deleting accounts.
    """

    __tablename__ = "deployed_models"
    __table_args__ = (
        UniqueConstraint("account_id", "deployed_model_id", name="uq_deployed_models_account_id"),
        UniqueConstraint("account_id", "model_pk", name="uq_deployed_models_account_model"),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE")
    )
    deployed_model_id: Mapped[str] = mapped_column(String(63))
    model_pk: Mapped[int] = mapped_column(
        Integer, ForeignKey("models.pk", ondelete="CASCADE"), index=True
    )
    display_name: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(String(1000), default="")
    state: Mapped[str] = mapped_column(String(16), default=DeployedState.DEPLOYING.value)
    # The on-demand deployment serving it (accounts/{a}/deployments/{d}); NULL: serverless.
    deployment: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())


def deployed_name(account_id: str, deployed_model_id: str) -> str:
    """The resource name ``accounts/{account}/deployedModels/{id}``."""
    return f"accounts/{account_id}/deployedModels/{deployed_model_id}"
