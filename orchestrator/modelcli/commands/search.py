"""``search [OPTIONS] [TERM]``: models on Docker Hub (``ai/``) and Hugging Face (GGUF).

Flags as DMR's: ``-n/--limit`` (default 32), ``--source all|dockerhub|huggingface`` (also
``docker``, ``hub``, ``hf``; default ``all``), ``--json``. The sources are searched at the same
time; with several, one that fails is reported as a ``Warning:`` line on stderr and the others'
results are still printed; when no results remain and a source failed, the command fails.
Results are ordered Docker Hub first, then by downloads, and cut to ``--limit`` (so, as in DMR,
a query that fills the limit on Docker Hub shows no Hugging Face results). The search does not
need the daemon.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from orchestrator.errors import OrchestratorError, RegistryError
from orchestrator.modelcli import search_format
from orchestrator.modelcli.context import CliContext
from orchestrator.modelcli.search_backends import BackendResolver
from orchestrator.modelcli.search_sources import (
    DEFAULT_LIMIT,
    DOCKER_HUB_SOURCE,
    DockerHubSource,
    HuggingFaceSource,
    SearchResult,
    SearchSource,
    docker_hub_url,
    hf_endpoint,
)

SOURCE_ALL = "all"
SOURCE_DOCKER_HUB = "dockerhub"
SOURCE_HUGGING_FACE = "huggingface"
_SOURCE_ALIASES = {
    "": SOURCE_ALL,
    "all": SOURCE_ALL,
    "dockerhub": SOURCE_DOCKER_HUB,
    "docker": SOURCE_DOCKER_HUB,
    "hub": SOURCE_DOCKER_HUB,
    "huggingface": SOURCE_HUGGING_FACE,
    "hf": SOURCE_HUGGING_FACE,
}

_EPILOG = """Examples:
  docker model search                       # List available models
  docker model search llama                 # Search for models containing "llama"
  docker model search --source=huggingface  # Only search HuggingFace
  docker model search --limit=50 phi        # Search with custom limit
  docker model search --json llama          # Output as JSON

Environment: DOCKER_MODEL_HUB_URL (Docker Hub API, default https://hub.docker.com),
HF_ENDPOINT (default https://huggingface.co), DOCKER_MODEL_HUB_REGISTRY (registry the
BACKEND/SIZE columns of Docker Hub results are read from, default docker.io)."""


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``search`` to the ``docker model`` parser."""
    cmd = commands.add_parser(
        "search",
        help="Search for models on Docker Hub and HuggingFace",
        description=(
            "Search for models from Docker Hub (ai/ namespace) and HuggingFace (GGUF "
            "repositories). Without a term, list the most popular models; with one, keep "
            "models whose name or description contains it."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument("term", nargs="?", default="", metavar="TERM", help="search term")
    cmd.add_argument(
        "-n", "--limit", type=int, default=DEFAULT_LIMIT, help="Maximum number of results to show"
    )
    cmd.add_argument(
        "--source",
        default=SOURCE_ALL,
        help="Source to search: all, dockerhub, huggingface (default all)",
    )
    cmd.add_argument("--json", action="store_true", help="Output results as JSON")
    cmd.set_defaults(func=cmd_search, parser=cmd)


def parse_source(text: str) -> str:
    """Return the canonical source name for ``--source``.

    Raises:
        ValueError: Not a source DMR knows.
    """
    source = _SOURCE_ALIASES.get(text.strip().lower())
    if source is None:
        raise ValueError(
            f"unknown source {text!r}: valid options are 'all', 'dockerhub', 'docker', 'hub', "
            f"'huggingface', 'hf'"
        )
    return source


def build_sources(source: str, environ: Mapping[str, str]) -> list[SearchSource]:
    """Return the catalogues ``--source`` names, their URLs taken from the environment."""
    sources: list[SearchSource] = []
    if source in (SOURCE_ALL, SOURCE_DOCKER_HUB):
        sources.append(DockerHubSource(docker_hub_url(environ)))
    if source in (SOURCE_ALL, SOURCE_HUGGING_FACE):
        sources.append(HuggingFaceSource(hf_endpoint(environ)))
    return sources


def gather(
    sources: Sequence[SearchSource],
    query: str,
    limit: int,
    warn: Callable[[str], None],
) -> list[SearchResult]:
    """Search every source at once; merge, order and cut the results.

    A failed source is reported through ``warn`` when others answered.

    Raises:
        RegistryError: No results, and at least one source failed (each failure named).
    """
    with ThreadPoolExecutor(max_workers=max(1, len(sources))) as executor:
        futures = [(source, executor.submit(source.search, query, limit)) for source in sources]
        results: list[SearchResult] = []
        failures: list[tuple[str, OrchestratorError]] = []
        for source, future in futures:
            try:
                results.extend(future.result())
            except OrchestratorError as ex:
                failures.append((source.name, ex))
    if failures and not results:
        if len(failures) == 1:
            raise failures[0][1]
        raise RegistryError(
            "search failed: " + "; ".join(f"{name}: {error.message}" for name, error in failures),
            details={"failures": [name for name, _ in failures]},
        )
    for name, error in failures:
        warn(f"Warning: failed to search {name}: {error.message}")
    # Docker Hub first, then the most downloaded (DMR's order); sorted() is stable.
    results = sorted(results, key=lambda r: (r.source != DOCKER_HUB_SOURCE, -r.downloads))
    return results[:limit] if limit > 0 else results


def cmd_search(args: argparse.Namespace, ctx: CliContext) -> int:
    """``search [TERM]``: print the table (or JSON) of matching models."""
    try:
        source = parse_source(args.source)
    except ValueError as ex:
        args.parser.error(str(ex))  # exits 2
    sources = build_sources(source, ctx.environ)
    try:
        results = gather(sources, args.term, args.limit, ctx.err)
    finally:
        for each in sources:
            each.close()
    if not results:
        ctx.out(search_format.no_results_text(args.term))
        return 0
    resolver = BackendResolver(ctx.environ)
    try:
        results = resolver.resolve(results)
    finally:
        resolver.close()
    if args.json:
        ctx.stdout.write(search_format.search_json(results))
    else:
        ctx.stdout.write(search_format.search_table(results))
    return 0
