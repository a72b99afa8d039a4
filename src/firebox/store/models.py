"""Imports every table module so that ``metadata`` knows the whole schema.

Alembic's autogenerate and the schema-drift test read ``metadata`` from here.
"""

from __future__ import annotations

import firebox.accounts.models  # registers its tables, as the next lines do
import firebox.billing.models
import firebox.catalog.deployed_models
import firebox.catalog.models
import firebox.deployments.models
import firebox.finetune.batch_models
import firebox.finetune.dataset_models
import firebox.finetune.sft_models
import firebox.limits.models  # noqa: F401
from firebox.store.base import Base

metadata = Base.metadata
