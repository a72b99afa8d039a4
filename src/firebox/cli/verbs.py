"""The shared verb groups (``create``, ``get``, ``list``, ``update``, ``delete``).

Commands are verb-first, as in firectl: ``firebox list users``. Each noun
module registers its commands onto these groups with a ``register(verbs)``
function, so a new noun (quotas, deployments, billing...) is one new module
and one line in ``main.NOUNS``; a new verb (``buy``) is one more field here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import typer


@dataclass(frozen=True)
class Verbs:
    """One Typer sub-app per verb; noun modules add commands to them."""

    create: typer.Typer
    get: typer.Typer
    update: typer.Typer
    delete: typer.Typer
    list: typer.Typer
    scale: typer.Typer

    @classmethod
    def build(cls) -> Verbs:
        def group(help_text: str) -> typer.Typer:
            return typer.Typer(help=help_text, no_args_is_help=True)

        return cls(
            create=group("Create a resource."),
            get=group("Show one resource."),
            update=group("Change fields of a resource."),
            delete=group("Delete a resource."),
            list=group("List resources (every page)."),
            scale=group("Set a resource's replica count."),
        )

    def attach(self, root: typer.Typer) -> None:
        """Add every verb group to ``root`` under its own name."""
        for verb in fields(self):
            root.add_typer(getattr(self, verb.name), name=verb.name)
