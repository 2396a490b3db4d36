"""Print ``docker model search`` answers as DMR does (pure functions, no I/O).

Table columns: NAME, DESCRIPTION, BACKEND, SIZE, DOWNLOADS, STARS, SOURCE; Hugging Face names
get their ``hf.co/`` prefix (what ``docker model pull`` takes), sizes are decimal with two
decimals or ``n/a``, counts are ``999``, ``45.6K``, ``1.2M``. ``--json`` prints the results with
DMR's field names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from orchestrator.modelcli.formatting import format_json, human_size, render_table
from orchestrator.modelcli.search_sources import HUGGING_FACE_SOURCE, SearchResult

HEADERS = ("NAME", "DESCRIPTION", "BACKEND", "SIZE", "DOWNLOADS", "STARS", "SOURCE")
HF_PREFIX = "hf.co/"


def format_count(count: int) -> str:
    """Return ``count`` as DMR shows popularity: ``999``, ``1.0K``, ``45.6K``, ``1.2M``."""
    if count >= 1_000_000:
        return f"{count / 1_000_000:.1f}M"
    if count >= 1_000:
        return f"{count / 1_000:.1f}K"
    return str(count)


def format_size(size: int) -> str:
    """Return a download size (``2.02GB``), or ``n/a`` when it is not known."""
    return human_size(size) if size > 0 else "n/a"


def pull_name(result: SearchResult) -> str:
    """Return the name ``docker model pull`` takes for this result."""
    return HF_PREFIX + result.name if result.source == HUGGING_FACE_SOURCE else result.name


def search_table(results: Sequence[SearchResult]) -> str:
    """Return the results as DMR's borderless table."""
    rows = [
        [
            pull_name(result),
            result.description,
            result.backend,
            format_size(result.size),
            format_count(result.downloads),
            format_count(result.stars),
            result.source,
        ]
        for result in results
    ]
    return render_table(HEADERS, rows)


def search_json(results: Sequence[SearchResult]) -> str:
    """Return the results as ``--json`` prints them."""
    return format_json([result.to_json() for result in results])


def no_results_text(query: str) -> str:
    """Return the line printed when nothing matched (Go's ``%q`` quoting of the query)."""
    if query:
        return f"No models found matching {json.dumps(query, ensure_ascii=False)}"
    return "No models found"
