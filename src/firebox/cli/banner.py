"""The banner ``firebox serve`` prints at start: where the server is and how to call it.

Keys come from this start's bootstrap (first start) or from
``credentials.json`` (later starts), so a restarted local server still tells
its operator how to get going. The URL is also on a plain first line, for
scripts and tests that wait for it, and the examples are printed outside the
panel so that they copy and paste without border characters.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console, Group
from rich.panel import Panel
from rich.text import Text

from firebox.accounts.bootstrap import BootstrapResult
from firebox.accounts.credentials import DEMO_ACCOUNT, load_credentials
from firebox.cli.context import DEFAULT_BASE_URL
from firebox.settings import Settings

_WILDCARD_HOSTS = ("0.0.0.0", "::")


def base_url(host: str, port: int) -> str:
    """A URL a local client can use: wildcard binds are reached through loopback."""
    shown = "127.0.0.1" if host in _WILDCARD_HOSTS else host
    if ":" in shown:  # an IPv6 literal
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def _saved_keys(data_dir: Path) -> dict[str, str]:
    try:
        return load_credentials(data_dir)
    except (OSError, ValueError):  # an unreadable file must not stop the server
        return {}


def key_lines(settings: Settings, result: BootstrapResult) -> tuple[list[Text], str | None]:
    """The panel's lines, and the key the examples should use (the demo key if known)."""
    saved = _saved_keys(settings.data_dir)
    operator_key = result.operator_key or saved.get("operatorKey")
    demo_key = result.demo_key or saved.get("demoKey")
    credentials = settings.data_dir / "credentials.json"

    lines = [Text.assemble(("URL           ", "bold"), base_url(settings.host, settings.port))]
    if operator_key:
        lines.append(Text.assemble(("Operator key  ", "bold"), (operator_key, "green")))
    elif settings.admin_key:
        lines.append(Text.assemble(("Operator key  ", "bold"), "the value of FIREBOX_ADMIN_KEY"))
    if demo_key:
        lines.append(Text.assemble(("Demo key      ", "bold"), (demo_key, "green")))
    if result.operator_key or result.demo_key:
        lines.append(Text(f"New keys are saved in {credentials} (mode 0600).", style="dim"))
    elif not operator_key and not demo_key:
        lines.append(
            Text(
                f"Keys were printed on the first start; generated ones are kept in "
                f"{credentials}, which has none now.",
                style="yellow",
            )
        )
    return lines, demo_key or operator_key


def examples(url: str, key: str | None) -> dict[str, list[str]]:
    """Ready-to-paste snippets against ``url`` with ``key``, under their headings."""
    shown_key = key or "$FIREBOX_API_KEY"
    env = "" if url == DEFAULT_BASE_URL else f"FIREBOX_BASE_URL={url} "
    if key:
        env += f"FIREBOX_API_KEY={key} "
    return {
        "Try it:": [
            f'curl -H "Authorization: Bearer {shown_key}" {url}/v1/accounts/{DEMO_ACCOUNT}',
            f'curl -H "Authorization: Bearer {shown_key}" {url}/inference/v1/chat/completions '
            """-H 'content-type: application/json' -d '{"model": "firebox-tiny", """
            """"messages": [{"role": "user", "content": "What color is the sky?"}]}'""",
            f"{env}firebox list users --account {DEMO_ACCOUNT}",
            f"{env}firebox get billing --account {DEMO_ACCOUNT}   # $1 of free credit",
        ],
        "Python (pip install openai):": [
            "from openai import OpenAI",
            f'client = OpenAI(base_url="{url}/inference/v1", api_key="{shown_key}")',
            'chat = client.chat.completions.create(model="firebox-tiny-lora", '
            'messages=[{"role": "user", "content": "Hi"}])',
            'vector = client.embeddings.create(model="all-minilm-l6-v2", input="hello")',
        ],
    }


def print_banner(
    settings: Settings, result: BootstrapResult, console: Console | None = None
) -> None:
    """Print the start banner on stdout (``console`` lets tests capture it)."""
    out = console or Console()
    url = base_url(settings.host, settings.port)
    lines, key = key_lines(settings, result)
    out.print(f"Firebox is serving on {url}", markup=False, highlight=False)
    out.print(Panel(Group(*lines), title="Firebox", expand=False))
    for heading, block in examples(url, key).items():
        out.print(Text(heading, style="bold"))
        for line in block:
            out.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    out.file.flush()
