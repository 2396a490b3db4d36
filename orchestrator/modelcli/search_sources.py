"""The two catalogues ``docker model search`` reads: Docker Hub's ``ai/`` namespace and the Hub.

Docker Hub: ``GET {DOCKER_MODEL_HUB_URL}/v2/repositories/ai/?page_size=N&ordering=pull_count``
(the repository list DMR reads; default ``https://hub.docker.com``). It has no text search, so,
as in DMR, pages are read until ``limit`` repositories whose name or description contains the
query (case-insensitive) are found or the list ends.

Hugging Face: ``GET {HF_ENDPOINT}/api/models?search=Q&filter=gguf&sort=downloads&direction=-1
&limit=N`` (default ``https://huggingface.co``): GGUF repositories only, because llama.cpp is the
one engine here (DMR asks for ``apps=vllm,llama.cpp``).

Every request has a connect/read timeout and a deadline for the whole answer; a source that
cannot be reached, answers an error status or answers something that is not its JSON raises
:class:`~orchestrator.errors.RegistryError` naming the source and the variable that moves it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import requests

from orchestrator.errors import RegistryError
from orchestrator.registry.manifest import read_limited
from orchestrator.registry.transport import describe_failure, new_session
from orchestrator.registry.watchdog import Watch

DOCKER_HUB_URL_VARIABLE = "DOCKER_MODEL_HUB_URL"
HF_ENDPOINT_VARIABLE = "HF_ENDPOINT"
DEFAULT_DOCKER_HUB_URL = "https://hub.docker.com"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DOCKER_HUB_NAMESPACE = "ai"
DOCKER_HUB_SOURCE = "Docker Hub"
HUGGING_FACE_SOURCE = "HuggingFace"
DEFAULT_LIMIT = 32
BACKEND_UNKNOWN = "unknown"
DESCRIPTION_WIDTH = 50
# Docker Hub serves at most 100 repositories a page; the Hub's model search at most 1000.
DOCKER_HUB_PAGE_SIZE = 100
HF_MAX_LIMIT = 1000
# The ai/ namespace holds a few hundred repositories: this bounds a query that matches few of
# them, and a server whose "next" links never end.
MAX_DOCKER_HUB_PAGES = 20
MAX_ANSWER_BYTES = 16 * 1024 * 1024
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 30.0
# DMR's http.Client has a 30 s timeout for the whole exchange; this is the same bound.
ANSWER_DEADLINE_SECONDS = 30.0

_LOOPBACK = ("localhost", "127.0.0.1", "::1")
# Hugging Face tags that say nothing about the model (DMR's list).
_DULL_TAGS = frozenset({"gguf", "transformers", "pytorch", "safetensors", "license:apache-2.0"})
_FAMILY_PREFIXES = ("llama", "mistral", "phi", "qwen")


@dataclass(frozen=True)
class SearchResult:
    """One model a catalogue offers.

    Attributes:
        name: ``ai/smollm2`` (Docker Hub) or ``org/repo`` (Hugging Face, without ``hf.co/``).
        description: At most 50 characters.
        downloads: Pull or download count.
        stars: Stars (Docker Hub) or likes (Hugging Face).
        source: :data:`DOCKER_HUB_SOURCE` or :data:`HUGGING_FACE_SOURCE`.
        official: Whether it is in Docker's ``ai/`` namespace.
        updated_at: Last update (Docker Hub) or creation (Hugging Face) time, as sent.
        backend: ``llama.cpp``, ``vllm``, ``diffusers`` (comma-joined) or ``unknown``.
        size: Bytes a pull downloads; 0 when unknown.
    """

    name: str
    description: str
    downloads: int
    stars: int
    source: str
    official: bool
    updated_at: str
    backend: str = BACKEND_UNKNOWN
    size: int = 0

    def to_json(self) -> dict[str, Any]:
        """Return the object ``--json`` prints (DMR's Go field names, which have no tags)."""
        return {
            "Name": self.name,
            "Description": self.description,
            "Downloads": self.downloads,
            "Stars": self.stars,
            "Source": self.source,
            "Official": self.official,
            "UpdatedAt": self.updated_at,
            "Backend": self.backend,
            "Size": self.size,
        }


class SearchSource(Protocol):
    """A catalogue that can be searched."""

    name: str

    def search(self, query: str, limit: int) -> list[SearchResult]:
        """Return at most ``limit`` results for ``query`` (empty: everything), best first."""
        ...  # pragma: no cover

    def close(self) -> None:
        """Release connections."""
        ...  # pragma: no cover


def truncate(text: str, width: int = DESCRIPTION_WIDTH) -> str:
    """Return ``text`` cut to ``width`` characters, ending in ``...`` when cut (DMR's rule)."""
    if len(text) <= width:
        return text
    if width <= 3:
        return text[:width]
    return text[: width - 3] + "..."


def describe_tags(tags: list[str], pipeline_tag: str) -> str:
    """Return DMR's description of a Hugging Face model: its task and up to two family tags."""
    parts = [pipeline_tag] if pipeline_tag else []
    for raw in tags:
        tag = raw.lower()
        if tag in _DULL_TAGS:
            continue
        if tag.startswith(_FAMILY_PREFIXES) or "instruct" in tag or "chat" in tag:
            parts.append(tag)
            if len(parts) >= 3:
                break
    return ", ".join(parts) if parts else "AI model"


def _as_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _as_str(value: object) -> str:
    return value if isinstance(value, str) else ""


class _JsonSource:
    """GET JSON documents from one base URL with timeouts, a deadline and a size cap."""

    name = ""
    variable = ""

    def __init__(self, base_url: str, *, deadline_seconds: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.deadline_seconds = deadline_seconds
        self.session = new_session(pool_size=2)
        # Like Go's net/http (and the daemon client), loopback never goes through a proxy.
        if (urlsplit(self.base_url).hostname or "") in _LOOPBACK:
            self.session.trust_env = False

    def close(self) -> None:
        """Close the connection pool."""
        self.session.close()

    def get_json(self, url: str, what: str) -> Any:
        """Return the decoded JSON answer to ``GET url``.

        Raises:
            RegistryError: Unreachable, slow, an error status, or not JSON.
        """
        watch = Watch(
            subject=f"{self.name} at '{self.base_url}'",
            what=what,
            retry="search again later",
            deadline_seconds=self.deadline_seconds,
        )
        with watch:
            try:
                response = self.session.get(
                    url,
                    headers={"Accept": "application/json"},
                    stream=True,
                    timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
                )
            except requests.RequestException as ex:
                raise RegistryError(
                    f"could not reach {self.name} at '{self.base_url}' "
                    f"({describe_failure(ex)}); check the network or {self.variable}",
                    details={"url": url, "error": str(ex)},
                ) from ex
            with response:
                self._check_status(response)
                body = read_limited(response, MAX_ANSWER_BYTES, f"{what} from {self.name}")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as ex:
            raise RegistryError(
                f"{self.name} at '{self.base_url}' answered with something that is not JSON "
                f"({body[:40]!r}); check {self.variable}",
                details={"url": url},
            ) from ex

    def _check_status(self, response: requests.Response) -> None:
        status = response.status_code
        if status == 429:
            raise RegistryError(
                f"{self.name} is rate limiting searches (HTTP 429); try again later",
                details={"status": status},
            )
        if status != 200:
            raise RegistryError(
                f"{self.name} at '{self.base_url}' answered HTTP {status} "
                f"{response.reason or ''}".rstrip()
                + f"; try again later or check {self.variable}",
                details={"status": status, "url": response.url},
            )

    def malformed(self, what: str) -> RegistryError:
        """Return the error for JSON of the wrong shape."""
        return RegistryError(
            f"{self.name} at '{self.base_url}' answered with {what} of an unexpected shape; "
            f"check {self.variable}"
        )


class DockerHubSource(_JsonSource):
    """Docker Hub's repository list of the ``ai/`` namespace.

    Args:
        base_url: Docker Hub's API origin (``DOCKER_MODEL_HUB_URL``).
        deadline_seconds: Each page must have arrived within this.
    """

    name = DOCKER_HUB_SOURCE
    variable = DOCKER_HUB_URL_VARIABLE

    def __init__(
        self,
        base_url: str = DEFAULT_DOCKER_HUB_URL,
        *,
        deadline_seconds: float = ANSWER_DEADLINE_SECONDS,
    ) -> None:
        super().__init__(base_url, deadline_seconds=deadline_seconds)

    def first_page_url(self, limit: int) -> str:
        """Return the URL of the first page, most pulled first."""
        query = urlencode(
            {"page_size": str(min(limit, DOCKER_HUB_PAGE_SIZE)), "ordering": "pull_count"}
        )
        return f"{self.base_url}/v2/repositories/{DOCKER_HUB_NAMESPACE}/?{query}"

    def next_page_url(self, following: str) -> str:
        """Return the ``next`` link moved onto our base URL.

        The link is absolute (``https://hub.docker.com/v2/...?page=2``); only its path and query
        are kept, so every page comes from the host the user configured and nowhere else.
        """
        parts = urlsplit(following)
        base_path = urlsplit(self.base_url).path.rstrip("/")
        path = parts.path
        if base_path and path.startswith(base_path + "/"):
            path = path[len(base_path) :]
        return self.base_url + path + (f"?{parts.query}" if parts.query else "")

    def search(self, query: str, limit: int) -> list[SearchResult]:
        """Return up to ``limit`` public ``ai/`` repositories whose name or text has ``query``.

        Raises:
            RegistryError: Docker Hub failed or answered something unexpected.
        """
        limit = limit if limit > 0 else DEFAULT_LIMIT
        needle = query.lower()
        results: list[SearchResult] = []
        url: str | None = self.first_page_url(limit)
        pages = 0
        while url is not None and len(results) < limit and pages < MAX_DOCKER_HUB_PAGES:
            pages += 1
            document = self.get_json(url, "the repository list")
            if not isinstance(document, dict) or not isinstance(document.get("results"), list):
                raise self.malformed("a repository list")
            for repo in document["results"]:
                result = self._result(repo, needle)
                if result is not None:
                    results.append(result)
                    if len(results) >= limit:
                        break
            following = document.get("next")
            url = (
                self.next_page_url(following) if isinstance(following, str) and following else None
            )
        return results

    @staticmethod
    def _result(repo: object, needle: str) -> SearchResult | None:
        if not isinstance(repo, dict) or repo.get("is_private") is True:
            return None
        name = _as_str(repo.get("name"))
        namespace = _as_str(repo.get("namespace")) or DOCKER_HUB_NAMESPACE
        description = _as_str(repo.get("description"))
        if not name:
            return None
        if needle and needle not in name.lower() and needle not in description.lower():
            return None
        return SearchResult(
            name=f"{namespace}/{name}",
            description=truncate(description),
            downloads=_as_int(repo.get("pull_count")),
            stars=_as_int(repo.get("star_count")),
            source=DOCKER_HUB_SOURCE,
            official=namespace == DOCKER_HUB_NAMESPACE,
            updated_at=_as_str(repo.get("last_updated")),
        )


class HuggingFaceSource(_JsonSource):
    """The Hugging Face Hub's model search, GGUF repositories only.

    Args:
        endpoint: The Hub's origin (``HF_ENDPOINT``).
        deadline_seconds: The answer must have arrived within this.
    """

    name = HUGGING_FACE_SOURCE
    variable = HF_ENDPOINT_VARIABLE

    def __init__(
        self,
        endpoint: str = DEFAULT_HF_ENDPOINT,
        *,
        deadline_seconds: float = ANSWER_DEADLINE_SECONDS,
    ) -> None:
        super().__init__(endpoint, deadline_seconds=deadline_seconds)

    def search_url(self, query: str, limit: int) -> str:
        """Return the search URL: GGUF repositories, most downloaded first."""
        params = {
            "filter": "gguf",
            "sort": "downloads",
            "direction": "-1",
            "limit": str(min(limit, HF_MAX_LIMIT)),
        }
        if query:
            params["search"] = query
        return f"{self.base_url}/api/models?{urlencode(params)}"

    def search(self, query: str, limit: int) -> list[SearchResult]:
        """Return up to ``limit`` public GGUF repositories matching ``query``.

        Raises:
            RegistryError: The Hub failed or answered something unexpected.
        """
        limit = limit if limit > 0 else DEFAULT_LIMIT
        document = self.get_json(self.search_url(query, limit), "the model search")
        if not isinstance(document, list):
            raise self.malformed("a model list")
        results = []
        for model in document:
            if not isinstance(model, dict) or model.get("private") is True:
                continue
            name = _as_str(model.get("modelId")) or _as_str(model.get("id"))
            if not name:
                continue
            tags = [tag for tag in model.get("tags") or [] if isinstance(tag, str)]
            description = describe_tags(tags, _as_str(model.get("pipeline_tag")))
            results.append(
                SearchResult(
                    name=name,
                    description=truncate(description),
                    downloads=_as_int(model.get("downloads")),
                    stars=_as_int(model.get("likes")),
                    source=HUGGING_FACE_SOURCE,
                    official=False,
                    updated_at=_as_str(model.get("createdAt")),
                )
            )
        return results[:limit]


def docker_hub_url(environ: Mapping[str, str]) -> str:
    """Return Docker Hub's API origin: ``DOCKER_MODEL_HUB_URL`` or the real one."""
    return environ.get(DOCKER_HUB_URL_VARIABLE, "").strip() or DEFAULT_DOCKER_HUB_URL


def hf_endpoint(environ: Mapping[str, str]) -> str:
    """Return the Hugging Face origin: ``HF_ENDPOINT`` (the Hub tools' variable) or the real one."""
    return environ.get(HF_ENDPOINT_VARIABLE, "").strip() or DEFAULT_HF_ENDPOINT
