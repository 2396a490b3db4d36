"""A hostile registry, token server or hub on 127.0.0.1 (hardening issue 12).

Credentials stay with their origin (upload ``Location``, ``Link``, token realm, redirects);
every body is read through a cap (a 200 MiB error body costs almost no memory); a broken
chunked body is a clean 502; trickling or silent servers are cut by the overall deadline or the
stall rule. Two origins on loopback are two ports, or ``127.0.0.1`` and ``localhost``.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from orchestrator.errors import (
    DigestMismatchError,
    RegistryDeniedError,
    RegistryError,
)
from orchestrator.registry.client import RegistryClient
from orchestrator.registry.huggingface import HuggingFaceClient
from orchestrator.store.builder import Artifact
from orchestrator.store.reference import parse_reference
from orchestrator.store.store import Store
from tests.support.api_app import assert_error_shape, build_harness
from tests.support.gguf_files import write_llama_model
from tests.support.hostile_registry import (
    Exchange,
    HostileServer,
    Respond,
    serve_model,
    synthetic_artifact,
)
from tests.support.registry_fixtures import write_docker_config

USER, PASSWORD = "hostile-user", "hostile-pass"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
MiB = 1024 * 1024
HUGE = 200 * MiB
RSS_BUDGET = 20 * MiB


@pytest.fixture
def start() -> Iterator[Callable[[Respond], HostileServer]]:
    """Start hostile servers on demand; every one is stopped (with a deadline) afterwards."""
    started: list[HostileServer] = []

    def start_server(respond: Respond) -> HostileServer:
        server = HostileServer(respond).start()
        started.append(server)
        return server

    yield start_server
    for server in started:
        server.stop()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def model(tmp_path: Path) -> Artifact:
    return synthetic_artifact(tmp_path / "model", bytes(range(256)) * 400)


def client(config_dir: Path, **kwargs: Any) -> RegistryClient:
    kwargs.setdefault("timeout_seconds", 10)
    return RegistryClient(docker_config_dir=config_dir, **kwargs)


def logged_in(tmp_path: Path, server: HostileServer, **extra: object) -> Path:
    """Return a docker config folder with credentials stored for ``server``."""
    return write_docker_config(tmp_path / "docker", server.host, USER, PASSWORD, **extra)


class PeakRss:
    """Sample this process's RSS every 2 ms; ``growth`` is the peak above the starting value."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.start = 0
        self.peak = 0

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        gc.collect()
        self.start = self.peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def growth(self) -> int:
        return self.peak - self.start


# -- 1a. push: the upload Location on another origin gets no Authorization ---------------------


def push_registry(
    model: Artifact, location: Callable[[Exchange], str], *, auth: str
) -> Callable[[Exchange], None]:
    """A registry that wants ``auth`` on /v2/ and sends uploads to ``location(exchange)``.

    Uploads (``/upload/`` anywhere, or a same-origin ``/v2/.../uploads/<id>``) answer 201 with
    the digest of the query, without checking any credentials.
    """

    def respond(exchange: Exchange) -> None:
        route = exchange.route
        if exchange.method == "PUT" and "/upload" in route and "/v2/" not in route:
            exchange.read_body()
            digest = exchange.path.split("digest=", 1)[1].replace("%3A", ":")
            exchange.send(201, headers={"Docker-Content-Digest": digest})
            return
        if exchange.headers.get("authorization") != auth:
            challenge = 'Basic realm="hostile"' if auth.startswith("Basic") else "Bearer x"
            exchange.send(401, b"{}", {"WWW-Authenticate": challenge})
            return
        if exchange.method == "HEAD":
            exchange.send(404)
        elif exchange.method == "POST" and route.endswith("/blobs/uploads/"):
            exchange.send(202, headers={"Location": location(exchange)})
        elif exchange.method == "PUT" and "/blobs/uploads/" in route:
            exchange.read_body()
            digest = exchange.path.split("digest=", 1)[1].replace("%3A", ":")
            exchange.send(201, headers={"Docker-Content-Digest": digest})
        elif exchange.method == "PUT" and "/manifests/" in route:
            exchange.read_body()
            exchange.send(201, headers={"Docker-Content-Digest": model.model_id})
        else:
            exchange.send(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')

    return respond


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
@pytest.mark.parametrize("elsewhere", ["other-port", "localhost-same-port"])
def test_push_to_a_cross_origin_upload_location_sends_no_authorization(
    start: Callable[[Respond], HostileServer],
    model: Artifact,
    tmp_path: Path,
    scheme: str,
    elsewhere: str,
) -> None:
    """The POST's Location on another origin gets the blob bytes but not our credentials."""
    uploads = start(push_registry(model, lambda ex: "unused", auth="unused"))
    holder: dict[str, HostileServer] = {}

    def location(exchange: Exchange) -> str:
        if elsewhere == "other-port":
            return uploads.url("/upload/abc?state=1")
        return holder["registry"].localhost_url("/upload/abc?state=1")

    auth = BASIC if scheme == "basic" else "Bearer static-token"
    registry = holder["registry"] = start(push_registry(model, location, auth=auth))
    config_dir = logged_in(tmp_path, registry)
    token = "static-token" if scheme == "bearer" else None
    with client(config_dir, bearer_token=token) as registry_client:
        digest = registry_client.push_artifact(model, parse_reference(f"{registry.host}/team/m:v1"))
    assert digest == model.model_id
    receiver = uploads if elsewhere == "other-port" else registry
    puts = [s for s in receiver.requests_to("/upload/") if s.method == "PUT"]
    assert len(puts) == 2  # the layer and the config
    assert all(s.authorization is None for s in puts), puts
    own = [s for s in registry.requests_to("/v2/") if s.authorization is not None]
    assert own and all(s.authorization == auth for s in own)


def test_push_to_a_relative_same_origin_location_keeps_authorization(
    start: Callable[[Respond], HostileServer], model: Artifact, tmp_path: Path
) -> None:
    """A relative Location resolves against the request URL and keeps the credentials."""

    def location(exchange: Exchange) -> str:
        return exchange.route + "upload-1?_state=abc"

    registry = start(push_registry(model, location, auth=BASIC))
    with client(logged_in(tmp_path, registry)) as registry_client:
        registry_client.push_artifact(model, parse_reference(f"{registry.host}/team/m:v1"))
    puts = [s for s in registry.requests_to("/blobs/uploads/upload-1") if s.method == "PUT"]
    assert len(puts) == 2
    assert all(s.authorization == BASIC for s in puts)
    # Small answers are read to their end, so the connection is reused (not one per request).
    assert len({s.peer_port for s in registry.seen}) <= 2 < len(registry.seen)


# -- 1b. Hugging Face: HF_TOKEN stays on the endpoint's origin ---------------------------------

HF_TOKEN = "hf_secret"


def hub_listing(next_link: Callable[[Exchange], str | None]) -> Respond:
    """A hub whose first listing page links to ``next_link(exchange)``; later pages are empty."""

    def respond(exchange: Exchange) -> None:
        if "cursor=2" in exchange.path:
            exchange.send(200, b'[{"type":"file","path":"b.txt","size":2}]')
            return
        link = next_link(exchange)
        headers = {"Link": f'<{link}>; rel="next"'} if link else {}
        exchange.send(200, b'[{"type":"file","path":"a.txt","size":1}]', headers)

    return respond


@pytest.mark.parametrize("elsewhere", ["other-port", "localhost-same-port", "same-origin"])
def test_hf_token_is_not_sent_to_a_cross_origin_next_link(
    start: Callable[[Respond], HostileServer], elsewhere: str
) -> None:
    """Pagination to another origin goes without HF_TOKEN; on the endpoint's origin with it."""
    other = start(hub_listing(lambda ex: None))
    holder: dict[str, HostileServer] = {}
    page2 = "/api/models/org/repo/tree/main?recursive=true&cursor=2"

    def link(exchange: Exchange) -> str:
        if elsewhere == "other-port":
            return other.url(page2)
        if elsewhere == "localhost-same-port":
            return holder["hub"].localhost_url(page2)
        return page2

    hub = holder["hub"] = start(hub_listing(link))
    with HuggingFaceClient(endpoint=hub.url(), token=HF_TOKEN, timeout_seconds=5) as hf:
        files = hf.list_files("org/repo")
    assert [f.path for f in files] == ["a.txt", "b.txt"]
    receiver = other if elsewhere == "other-port" else hub
    (second,) = receiver.requests_to("cursor=2")
    expected = f"Bearer {HF_TOKEN}" if elsewhere == "same-origin" else None
    assert second.authorization == expected
    assert hub.seen[0].authorization == f"Bearer {HF_TOKEN}"


def test_hf_download_redirect_to_another_origin_drops_the_token(
    start: Callable[[Respond], HostileServer], store: Store, tmp_path: Path
) -> None:
    """A resolve redirect to another origin (a CDN, or anywhere) is followed without HF_TOKEN."""
    data = write_llama_model(tmp_path / "m-Q4_K_M.gguf").read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    cdn = start(lambda ex: ex.send(200, data))

    def respond(exchange: Exchange) -> None:
        if "/tree/" in exchange.route:
            listing = [
                {
                    "type": "file",
                    "path": "m-Q4_K_M.gguf",
                    "size": len(data),
                    "lfs": {"oid": sha256, "size": len(data)},
                }
            ]
            exchange.send(200, json.dumps(listing).encode())
        else:
            exchange.send(302, headers={"Location": cdn.url("/cdn/m.gguf")})

    hub = start(respond)
    with HuggingFaceClient(endpoint=hub.url(), token=HF_TOKEN, timeout_seconds=5) as hf:
        hf.pull(parse_reference("hf.co/org/repo:Q4_K_M"), store)
    assert cdn.seen and all(s.authorization is None for s in cdn.seen)
    assert all(s.authorization == f"Bearer {HF_TOKEN}" for s in hub.seen)


# -- 1c. token realm on an unrelated host gets no Basic credentials -----------------------------


def token_registry(model: Artifact, realm: Callable[[], str]) -> Respond:
    """A registry that serves ``model`` to ``Bearer good`` and challenges everything else."""

    def respond(exchange: Exchange) -> None:
        if exchange.headers.get("authorization") != "Bearer good":
            challenge = f'Bearer realm="{realm()}",service="hostile",scope="repository:team/m:pull"'
            exchange.send(
                401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge}
            )
        elif not serve_model(exchange, model):
            exchange.send(404)

    return respond


def token_server(exchange: Exchange) -> None:
    """Grant ``good`` to our stored Basic credentials, ``anonymous`` to anyone else."""
    token = "good" if exchange.headers.get("authorization") == BASIC else "anonymous"
    exchange.send(200, json.dumps({"token": token, "expires_in": 300}).encode())


def test_a_realm_on_an_unrelated_host_gets_an_anonymous_token_request(
    start: Callable[[Respond], HostileServer], model: Artifact, store: Store, tmp_path: Path
) -> None:
    """Registry 127.0.0.1:A naming realm localhost:B: no Basic, no account; a clear denial."""
    tokens = start(token_server)
    registry = start(token_registry(model, lambda: tokens.localhost_url("/token")))
    ref = parse_reference(f"{registry.host}/team/m:v1")
    with (
        client(logged_in(tmp_path, registry)) as registry_client,
        pytest.raises(RegistryDeniedError) as caught,
    ):
        registry_client.pull(ref, store)
    assert tokens.seen, "the token server was asked (anonymously)"
    assert all(s.authorization is None for s in tokens.seen)
    assert all("account" not in s.query and s.method == "GET" for s in tokens.seen)
    assert "were not sent to the token server 'localhost'" in caught.value.message


def test_a_realm_on_the_registry_host_gets_the_credentials(
    start: Callable[[Respond], HostileServer], model: Artifact, store: Store, tmp_path: Path
) -> None:
    """Same host, another port (registry-1/auth pairs aside, the usual layout): Basic is sent."""
    tokens = start(token_server)
    registry = start(token_registry(model, lambda: tokens.url("/token")))
    with client(logged_in(tmp_path, registry)) as registry_client:
        record = registry_client.pull(parse_reference(f"{registry.host}/team/m:v1"), store)
    assert record.id == model.model_id
    assert tokens.seen[0].authorization == BASIC
    assert tokens.seen[0].query["account"] == [USER]


def test_a_foreign_realm_gets_no_identity_token(
    start: Callable[[Respond], HostileServer], model: Artifact, store: Store, tmp_path: Path
) -> None:
    """An identity (refresh) token is not POSTed to a realm on an unrelated host either."""
    tokens = start(token_server)
    registry = start(token_registry(model, lambda: tokens.localhost_url("/token")))
    config_dir = tmp_path / "docker"
    config_dir.mkdir()
    entry = {"auths": {registry.host: {"identitytoken": "refresh-secret"}}}
    (config_dir / "config.json").write_text(json.dumps(entry))
    with client(config_dir) as registry_client, pytest.raises(RegistryDeniedError):
        registry_client.pull(parse_reference(f"{registry.host}/team/m:v1"), store)
    assert tokens.seen and all(s.method == "GET" for s in tokens.seen)
    assert all(s.authorization is None for s in tokens.seen)


def test_a_token_redirect_to_another_host_drops_the_credentials(
    start: Callable[[Respond], HostileServer], model: Artifact, store: Store, tmp_path: Path
) -> None:
    """The trusted realm redirects the token request to localhost: that hop gets no Basic."""
    holder: dict[str, HostileServer] = {}

    def tokens_respond(exchange: Exchange) -> None:
        if exchange.route == "/token":
            exchange.send(307, headers={"Location": holder["tokens"].localhost_url("/moved")})
        else:
            token_server(exchange)

    tokens = holder["tokens"] = start(tokens_respond)
    registry = start(token_registry(model, lambda: tokens.url("/token")))
    with (
        client(logged_in(tmp_path, registry)) as registry_client,
        pytest.raises(RegistryDeniedError),
    ):
        registry_client.pull(parse_reference(f"{registry.host}/team/m:v1"), store)
    first = tokens.requests_to("/token")
    moved = tokens.requests_to("/moved")
    assert first and all(s.authorization == BASIC for s in first)
    assert moved and all(s.authorization is None for s in moved)


# -- 1d. redirects of manifest and blob GETs drop Authorization off-origin ----------------------


def test_manifest_and_blob_redirects_to_another_origin_drop_authorization(
    start: Callable[[Respond], HostileServer], model: Artifact, store: Store, tmp_path: Path
) -> None:
    """Every GET redirected to another origin arrives there without our bearer token."""
    mirror = start(lambda ex: serve_model(ex, model) or ex.send(404))

    def respond(exchange: Exchange) -> None:
        exchange.send(307, headers={"Location": mirror.url(exchange.path)})

    registry = start(respond)
    ref = parse_reference(f"{registry.host}/team/m:v1")
    with client(tmp_path, bearer_token="static-token") as registry_client:
        assert registry_client.pull(ref, store).id == model.model_id
    assert {s.route.split("/")[-2] for s in mirror.seen} == {"manifests", "blobs"}
    assert all(s.authorization is None for s in mirror.seen)
    assert all(s.authorization == "Bearer static-token" for s in registry.seen)
    # The Accept header of the manifest GET survives the hop.
    assert "application/vnd.oci.image.manifest.v1+json" in mirror.seen[0].headers["accept"]


# -- 2. every body is read through a cap ---------------------------------------------------------


def huge_error(exchange: Exchange) -> None:
    # JSON-looking, 200 MiB, made on the fly; the client must stop after a small prefix.
    exchange.stream(500, HUGE, {"Content-Type": "application/json"}, prefix=b'{"errors":[')


def registry_with(model: Artifact, route_part: str, answer: Respond) -> Respond:
    """An open registry that answers requests whose path contains ``route_part`` with ``answer``."""

    def respond(exchange: Exchange) -> None:
        if route_part in exchange.path:
            answer(exchange)
        elif not serve_model(exchange, model):
            exchange.send(404)

    return respond


def run_pull(registry: HostileServer, store: Store, tmp_path: Path, **kwargs: Any) -> None:
    with client(tmp_path, **kwargs) as registry_client:
        registry_client.pull(parse_reference(f"{registry.host}/team/m:v1"), store)


@pytest.mark.parametrize("where", ["manifest", "config", "layer"])
def test_a_200_mib_error_body_costs_no_memory(
    start: Callable[[Respond], HostileServer],
    model: Artifact,
    store: Store,
    tmp_path: Path,
    where: str,
) -> None:
    """A 500 with a 200 MiB body: a clean RegistryError, RSS grows by less than 20 MiB."""
    digest = {
        "manifest": "/manifests/",
        "config": model.config_digest,
        "layer": model.layers[0].digest,
    }
    registry = start(registry_with(model, digest[where], huge_error))
    with PeakRss() as rss, pytest.raises(RegistryError) as caught:
        run_pull(registry, store, tmp_path)
    assert "HTTP 500" in caught.value.message
    assert rss.growth < RSS_BUDGET, f"RSS grew by {rss.growth / MiB:.0f} MiB"


def test_a_200_mib_error_answer_to_an_upload_costs_no_memory(
    start: Callable[[Respond], HostileServer], model: Artifact, tmp_path: Path
) -> None:
    """The POST that opens an upload answered by 200 MiB of error: capped, clean error."""

    def respond(exchange: Exchange) -> None:
        if exchange.method == "HEAD":
            exchange.send(404)
        else:
            exchange.read_body()
            huge_error(exchange)

    registry = start(respond)
    with PeakRss() as rss, client(tmp_path) as registry_client, pytest.raises(RegistryError):
        registry_client.push_artifact(model, parse_reference(f"{registry.host}/team/m:v1"))
    assert rss.growth < RSS_BUDGET, f"RSS grew by {rss.growth / MiB:.0f} MiB"


@pytest.mark.parametrize("status", [200, 500])
def test_a_200_mib_token_answer_costs_no_memory(
    start: Callable[[Respond], HostileServer],
    model: Artifact,
    store: Store,
    tmp_path: Path,
    status: int,
) -> None:
    """A token server answering 200 MiB (a 'token' or an error): capped at 1 MiB, clean error."""
    tokens = start(
        lambda ex: ex.stream(status, HUGE, prefix=b'{"token":"', filler=b"a", declare_length=False)
    )
    registry = start(token_registry(model, lambda: tokens.url("/token")))
    with PeakRss() as rss, pytest.raises(RegistryError) as caught:
        run_pull(registry, store, tmp_path)
    assert "token server" in caught.value.message
    assert rss.growth < RSS_BUDGET, f"RSS grew by {rss.growth / MiB:.0f} MiB"


@pytest.mark.parametrize(
    ("where", "status"),
    [("manifest", 500), ("manifest", 200), ("layer", 500), ("layer", 200), ("token", 200)],
)
def test_a_broken_chunked_body_is_a_clean_registry_error(
    start: Callable[[Respond], HostileServer],
    model: Artifact,
    store: Store,
    tmp_path: Path,
    where: str,
    status: int,
) -> None:
    """A chunk cut mid-way (connection closed) is a RegistryError (502), never a raw exception."""

    def broken(exchange: Exchange) -> None:
        exchange.broken_chunked(status, b'{"errors":[{"code":"UNKNOWN"')

    if where == "token":
        tokens = start(broken)
        registry = start(token_registry(model, lambda: tokens.url("/token")))
    else:
        part = "/manifests/" if where == "manifest" else model.layers[0].digest
        registry = start(registry_with(model, part, broken))
    with pytest.raises(RegistryError) as caught:
        run_pull(registry, store, tmp_path)
    assert caught.value.status == 502


def test_the_api_renders_a_broken_chunked_error_body_as_a_json_502(
    start: Callable[[Respond], HostileServer], model: Artifact
) -> None:
    """Through the real Falcon app: POST /models/create answers 502 registry_error, not 500."""
    registry = start(
        registry_with(model, "/manifests/", lambda ex: ex.broken_chunked(500, b'{"errors":['))
    )
    harness = build_harness(registry_deadline_seconds=10.0)
    try:
        result = harness.client.simulate_post(
            "/models/create", json={"from": f"{registry.host}/team/m:v1"}
        )
        assert_error_shape(result, 502, "registry_error")
    finally:
        harness.close()


@pytest.mark.parametrize("declare_length", [True, False])
def test_a_blob_longer_than_its_descriptor_is_cut_and_refused(
    start: Callable[[Respond], HostileServer],
    model: Artifact,
    store: Store,
    tmp_path: Path,
    declare_length: bool,
) -> None:
    """The right bytes followed by 200 MiB more: cut after one read past the size, refused."""
    layer = model.layers[0]
    data = layer.path.read_bytes()
    sent: list[int] = []

    def longer(exchange: Exchange) -> None:
        sent.append(exchange.stream(200, HUGE, prefix=data, declare_length=declare_length))

    registry = start(registry_with(model, layer.digest, longer))
    started = time.monotonic()
    with pytest.raises(DigestMismatchError) as caught:
        run_pull(registry, store, tmp_path)
    assert "more than the" in caught.value.message
    assert time.monotonic() - started < 10
    registry.stop()
    assert sent and sent[0] < layer.size + 64 * MiB, "the client read far past the size"
    assert not store.has_blob(layer.digest)
    assert not store.incomplete_path(layer.digest).exists()
    assert store.list_models() == []


# -- 3. deadlines and stalls ---------------------------------------------------------------------


def trickle_headers(exchange: Exchange) -> None:
    """Send the status line and headers one byte every 0.2 s (never the body)."""
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Slow: " + b"x" * 1000:
        if exchange.closing.wait(0.2) or not exchange.write(bytes([byte])):
            return


@pytest.mark.parametrize("how", ["body", "headers", "error-body"])
def test_a_trickled_manifest_hits_the_overall_deadline(
    start: Callable[[Respond], HostileServer],
    model: Artifact,
    store: Store,
    tmp_path: Path,
    how: str,
) -> None:
    """One byte every 0.2 s never trips the read timeout; the 1 s deadline cuts it."""

    def slow(exchange: Exchange) -> None:
        if how == "headers":
            trickle_headers(exchange)
        else:
            exchange.trickle(200 if how == "body" else 500, model.manifest_bytes, interval=0.2)

    registry = start(registry_with(model, "/manifests/", slow))
    started = time.monotonic()
    with pytest.raises(RegistryError) as caught:
        run_pull(registry, store, tmp_path, deadline_seconds=1.0)
    assert time.monotonic() - started < 5
    message = caught.value.message
    assert f"registry '{registry.host}' took more than 1s over the manifest" in message
    assert "DMR_REGISTRY_DEADLINE_SECONDS" in message


def test_a_trickled_token_hits_the_overall_deadline(
    start: Callable[[Respond], HostileServer], model: Artifact, store: Store, tmp_path: Path
) -> None:
    tokens = start(lambda ex: ex.trickle(200, b'{"token":"good"}' + b" " * 100, interval=0.2))
    registry = start(token_registry(model, lambda: tokens.url("/token")))
    started = time.monotonic()
    with pytest.raises(RegistryError) as caught:
        run_pull(registry, store, tmp_path, deadline_seconds=1.0)
    assert time.monotonic() - started < 5
    # The token request is part of the manifest exchange, whose deadline ends first.
    assert f"registry '{registry.host}' took more than 1s" in caught.value.message


def stalling_blob(data: bytes, *, fast_bytes: int, interval: float) -> Respond:
    """Send ``fast_bytes`` of ``data`` at once, then the rest one byte every ``interval`` s."""

    def respond(exchange: Exchange) -> None:
        exchange.send_head(200, {}, len(data))
        if not exchange.write(data[:fast_bytes]):
            return
        for position in range(fast_bytes, len(data)):
            if exchange.closing.wait(interval) or not exchange.write(data[position : position + 1]):
                return

    return respond


def test_a_stalled_blob_download_is_cut_and_resumes_later(
    start: Callable[[Respond], HostileServer], model: Artifact, store: Store, tmp_path: Path
) -> None:
    """70 kB at once, then a trickle: the stall rule cuts it; the next pull resumes the rest."""
    layer = model.layers[0]
    data = layer.path.read_bytes()
    slow = start(
        registry_with(model, layer.digest, stalling_blob(data, fast_bytes=70000, interval=0.3))
    )
    started = time.monotonic()
    with pytest.raises(RegistryError) as caught:
        run_pull(slow, store, tmp_path, stall_seconds=1.0, min_bytes_per_second=8192)
    assert time.monotonic() - started < 6
    message = caught.value.message
    assert "stalled" in message and f"registry '{slow.host}'" in message
    assert "pull again" in message and "DMR_REGISTRY_MIN_BYTES_PER_SECOND" in message
    partial = store.incomplete_path(layer.digest)
    assert partial.stat().st_size >= 65536  # one whole read of 64 KiB was kept

    honest = start(lambda ex: serve_model(ex, model) or ex.send(404))
    with client(tmp_path) as registry_client:
        record = registry_client.pull(parse_reference(f"{honest.host}/team/m:v1"), store)
    assert record.id == model.model_id
    (get,) = [s for s in honest.seen if layer.digest in s.path]
    assert get.headers.get("range", "").startswith("bytes=")


def test_a_silent_blob_server_is_cut_by_the_stall_rule(
    start: Callable[[Respond], HostileServer], model: Artifact, store: Store, tmp_path: Path
) -> None:
    """No answer at all within the first window (time to first byte counts)."""
    registry = start(registry_with(model, model.layers[0].digest, lambda ex: ex.closing.wait(30)))
    started = time.monotonic()
    with pytest.raises(RegistryError, match="stalled"):
        run_pull(registry, store, tmp_path, stall_seconds=1.0, min_bytes_per_second=1024)
    assert time.monotonic() - started < 5


def test_a_slow_but_steady_blob_is_not_cut(
    start: Callable[[Respond], HostileServer], store: Store, tmp_path: Path
) -> None:
    """512 KiB at ~256 KiB/s passes a 32 KiB/s floor over 1 s windows (no false stall)."""
    model = synthetic_artifact(tmp_path / "steady", bytes(range(256)) * 2048)
    layer = model.layers[0]
    data = layer.path.read_bytes()

    def steady(exchange: Exchange) -> None:
        exchange.send_head(200, {}, len(data))
        for offset in range(0, len(data), 8192):
            if exchange.closing.wait(0.03) or not exchange.write(data[offset : offset + 8192]):
                return

    registry = start(registry_with(model, layer.digest, steady))
    started = time.monotonic()
    run_pull(registry, store, tmp_path, stall_seconds=1.0, min_bytes_per_second=32768)
    assert time.monotonic() - started > 1.0  # it really was slow, for several windows
    assert store.has_blob(layer.digest)


def test_an_upload_the_registry_does_not_read_is_cut(
    start: Callable[[Respond], HostileServer], tmp_path: Path
) -> None:
    """A registry that accepts the PUT and never reads it: the upload stalls and is cut."""
    model = synthetic_artifact(tmp_path / "big", bytes(64 * MiB))

    def respond(exchange: Exchange) -> None:
        if exchange.method == "HEAD":
            exchange.send(404)
        elif exchange.method == "POST":
            exchange.send(202, headers={"Location": "/v2/team/m/blobs/uploads/1"})
        else:
            exchange.closing.wait(30)  # read nothing, answer nothing

    registry = start(respond)
    started = time.monotonic()
    with client(tmp_path, stall_seconds=1.0, min_bytes_per_second=1 * MiB) as registry_client:
        with pytest.raises(RegistryError) as caught:
            registry_client.push_artifact(model, parse_reference(f"{registry.host}/team/m:v1"))
    assert time.monotonic() - started < 10
    assert "the upload of blob" in caught.value.message and "stalled" in caught.value.message


def test_an_upload_answer_that_never_comes_hits_the_deadline(
    start: Callable[[Respond], HostileServer], model: Artifact, tmp_path: Path
) -> None:
    """The body is read, the 201 never sent: the answer deadline ends the wait."""

    def respond(exchange: Exchange) -> None:
        if exchange.method == "HEAD":
            exchange.send(404)
        elif exchange.method == "POST":
            exchange.send(202, headers={"Location": "/v2/team/m/blobs/uploads/1"})
        else:
            exchange.read_body()
            exchange.closing.wait(30)

    registry = start(respond)
    started = time.monotonic()
    with client(tmp_path, deadline_seconds=1.0) as registry_client:
        with pytest.raises(RegistryError) as caught:
            registry_client.push_artifact(model, parse_reference(f"{registry.host}/team/m:v1"))
    assert time.monotonic() - started < 6
    assert "took more than" in caught.value.message


def test_a_trickled_hub_listing_and_a_stalled_hub_download_are_cut(
    start: Callable[[Respond], HostileServer], store: Store
) -> None:
    """The Hub gets the same rules: a listing deadline and a download stall rule."""
    listing = json.dumps(
        [
            {
                "type": "file",
                "path": "m-Q4_K_M.gguf",
                "size": 100000,
                "lfs": {"oid": "0" * 64, "size": 100000},
            }
        ]
    ).encode()
    slow_listing = start(lambda ex: ex.trickle(200, listing, interval=0.2))
    with HuggingFaceClient(endpoint=slow_listing.url(), deadline_seconds=1.0) as hf:
        with pytest.raises(RegistryError, match="took more than 1s over a page of the file list"):
            hf.list_files("org/repo")

    def respond(exchange: Exchange) -> None:
        if "/tree/" in exchange.route:
            exchange.send(200, listing)
        else:
            stalling_blob(bytes(100000), fast_bytes=1000, interval=0.5)(exchange)

    slow_file = start(respond)
    started = time.monotonic()
    with (
        HuggingFaceClient(
            endpoint=slow_file.url(), stall_seconds=1.0, min_bytes_per_second=4096
        ) as hf,
        pytest.raises(RegistryError, match="stalled"),
    ):
        hf.pull(parse_reference("hf.co/org/repo:Q4_K_M"), store)
    assert time.monotonic() - started < 6
