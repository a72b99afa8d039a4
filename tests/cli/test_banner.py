"""The ``firebox serve`` banner on first start, on restart, and with no saved keys."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from firebox.accounts.bootstrap import BootstrapResult
from firebox.cli.banner import base_url, print_banner
from firebox.settings import Settings


def render(settings: Settings, result: BootstrapResult) -> str:
    out = io.StringIO()
    print_banner(settings, result, console=Console(file=out, width=100, color_system=None))
    return out.getvalue()


def test_first_start_shows_new_keys_and_examples(tmp_path: Path) -> None:
    settings = Settings(host="127.0.0.1", port=9123, data_dir=tmp_path)
    text = render(settings, BootstrapResult(operator_key="fb_op_1", demo_key="fb_demo_1"))
    assert "Firebox is serving on http://127.0.0.1:9123" in text.splitlines()[0]
    assert "fb_op_1" in text and "fb_demo_1" in text
    assert (
        'curl -H "Authorization: Bearer fb_demo_1" http://127.0.0.1:9123/v1/accounts/demo' in text
    )
    assert 'OpenAI(base_url="http://127.0.0.1:9123/inference/v1", api_key="fb_demo_1")' in text
    assert "firebox list users --account demo" in text
    assert "firebox get billing --account demo" in text


def test_restart_reads_saved_keys(tmp_path: Path) -> None:
    (tmp_path / "credentials.json").write_text(
        json.dumps(
            {"operatorKey": "fb_op_saved", "demoKey": "fb_demo_saved", "demoAccount": "demo"}
        )
    )
    text = render(Settings(data_dir=tmp_path), BootstrapResult())
    assert "fb_op_saved" in text and "fb_demo_saved" in text


def test_no_keys_anywhere_says_where_they_were(tmp_path: Path) -> None:
    text = render(Settings(data_dir=tmp_path), BootstrapResult())
    assert "first start" in " ".join(text.split())
    assert "credentials.json" in text
    assert "$FIREBOX_API_KEY" in text


def test_wildcard_hosts_are_shown_as_loopback() -> None:
    assert base_url("0.0.0.0", 80) == "http://127.0.0.1:80"
    assert base_url("::1", 80) == "http://[::1]:80"
