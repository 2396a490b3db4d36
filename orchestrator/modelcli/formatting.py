"""Render daemon answers the way the Docker CLI prints things (pure functions, no I/O).

Tables have no borders and no header rule; columns are left-aligned and separated by two spaces
(DMR spec section 6). Sizes use Docker's decimal units (``358.80MB``), ages use go-units'
``HumanDuration`` wording (``3 weeks ago``), JSON is indented by four spaces with non-ASCII kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from orchestrator.errors import InvalidReferenceError
from orchestrator.settings import parse_duration
from orchestrator.store.reference import familiar_name, parse_reference

COLUMN_GAP = "  "
NONE_TAG = "<none>"
DEFAULT_KEEP_ALIVE_SECONDS = 300.0

_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
_STATUS_ORDER = {"Running": 0, "Error": 1, "Not Installed": 2, "Installing": 3}


def render_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    right_aligned: Iterable[int] = (),
) -> str:
    """Return a Docker-style table: header line, one line per row, two-space gaps.

    Args:
        headers: Column titles (printed as given).
        rows: Cell texts; each row has ``len(headers)`` cells.
        right_aligned: Indexes of columns whose cells are right-aligned (numbers).

    Returns:
        The table, each line ending in a newline and without trailing spaces.
    """
    all_rows = [list(headers)] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[index]) for row in all_rows) for index in range(len(headers))]
    right = set(right_aligned)
    lines = []
    for row_number, row in enumerate(all_rows):
        cells = []
        for index, cell in enumerate(row):
            # NOTE: headers stay left-aligned, as tablewriter's header alignment does.
            if index in right and row_number > 0:
                cells.append(cell.rjust(widths[index]))
            else:
                cells.append(cell.ljust(widths[index]))
        lines.append(COLUMN_GAP.join(cells).rstrip() + "\n")
    return "".join(lines)


def human_size(size_bytes: float, *, precision: int = 2) -> str:
    """Return ``size_bytes`` in decimal units with fixed decimals, e.g. ``358.80MB``."""
    value = float(size_bytes)
    unit = 0
    while value >= 1000.0 and unit < len(_DECIMAL_UNITS) - 1:
        value /= 1000.0
        unit += 1
    return f"{value:.{precision}f}{_DECIMAL_UNITS[unit]}"


def human_duration(seconds: float) -> str:
    """Return go-units' ``HumanDuration`` text: ``Less than a second`` ... ``3 weeks``."""
    whole_seconds = int(seconds)
    if whole_seconds < 1:
        return "Less than a second"
    if whole_seconds == 1:
        return "1 second"
    if whole_seconds < 60:
        return f"{whole_seconds} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def relative_time(created_unix: int, now_unix: float) -> str:
    """Return ``"3 weeks ago"`` for a Unix timestamp; empty when the model has no date."""
    if created_unix <= 0:
        return ""
    return human_duration(max(0.0, now_unix - created_unix)) + " ago"


def format_json(value: Any) -> str:
    """Return ``value`` as the CLI prints JSON: four-space indent, UTF-8 kept, newline."""
    return json.dumps(value, indent=4, ensure_ascii=False) + "\n"


def display_name(tag: str) -> str:
    """Return a tag as users type it (no ``docker.io/``, ``ai/`` or ``:latest``)."""
    return familiar_name(tag)


def short_id(model_id: str) -> str:
    """Return the 12-hex short form of ``sha256:<hex>`` (or the text unchanged)."""
    if model_id.startswith("sha256:") and len(model_id) >= 19:
        return model_id[7:19]
    return model_id


def context_size_of(config: Mapping[str, Any]) -> str:
    """Return the model's context size: packaged ``context_size``, else the GGUF maximum."""
    value = config.get("context_size")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    gguf = config.get("gguf") or {}
    architecture = gguf.get("general.architecture") or config.get("architecture") or "llama"
    for key in (f"{architecture}.context_length", "llama.context_length"):
        text = str(gguf.get(key, "")).strip()
        if text.isdigit():
            return text
    return ""


def _split_display(name: str) -> tuple[str, str]:
    # The tag follows the last ':' after the last '/' (a registry port is not a tag).
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, ""


def model_rows(models: Sequence[Mapping[str, Any]], now_unix: float) -> list[list[str]]:
    """Return one ``list`` row per tag (``<none>`` for untagged models), sorted by name."""
    rows: list[tuple[tuple[int, str, str], list[str]]] = []
    for model in models:
        model_id = str(model.get("id", ""))
        config = model.get("config") or {}
        created = model.get("created") or 0
        tags = list(model.get("tags") or []) or [None]
        for tag in tags:
            name = display_name(tag) if tag else NONE_TAG
            base, tag_text = _split_display(name) if tag else (NONE_TAG, "")
            row = [
                name,
                str(config.get("parameters", "")),
                str(config.get("quantization", "")),
                str(config.get("architecture", "")),
                short_id(model_id),
                relative_time(int(created), now_unix),
                context_size_of(config),
                str(config.get("size", "")),
            ]
            rows.append(((0 if tag else 1, base.lower(), tag_text.lower()), row))
    rows.sort(key=lambda item: item[0])
    return [row for _, row in rows]


LIST_HEADERS = (
    "MODEL NAME",
    "PARAMETERS",
    "QUANTIZATION",
    "ARCHITECTURE",
    "MODEL ID",
    "CREATED",
    "CONTEXT",
    "SIZE",
)


def list_table(models: Sequence[Mapping[str, Any]], now_unix: float) -> str:
    """Return the ``docker model list`` table."""
    return render_table(LIST_HEADERS, model_rows(models, now_unix), right_aligned=(6,))


def _normalised(text: str) -> str | None:
    try:
        return parse_reference(text).tag_string
    except InvalidReferenceError:
        return None


def filter_models(
    models: Sequence[Mapping[str, Any]], model_filter: str
) -> list[Mapping[str, Any]]:
    """Keep the models ``list MODEL`` shows: exact tag with ``:``, else the whole repository.

    Raises:
        InvalidReferenceError: ``model_filter`` is not a valid reference.
    """
    wanted = parse_reference(model_filter)
    exact = ":" in model_filter.rsplit("/", 1)[-1]
    kept = []
    for model in models:
        for tag in model.get("tags") or []:
            tag_string = _normalised(str(tag))
            if tag_string is None:
                continue
            if tag_string == wanted.tag_string or (
                not exact and _split_display(tag_string)[0] == wanted.name
            ):
                kept.append(model)
                break
    return kept


def _parse_time(text: str) -> datetime | None:
    value = text.strip()
    if not value or value.startswith("0001-01-01"):
        return None
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    # Go prints up to nine fractional digits; Python's parser accepts at most six.
    if "." in value:
        head, _, tail = value.partition(".")
        digits = "".join(ch for ch in tail if ch.isdigit())
        zone = tail[len(digits) :]
        value = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def until_text(entry: Mapping[str, Any], now: datetime) -> str:
    """Return the ``ps`` UNTIL cell: ``Loading...``, ``Forever``, ``4 minutes from now``..."""
    if entry.get("loading"):
        return "Loading..."
    keep_alive = DEFAULT_KEEP_ALIVE_SECONDS
    raw = entry.get("keep_alive")
    if raw not in (None, ""):
        try:
            keep_alive = parse_duration(raw)
        except ValueError:
            keep_alive = DEFAULT_KEEP_ALIVE_SECONDS
    if keep_alive < 0:
        return "Forever"
    last_used = _parse_time(str(entry.get("last_used") or ""))
    if entry.get("in_use") or last_used is None:
        return human_duration(keep_alive) + " from now"
    remaining = keep_alive - (now - last_used).total_seconds()
    if remaining <= 0:
        return "Expiring"
    return human_duration(remaining) + " from now"


def ps_table(entries: Sequence[Mapping[str, Any]], now: datetime) -> str:
    """Return the ``docker model ps`` table."""
    rows = []
    for entry in entries:
        name = str(entry.get("model_name", ""))
        name = short_id(name) if name.startswith("sha256:") else display_name(name)
        rows.append(
            [
                name,
                str(entry.get("backend_name", "")),
                str(entry.get("mode", "")),
                until_text(entry, now),
            ]
        )
    return render_table(("MODEL NAME", "BACKEND", "MODE", "UNTIL"), rows)


def df_table(usage: Mapping[str, Any]) -> str:
    """Return the ``docker model df`` table (decimal units, two decimals)."""
    rows = [
        ["Models", human_size(int(usage.get("models_disk_usage") or 0))],
        ["Inference engine", human_size(int(usage.get("default_backend_disk_usage") or 0))],
    ]
    return render_table(("TYPE", "SIZE"), rows)


def split_status(text: str) -> tuple[str, str]:
    """Split ``"Running: llama.cpp b1234"`` into ``("Running", "llama.cpp b1234")``."""
    for state in _STATUS_ORDER:
        if text == state:
            return state, ""
        if text.startswith(state + ":"):
            return state, text[len(state) + 1 :].strip()
    return text, ""


def status_table(backends: Mapping[str, str]) -> str:
    """Return the ``status`` table, Running first, then Error, Not Installed, Installing."""
    rows = []
    for name, text in backends.items():
        state, details = split_status(str(text))
        rows.append(
            (_STATUS_ORDER.get(state, len(_STATUS_ORDER)), name.lower(), [name, state, details])
        )
    rows.sort(key=lambda item: (item[0], item[1]))
    return render_table(("BACKEND", "STATUS", "DETAILS"), [row for _, _, row in rows])


def show_text(model: Mapping[str, Any]) -> str:
    """Return the human-readable ``docker model show`` view of a Model JSON object."""
    lines = [f"Model:       {model.get('id', '')}"]
    tags = model.get("tags") or []
    if tags:
        lines.append(f"Tags:        {', '.join(str(tag) for tag in tags)}")
    created = int(model.get("created") or 0)
    if created > 0:
        stamp = datetime.fromtimestamp(created, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines.append(f"Created:     {stamp}")
    config = model.get("config") or {}
    if config:
        lines.append("")
        labels = (
            ("format", "Format:"),
            ("architecture", "Architecture:"),
            ("parameters", "Parameters:"),
            ("size", "Size:"),
            ("quantization", "Quantization:"),
        )
        for key, label in labels:
            if config.get(key):
                lines.append(f"{label:<14}{config[key]}")
        if config.get("context_size") is not None:
            lines.append(f"{'Context Size:':<14}{config['context_size']}")
        for key, title in (
            ("gguf", "GGUF Metadata"),
            ("safetensors", "Safetensors Metadata"),
            ("diffusers", "Diffusers Metadata"),
        ):
            metadata = config.get(key) or {}
            if metadata:
                lines.append("")
                lines.append(f"{title}:")
                lines.extend(f"  {name}: {metadata[name]}" for name in sorted(metadata))
    return "\n".join(lines) + "\n"
