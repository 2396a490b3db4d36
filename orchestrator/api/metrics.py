"""``GET /metrics``: the daemon's own metrics plus every runner's, merged (spec 1.6).

Each active runner's llama-server ``/metrics`` is fetched over its socket, in parallel, with a
short timeout; every sample gets the labels ``backend``, ``model`` and ``mode``, and samples of
the same family from different runners are grouped under one ``# HELP``/``# TYPE`` header (the
exposition format allows each family once). A runner that does not answer is skipped and logged.
"""

from __future__ import annotations

import dataclasses
import http.client
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import falcon

from orchestrator.api.openai import BACKEND
from orchestrator.api.request_stats import escape_label_value
from orchestrator.proxy import UnixHTTPConnection, open_connection

if TYPE_CHECKING:
    from orchestrator.api import ApiContext

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RUNNER_TIMEOUT_SECONDS = 5.0
MAX_PARALLEL_SCRAPES = 8
MAX_RUNNER_METRICS_BYTES = 4 * 1024 * 1024


@dataclasses.dataclass
class Family:
    """One metric family gathered from several runners."""

    name: str
    help: str | None = None
    type: str | None = None
    samples: list[str] = dataclasses.field(default_factory=list)


def add_labels(sample: str, labels: str) -> str:
    """Return one sample line with ``labels`` (``a="b",c="d"``) put first in its label set."""
    brace = sample.find("{")
    space = sample.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        inner_start = brace + 1
        rest = sample[inner_start:]
        separator = "" if rest.startswith("}") else ","
        return f"{sample[:inner_start]}{labels}{separator}{rest}"
    if space == -1:
        return sample
    return f"{sample[:space]}{{{labels}}}{sample[space:]}"


def _family_name(sample_name: str, current: Family | None) -> str:
    if current is not None and sample_name.startswith(current.name):
        suffix = sample_name[len(current.name) :]
        if suffix in ("", "_bucket", "_sum", "_count", "_total", "_created"):
            return current.name
    return sample_name


def merge_runner_metrics(sources: Iterable[tuple[str, str]], families: dict[str, Family]) -> None:
    """Parse Prometheus text from runners into ``families``, labelling each sample.

    Args:
        sources: ``(labels, text)`` pairs; ``labels`` is ``backend="..",model="..",mode=".."``.
        families: Families by name, in first-seen order; updated in place.
    """
    for labels, text in sources:
        current: Family | None = None
        for raw in text.splitlines():
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    current = families.setdefault(parts[2], Family(parts[2]))
                    value = parts[3] if len(parts) > 3 else ""
                    if parts[1] == "HELP" and current.help is None:
                        current.help = value
                    elif parts[1] == "TYPE" and current.type is None:
                        current.type = value
                continue
            end = min((i for i in (line.find("{"), line.find(" ")) if i != -1), default=-1)
            if end <= 0:
                continue
            name = _family_name(line[:end], current)
            family = families.setdefault(name, Family(name))
            family.samples.append(add_labels(line, labels))


def render_families(families: Iterable[Family]) -> str:
    """Return families in text format (HELP and TYPE once each, then the samples)."""
    out: list[str] = []
    for family in families:
        if family.help is not None:
            out.append(f"# HELP {family.name} {family.help}")
        if family.type is not None:
            out.append(f"# TYPE {family.name} {family.type}")
        out.extend(family.samples)
    return "\n".join(out) + "\n" if out else ""


def fetch_runner_metrics(address: str) -> str:
    """Return the text of ``GET /metrics`` of one runner.

    Raises:
        OSError, http.client.HTTPException: Unreachable, slow, or not a 200.
    """
    conn = open_connection(address)
    if isinstance(conn, UnixHTTPConnection):
        conn.timeout = RUNNER_TIMEOUT_SECONDS
    try:
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(RUNNER_TIMEOUT_SECONDS)
        conn.request("GET", "/metrics", headers={"Host": "localhost"})
        response = conn.getresponse()
        data = response.read(MAX_RUNNER_METRICS_BYTES)
        if response.status != 200:
            raise http.client.HTTPException(f"status {response.status}")
        return data.decode("utf-8", "replace")
    finally:
        conn.close()


def _runner_fields(runner: Any) -> tuple[str, str, str]:
    return (str(runner.model_name), str(runner.mode), str(runner.socket_path))


def scrape_runners(runners: Sequence[Any]) -> list[tuple[str, str]]:
    """Fetch every runner's metrics in parallel; return ``(labels, text)`` of those that answer."""
    if not runners:
        return []

    def scrape(runner: Any) -> tuple[str, str] | None:
        model, mode, address = _runner_fields(runner)
        labels = (
            f'backend="{BACKEND}",model="{escape_label_value(model)}",'
            f'mode="{escape_label_value(mode)}"'
        )
        try:
            return labels, fetch_runner_metrics(address)
        except (TimeoutError, OSError, http.client.HTTPException) as ex:
            log.warning("runner metrics unavailable model=%s mode=%s error=%s", model, mode, ex)
            return None

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_SCRAPES, len(runners))) as pool:
        results = list(pool.map(scrape, runners))
    return [result for result in results if result is not None]


class MetricsResource:
    """``GET /metrics``; 404 when metrics are disabled (``DISABLE_METRICS``)."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self.ctx.config.disable_metrics:
            raise falcon.HTTPRouteNotFound()
        parts = [self.ctx.request_stats.render()]
        runner_stats = getattr(self.ctx.scheduler, "stats", None)
        if runner_stats is not None:
            parts.append(runner_stats.to_prometheus())
        runners = list(self.ctx.scheduler.active_runners())
        if runners:
            families: dict[str, Family] = {}
            merge_runner_metrics(scrape_runners(runners), families)
            parts.append(render_families(families.values()))
        else:
            parts.append("# No active runners\n")
        resp.content_type = CONTENT_TYPE
        resp.data = "".join(parts).encode()
