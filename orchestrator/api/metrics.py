"""``GET /metrics``: the daemon's own metrics plus every runner's, merged (spec 1.6).

``prometheus_client`` writes all of the text. The daemon's own metrics (request-side
:class:`~orchestrator.api.request_stats.RequestStats` and the scheduler's
:class:`~orchestrator.runners.stats.RunnerStats`) are collectors in a ``CollectorRegistry`` of
this app. Each active runner's llama-server ``/metrics`` is fetched over its socket, in parallel,
with a short timeout and a size cap, and read with the library's parser; every sample gets the
labels ``backend``, ``model`` and ``mode``, and same-named families from different runners
become one family (the exposition format allows each family once). A runner that does not
answer, or answers something that does not parse, is skipped and logged.
"""

from __future__ import annotations

import http.client
import logging
import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import falcon
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from orchestrator import unixhttp
from orchestrator.runners.info import BACKEND

if TYPE_CHECKING:
    from orchestrator.api.shared import ApiContext

log = logging.getLogger(__name__)

# NOTE(metrics): the text format we write is 0.0.4, as DMR says. prometheus_client's
# CONTENT_TYPE_LATEST is this string in 0.16 but names version 1.0.0 in newer releases.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NO_RUNNERS = b"# No active runners\n"
RUNNER_TIMEOUT_SECONDS = 5.0
MAX_PARALLEL_SCRAPES = 8
MAX_RUNNER_METRICS_BYTES = 4 * 1024 * 1024

RunnerScrape = tuple[dict[str, str], list[Metric]]
"""One runner's answer: the labels that say which runner, and its parsed families."""


def parse_runner_metrics(text: str) -> list[Metric]:
    """Return the metric families of one runner's ``/metrics`` text.

    Raises:
        ValueError: The text does not parse.
    """
    bare_counters = _bare_counter_names(text)
    try:
        families = list(text_string_to_metric_families(text))
    except IndexError as ex:
        # The parser indexes the fourth word of a "# TYPE" line without checking it is there.
        raise ValueError(f"malformed metrics text: {ex}") from ex
    _check_timestamps(families)
    return [_as_declared(family, bare_counters) for family in families]


def _check_timestamps(families: Iterable[Metric]) -> None:
    """Raise ``ValueError`` for a sample whose timestamp is not a finite number.

    The parser takes ``Inf`` as a timestamp, and ``generate_latest``, which writes whole
    milliseconds, would fail on it and lose every runner's metrics, not just this one's.
    """
    for family in families:
        for sample in family.samples:
            if sample.timestamp is not None and not math.isfinite(float(sample.timestamp)):
                raise ValueError(f"sample {sample.name} has timestamp {sample.timestamp}")


def _bare_counter_names(text: str) -> set[str]:
    """Return the names ``text`` declares as counters without the ``_total`` suffix."""
    lines = (line.split() for line in text.splitlines())
    return {
        words[2]
        for words in lines
        if words[:2] == ["#", "TYPE"]
        and words[3:] == ["counter"]
        and not words[2].endswith("_total")
    }


def _as_declared(family: Metric, bare_counters: set[str]) -> Metric:
    """Return ``family`` under the name its engine gave it.

    The parser renames the samples of a counter declared without ``_total`` to
    ``<name>_total``, and ``generate_latest`` would expose the family under that name too.
    Such a family (llama-server's ``llamacpp:n_tokens_max``) goes out untyped under its own
    name: the library only writes counters with the suffix, and dashboards query the name.
    """
    if family.type != "counter" or family.name not in bare_counters:
        return family
    untyped = Metric(family.name, family.documentation, "unknown")
    untyped.samples = [sample._replace(name=family.name) for sample in family.samples]
    return untyped


def merge_runner_metrics(scrapes: Iterable[RunnerScrape]) -> list[Metric]:
    """Return the runners' families, labelled, with same-named families merged.

    A family's help and type come from the first runner that has it; families keep the order
    in which they were first seen, samples the order of the runners.
    """
    merged: dict[str, Metric] = {}
    for labels, families in scrapes:
        for family in families:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            into.samples.extend(_labelled(sample, labels) for sample in family.samples)
    return list(merged.values())


def _labelled(sample: Sample, labels: dict[str, str]) -> Sample:
    """Return ``sample`` with the runner's ``labels`` added to its own."""
    # Ours win over an engine label of the same name: the series must say which runner it is.
    own = {name: value for name, value in sample.labels.items() if name not in labels}
    return sample._replace(labels={**labels, **own})


class _Families(Collector):
    """A collector of families read already (one scrape of the runners)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        """Return the families."""
        return self._families


def render_families(families: list[Metric]) -> bytes:
    """Return ``families`` in the text exposition format."""
    registry = CollectorRegistry()
    registry.register(_Families(families))
    return generate_latest(registry)


def fetch_runner_metrics(address: str) -> str:
    """Return the text of ``GET /metrics`` of one runner (at most 4 MiB of it).

    The connect and every read are bounded by :data:`RUNNER_TIMEOUT_SECONDS`.

    Raises:
        OSError, http.client.HTTPException: Unreachable, slow, or not a 200.
    """
    conn = unixhttp.open_connection(address, RUNNER_TIMEOUT_SECONDS)
    try:
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


def scrape_runner(runner: Any) -> RunnerScrape | None:
    """Fetch and parse one runner's metrics; ``None`` (logged) when it has none to give."""
    model, mode, address = _runner_fields(runner)
    try:
        families = parse_runner_metrics(fetch_runner_metrics(address))
    except (TimeoutError, OSError, http.client.HTTPException, ValueError) as ex:
        log.warning("runner metrics unavailable model=%s mode=%s error=%s", model, mode, ex)
        return None
    return {"backend": BACKEND, "model": model, "mode": mode}, families


def scrape_runners(runners: Sequence[Any]) -> list[RunnerScrape]:
    """Scrape every runner in parallel; return the answers of those that gave one."""
    if not runners:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_SCRAPES, len(runners))) as pool:
        results = list(pool.map(scrape_runner, runners))
    return [result for result in results if result is not None]


def daemon_registry(ctx: ApiContext) -> CollectorRegistry:
    """Return a new registry of the daemon's own metrics: requests, then runners."""
    registry = CollectorRegistry()
    registry.register(ctx.request_stats)
    registry.register(ctx.scheduler.stats)
    return registry


class MetricsResource:
    """``GET /metrics``; 404 when metrics are disabled (``DISABLE_METRICS``)."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        # NOTE(metrics): one registry per app, never the library's global REGISTRY: a test
        # process builds many apps, and each must show only its own numbers.
        self.registry = daemon_registry(ctx)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self.ctx.config.disable_metrics:
            raise falcon.HTTPRouteNotFound()
        body = generate_latest(self.registry)
        runners = list(self.ctx.scheduler.management.active_runners())
        if runners:
            body += render_families(merge_runner_metrics(scrape_runners(runners)))
        else:
            body += NO_RUNNERS
        resp.content_type = CONTENT_TYPE
        resp.data = body
