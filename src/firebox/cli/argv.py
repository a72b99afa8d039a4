"""Global options anywhere on the line: ``firebox list quotas --api-key K`` as with firectl.

Click reads an option only at the level that declares it, so the root's
``--base-url``, ``--api-key``, ``--account`` and ``-o/--output`` used to be
refused after the verb. Rather than copying them onto every group and
command, the arguments are normalized once before parsing: each global option
met after the first subcommand is moved to just before that subcommand, where
the root reads it. The walk follows the real command tree, so a value of a
command's own option (``--display-name -o``) is never mistaken for a flag,
and ``--`` ends the options as it does for Click. Moved options keep their
order after any given before the verb, so the last one given still wins.
Commands that declare their own ``--account`` / ``-o`` (an override of the
global value) get the same result through the root.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from firebox.cli.errors import UsageError

# Each takes exactly one value. Keep in step with main.root_options.
GLOBAL_OPTIONS = frozenset({"--base-url", "--api-key", "--account", "--output", "-o"})


def _split(token: str) -> tuple[str, bool]:
    """The option name in ``token`` and whether its value is attached to it.

    ``--name=value`` and ``-ovalue`` carry their value; ``--name`` and ``-o`` do not.
    """
    if token.startswith("--"):
        name, eq, _ = token.partition("=")
        return name, bool(eq)
    return token[:2], len(token) > 2


def _option(command: Any, name: str) -> Any | None:
    """The parameter of ``command`` spelled ``name``, if it has one."""
    for param in getattr(command, "params", ()):
        if name in getattr(param, "opts", ()) or name in getattr(param, "secondary_opts", ()):
            return param
    return None


def _takes_value(param: Any) -> bool:
    return not (getattr(param, "is_flag", False) or getattr(param, "count", False))


def hoist_global_options(root: Any, args: Sequence[str]) -> list[str]:
    """``args`` with the global options found after the first subcommand moved before it.

    ``root`` is the Click command built from the Typer app (anything with
    ``params`` and, for groups, a ``commands`` mapping).
    """
    before: list[str] = []  # the root's own options, up to the first subcommand
    hoisted: list[str] = []
    after: list[str] = []  # the first subcommand onwards
    command = root
    index = 0
    while index < len(args):
        token = args[index]
        out = after if command is not root else before
        if token == "--":
            out.extend(args[index:])
            break
        if token.startswith("-") and token != "-":
            name, attached = _split(token)
            moving = command is not root and name in GLOBAL_OPTIONS
            param = None if moving else _option(command, name)
            needs_next = (moving or (param is not None and _takes_value(param))) and not attached
            taken = [token]
            if needs_next:
                if index + 1 >= len(args):
                    if moving:
                        raise UsageError(f"Option '{name}' requires a value.")
                else:
                    taken.append(args[index + 1])
            (hoisted if moving else out).extend(taken)
            index += len(taken)
            continue
        sub = getattr(command, "commands", {}).get(token)
        if sub is not None:
            command = sub
        (after if command is not root else before).append(token)
        index += 1
    return before + hoisted + after
