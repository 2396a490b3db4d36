"""Path clean-up before routing and the progress-line escaping."""

from __future__ import annotations

import html
import json

import pytest

from orchestrator.api.middleware import clean_path, is_cors_path
from orchestrator.api.models import progress_line


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("/models", "/models"),
        ("/exp/vDD4.40/models", "/models"),
        ("/exp/vDD4.40", "/"),
        ("/exp/vDD4.400/models", "/exp/vDD4.400/models"),
        ("//engines//v1//models", "/engines/v1/models"),
        ("/engines//v1/../ps", "/engines/ps"),
        ("/models/", "/models/"),
        ("/models//", "/models"),
        ("/exp/vDD4.40//models", "/models"),
    ],
)
def test_clean_path(raw: str, cleaned: str) -> None:
    assert clean_path(raw) == cleaned


def test_cors_paths() -> None:
    assert is_cors_path("/models/ai/x") and is_cors_path("/v1") and is_cors_path("/score")
    assert not is_cors_path("/") and not is_cors_path("/version") and not is_cors_path("/metrics")
    assert not is_cors_path("/modelsx")


def test_progress_line_is_go_html_escaped_unless_json() -> None:
    event = {"type": "error", "message": "Error: <b> & 'x' \"y\""}
    escaped = progress_line(event, escape=True)
    assert escaped.endswith(b"\n")
    assert b'"' not in escaped and b"'" not in escaped and b"<" not in escaped
    assert b"&#34;" in escaped and b"&#39;" in escaped
    assert json.loads(html.unescape(escaped.decode())) == event
    assert json.loads(progress_line(event, escape=False)) == event
