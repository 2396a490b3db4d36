"""Pull and push against a real docker-registry on 127.0.0.1 (open, Basic and Bearer auth)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import stat
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from orchestrator.errors import (
    DigestMismatchError,
    RegistryDeniedError,
    RegistryError,
    RemoteNotFoundError,
    UnsupportedModelError,
)
from orchestrator.registry.auth import Authenticator, Credentials
from orchestrator.registry.client import RegistryClient
from orchestrator.registry.pull import pull_model
from orchestrator.settings import Config
from orchestrator.store import mediatypes
from orchestrator.store.builder import Artifact, build_gguf_artifact, store_artifact
from orchestrator.store.records import ModelRecord
from orchestrator.store.reference import parse_reference
from orchestrator.store.store import Store
from tests.support.gguf_files import write_llama_model
from tests.support.processes import free_port
from tests.support.registry_fixtures import RegistryServer, write_docker_config
from tests.support.token_server import SERVICE

pytestmark = pytest.mark.registry

CREATED = datetime.datetime(2025, 3, 24, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def smollm2_artifact(smollm2_gguf: Path) -> Artifact:
    """Package the real SmolLM2 GGUF once, with a fixed creation time."""
    return build_gguf_artifact(smollm2_gguf, created=CREATED)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def packaged(store: Store, smollm2_artifact: Artifact) -> ModelRecord:
    return store_artifact(store, smollm2_artifact, ["docker.io/ai/smollm2:local"])


def client(config_dir: Path, **kwargs: object) -> RegistryClient:
    return RegistryClient(docker_config_dir=config_dir, timeout_seconds=10, **kwargs)  # type: ignore[arg-type]


def blob_puts(server: RegistryServer) -> list[str]:
    return [e.uri for e in server.access_log() if e.method == "PUT" and "/blobs/uploads/" in e.uri]


def blob_gets(server: RegistryServer) -> list[str]:
    return [e.uri for e in server.access_log() if e.method == "GET" and "/blobs/" in e.uri]


def round_trip(
    server: RegistryServer, config_dir: Path, store: Store, record: ModelRecord
) -> ModelRecord:
    target = server.ref("team/smollm2:v1")
    events: list[dict[str, object]] = []
    with client(config_dir) as registry:
        digest = registry.push(record, target, store, events.append)
        assert digest == record.id
        assert events[-1]["message"] == "Model pushed successfully"
        assert store.delete(record.id, force=True)[-1] == {"Deleted": record.id}
        assert store.find(record.id) is None
        events.clear()
        pulled = registry.pull(target, store, events.append)
    assert pulled.id == record.id
    assert pulled.files == record.files
    assert target.tag_string in pulled.tags
    for digest in pulled.files:
        assert store.has_blob(digest)
    assert events[-1] == {
        "type": "success",
        "message": "Model pulled successfully",
        "total": 0,
        "layer": {"size": 0, "current": 0},
        "mode": "pull",
    }
    progress = [e for e in events if e["type"] == "progress"]
    assert progress and all(e["mode"] == "pull" for e in progress)
    assert progress[-1]["total"] == record.size_bytes
    assert progress[-1]["layer"]["current"] == progress[-1]["layer"]["size"]  # type: ignore[index]
    return pulled


def test_push_delete_pull_round_trip(
    registry: RegistryServer, docker_config_dir: Path, store: Store, packaged: ModelRecord
) -> None:
    """A packaged model pushed, deleted locally and pulled back keeps its ID and digests."""
    round_trip(registry, docker_config_dir, store, packaged)
    bundle = store.bundle(store.resolve(registry.ref("team/smollm2:v1").tag_string))
    layer = packaged.gguf_layers[0]
    assert hashlib.sha256(bundle.gguf_path.read_bytes()).hexdigest() == layer["digest"][7:]


def test_second_pull_uses_cached_model(
    registry: RegistryServer, docker_config_dir: Path, store: Store, packaged: ModelRecord
) -> None:
    """Pulling a model the store already has fetches no blob and reports the cached size."""
    target = registry.ref("team/smollm2:v1")
    events: list[dict[str, object]] = []
    with client(docker_config_dir) as registry_client:
        registry_client.push(packaged, target, store)
        registry_client.pull(target, store, events.append)
        gets_before = len(blob_gets(registry))
        record = registry_client.pull(target, store, events.append)
    assert len(blob_gets(registry)) == gets_before
    assert events[-1]["type"] == "success"
    assert events[-1]["message"] == f"Using cached model: {record.model_config['size']}"
    assert target.tag_string in record.tags


def test_push_of_unchanged_model_uploads_no_blob(
    registry: RegistryServer, docker_config_dir: Path, store: Store, packaged: ModelRecord
) -> None:
    """A second push of the same model skips every blob (HEAD finds them) and counts them done."""
    target = registry.ref("team/smollm2:v1")
    events: list[dict[str, object]] = []
    with client(docker_config_dir) as registry_client:
        registry_client.push(packaged, target, store)
        assert len(blob_puts(registry)) == 2  # the GGUF layer and the config
        registry_client.push(packaged, registry.ref("team/smollm2:v2"), store, events.append)
    assert len(blob_puts(registry)) == 2
    progress = [e for e in events if e["type"] == "progress"]
    assert progress[-1]["layer"]["current"] == packaged.size_bytes  # type: ignore[index]
    tags = requests.get(f"{registry.url}/v2/team/smollm2/tags/list", timeout=5).json()
    assert sorted(tags["tags"]) == ["v1", "v2"]


def test_push_artifact_and_remote_model(
    registry: RegistryServer, docker_config_dir: Path, smollm2_artifact: Artifact
) -> None:
    """An artifact pushed straight from its files is inspectable remotely without tags."""
    target = registry.ref("team/packaged:latest")
    with client(docker_config_dir) as registry_client:
        assert registry_client.push_artifact(smollm2_artifact, target) == smollm2_artifact.model_id
        remote = registry_client.remote_model(target)
    assert remote["id"] == smollm2_artifact.model_id
    assert "tags" not in remote
    assert remote["created"] == int(CREATED.timestamp())
    assert remote["config"]["format"] == "gguf"
    assert remote["config"]["quantization"] == smollm2_artifact.config["config"]["quantization"]


def test_pull_by_digest_and_pull_model_dispatch(
    registry: RegistryServer, docker_config_dir: Path, store: Store, smollm2_artifact: Artifact
) -> None:
    """pull_model pulls a digest reference over plain HTTP; only an explicit tag is stored."""
    with client(docker_config_dir) as registry_client:
        registry_client.push_artifact(smollm2_artifact, registry.ref("team/m:v1"))
    ref = parse_reference(f"{registry.host}/team/m@{smollm2_artifact.model_id}")
    record = pull_model(
        ref,
        store,
        config=Config(),
        bearer_token=None,
        progress=None,
        docker_config_dir=docker_config_dir,
    )
    assert record.id == smollm2_artifact.model_id
    assert record.tags == ()  # a digest pins content; it does not claim ':latest'
    tagged = parse_reference(f"{registry.host}/team/m:v1@{smollm2_artifact.model_id}")
    with client(docker_config_dir) as registry_client:
        assert registry_client.pull(tagged, store).tags == (tagged.tag_string,)


def test_missing_tag_and_repository_are_not_found(
    registry: RegistryServer, docker_config_dir: Path, store: Store
) -> None:
    """A tag or repository the registry lacks is a RemoteNotFoundError (404)."""
    with client(docker_config_dir) as registry_client, pytest.raises(RemoteNotFoundError) as caught:
        registry_client.pull(registry.ref("nobody/nothing:v1"), store)
    assert caught.value.status == 404
    assert "nobody/nothing:v1" in caught.value.message
    assert store.list_models() == []


def test_unreachable_registry_is_a_registry_error(docker_config_dir: Path, store: Store) -> None:
    """A registry nobody listens for fails fast with RegistryError (502)."""
    ref = parse_reference(f"127.0.0.1:{free_port()}/team/m:v1")
    with client(docker_config_dir) as registry_client, pytest.raises(RegistryError) as caught:
        registry_client.pull(ref, store)
    assert caught.value.status == 502


def upload_raw(server: RegistryServer, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = requests.post(f"{server.url}/v2/{repo}/blobs/uploads/", timeout=5)
    location = requests.compat.urljoin(server.url, started.headers["Location"])
    done = requests.put(
        location,
        params={"digest": digest},
        data=data,
        timeout=5,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert done.status_code == 201, done.text
    return digest


def test_unsupported_config_media_type(
    registry: RegistryServer, docker_config_dir: Path, store: Store
) -> None:
    """An artifact whose config is an image config, not a model config, is refused with 422."""
    config = b'{"architecture":"amd64","os":"linux"}'
    layer = b"not a model"
    manifest = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": len(config),
            "digest": upload_raw(registry, "team/image", config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "size": len(layer),
                "digest": upload_raw(registry, "team/image", layer),
            }
        ],
    }
    answer = requests.put(
        f"{registry.url}/v2/team/image/manifests/v1",
        data=json.dumps(manifest),
        timeout=5,
        headers={"Content-Type": mediatypes.OCI_MANIFEST},
    )
    assert answer.status_code == 201
    with (
        client(docker_config_dir) as registry_client,
        pytest.raises(UnsupportedModelError) as caught,
    ):
        registry_client.pull(registry.ref("team/image:v1"), store)
    assert caught.value.status == 422
    assert "application/vnd.oci.image.config.v1+json" in caught.value.message
    assert "try upgrading" in caught.value.message
    assert store.list_models() == []


def test_resume_from_partial_download_uses_range(
    registry: RegistryServer, docker_config_dir: Path, tmp_path: Path, smollm2_artifact: Artifact
) -> None:
    """A leftover .incomplete prefix is continued with Range (206) and verified."""
    target = registry.ref("team/resume:v1")
    with client(docker_config_dir) as registry_client:
        registry_client.push_artifact(smollm2_artifact, target)
    layer = smollm2_artifact.layers[0]
    store = Store(tmp_path / "fresh")
    keep = 40 * 1024 * 1024 + 123
    with open(layer.path, "rb") as source:
        store.incomplete_path(layer.digest).write_bytes(source.read(keep))
    with client(docker_config_dir) as registry_client:
        record = registry_client.pull(target, store)
    assert record.id == smollm2_artifact.model_id
    gets = [e for e in registry.access_log() if e.method == "GET" and layer.digest in e.uri]
    assert [(e.status, e.bytes) for e in gets] == [(206, layer.size - keep)]
    assert not store.incomplete_path(layer.digest).exists()
    assert store.has_blob(layer.digest)


def test_resume_of_a_corrupt_partial_is_caught_and_cleaned(
    registry: RegistryServer, docker_config_dir: Path, tmp_path: Path, smollm2_artifact: Artifact
) -> None:
    """A corrupted .incomplete prefix fails the digest check, is deleted, and a retry works."""
    target = registry.ref("team/resume:v1")
    layer = smollm2_artifact.layers[0]
    store = Store(tmp_path / "fresh")
    store.incomplete_path(layer.digest).write_bytes(b"\0" * 1000)
    with client(docker_config_dir) as registry_client:
        registry_client.push_artifact(smollm2_artifact, target)
        with pytest.raises(DigestMismatchError):
            registry_client.pull(target, store)
        assert not store.incomplete_path(layer.digest).exists()
        assert not store.has_blob(layer.digest)
        assert store.list_models() == []
        assert registry_client.pull(target, store).id == smollm2_artifact.model_id


def test_parallel_pulls_of_one_model_share_the_download(
    registry: RegistryServer, docker_config_dir: Path, store: Store, smollm2_artifact: Artifact
) -> None:
    """Two pulls of the same model at once both succeed; each layer is fetched only once."""
    target = registry.ref("team/twice:v1")
    with client(docker_config_dir) as registry_client:
        registry_client.push_artifact(smollm2_artifact, target)
    results: list[object] = []

    def pull() -> None:
        with client(docker_config_dir) as registry_client:
            try:
                results.append(registry_client.pull(target, store).id)
            except Exception as ex:  # noqa: BLE001 (reported by the assertion)
                results.append(ex)

    threads = [threading.Thread(target=pull) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == [smollm2_artifact.model_id] * 2
    layer = smollm2_artifact.layers[0].digest
    assert len([uri for uri in blob_gets(registry) if layer in uri]) == 1


# -- authentication ---------------------------------------------------------------------------


def test_basic_auth_round_trip(
    basic_registry: RegistryServer, tmp_path: Path, store: Store, packaged: ModelRecord
) -> None:
    """With htpasswd credentials in config.json, push and pull work (Basic sent up front)."""
    config_dir = write_docker_config(
        tmp_path / "creds", basic_registry.host, "testuser", "testpass"
    )
    round_trip(basic_registry, config_dir, store, packaged)
    # (The fixture's readiness probe of /v2/ is the other 401 in the log.)
    unauthorized = [e for e in basic_registry.access_log() if e.status == 401 and e.uri != "/v2/"]
    assert len(unauthorized) == 1  # one challenge, then credentials on every request


def test_basic_auth_wrong_password_and_anonymous_are_denied(
    basic_registry: RegistryServer, tmp_path: Path, docker_config_dir: Path, store: Store
) -> None:
    """Wrong credentials or none get RegistryDeniedError from an htpasswd registry."""
    wrong = write_docker_config(tmp_path / "wrong", basic_registry.host, "testuser", "nope")
    for config_dir in (wrong, docker_config_dir):
        with client(config_dir) as registry_client, pytest.raises(RegistryDeniedError) as caught:
            registry_client.pull(basic_registry.ref("team/smollm2:v1"), store)
        assert caught.value.status == 401
        assert "docker login" in caught.value.message


def test_credentials_from_a_credential_helper(
    basic_registry: RegistryServer, tmp_path: Path, store: Store, smollm2_artifact: Artifact
) -> None:
    """credsStore runs docker-credential-<name> get with the registry on stdin."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-testhelper"
    answer = json.dumps(
        {"ServerURL": basic_registry.host, "Username": "testuser", "Secret": "testpass"}
    )
    helper.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"server = sys.stdin.read().strip()\n"
        f"if sys.argv[1:] == ['get'] and server == {basic_registry.host!r}:\n"
        f"    print({answer!r})\n"
        "else:\n"
        "    print('credentials not found in native keychain'); sys.exit(1)\n"
    )
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    config_dir = tmp_path / "helper-config"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(json.dumps({"credsStore": "testhelper"}))
    environ = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    with client(config_dir, environ=environ) as registry_client:
        target = basic_registry.ref("team/helper:v1")
        assert registry_client.push_artifact(smollm2_artifact, target) == smollm2_artifact.model_id
        assert registry_client.pull(target, store).id == smollm2_artifact.model_id


def test_token_auth_round_trip_upgrades_scope_for_push(
    token_registry: RegistryServer, tmp_path: Path, store: Store, packaged: ModelRecord
) -> None:
    """Bearer flow: tokens come from the realm with Basic creds, with pull,push scope for push."""
    config_dir = write_docker_config(
        tmp_path / "creds", token_registry.host, "testuser", "testpass"
    )
    round_trip(token_registry, config_dir, store, packaged)
    assert token_registry.token_server is not None
    requests_seen = token_registry.token_server.requests
    assert (["repository:team/smollm2:pull,push"], "testuser") in requests_seen
    assert (["repository:team/smollm2:pull"], "testuser") in requests_seen
    # One token per scope and client, not one per request.
    assert len(requests_seen) <= 4


def test_token_auth_denials(
    token_registry: RegistryServer,
    tmp_path: Path,
    docker_config_dir: Path,
    store: Store,
    smollm2_artifact: Artifact,
) -> None:
    """A wrong password is refused by the token server; anonymous users cannot push."""
    wrong = write_docker_config(tmp_path / "wrong", token_registry.host, "testuser", "nope")
    with client(wrong) as registry_client, pytest.raises(RegistryDeniedError):
        registry_client.pull(token_registry.ref("team/smollm2:v1"), store)
    with client(docker_config_dir) as registry_client, pytest.raises(RegistryDeniedError):
        registry_client.push_artifact(smollm2_artifact, token_registry.ref("public/m:v1"))


def test_token_auth_anonymous_pull_of_public_repository(
    token_registry: RegistryServer, tmp_path: Path, docker_config_dir: Path, store: Store
) -> None:
    """Anonymous pull works where the token server grants pull (public/*)."""
    config_dir = write_docker_config(
        tmp_path / "creds", token_registry.host, "testuser", "testpass"
    )
    small = build_gguf_artifact(write_llama_model(tmp_path / "tiny.gguf"), created=CREATED)
    with client(config_dir) as registry_client:
        registry_client.push_artifact(small, token_registry.ref("public/tiny:v1"))
    with client(docker_config_dir) as registry_client:
        pulled = registry_client.pull(token_registry.ref("public/tiny:v1"), store)
        assert pulled.id == small.model_id
        with pytest.raises(RegistryDeniedError):
            registry_client.pull(token_registry.ref("private/tiny:v1"), store)


# -- a registry that lies ---------------------------------------------------------------------


class LyingRegistry:
    """Serve a valid manifest and config for one model, and its layer with flipped bytes.

    With ``redirect`` the blobs answer 307 to ``/cdn/<digest>``, recording the Range header.
    """

    def __init__(self, artifact: Artifact, *, corrupt: bool, redirect: bool = False) -> None:
        self.artifact = artifact
        self.corrupt = corrupt
        self.redirect = redirect
        self.ranges: list[str | None] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def blob(self, digest: str) -> bytes | None:
        if digest == self.artifact.config_digest:
            return self.artifact.config_bytes
        for layer in self.artifact.layers:
            if layer.digest == digest:
                data = layer.path.read_bytes()
                return bytes([data[0] ^ 0xFF]) + data[1:] if self.corrupt else data
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        lying = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

            def _send(self, status: int, body: bytes, **headers: str) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                if "/manifests/" in self.path:
                    self._send(
                        200, lying.artifact.manifest_bytes, Content_Type=mediatypes.OCI_MANIFEST
                    )
                    return
                digest = self.path.rsplit("/", 1)[-1]
                if lying.redirect and "/blobs/" in self.path:
                    self._send(307, b"", Location=f"/cdn/{digest}")
                    return
                data = lying.blob(digest)
                if data is None:
                    self._send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
                    return
                lying.ranges.append(self.headers.get("Range"))
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                    self._send(
                        206,
                        data[start:],
                        Content_Range=f"bytes {start}-{len(data) - 1}/{len(data)}",
                    )
                    return
                self._send(200, data)

        return Handler

    def __enter__(self) -> LyingRegistry:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def tiny_artifact(tmp_path: Path) -> Artifact:
    return build_gguf_artifact(write_llama_model(tmp_path / "tiny.gguf"), created=CREATED)


def test_corrupt_blob_is_refused_and_nothing_is_stored(
    tiny_artifact: Artifact, docker_config_dir: Path, store: Store
) -> None:
    """Blob bytes that do not match their digest raise DigestMismatchError; nothing is kept."""
    with LyingRegistry(tiny_artifact, corrupt=True) as lying:
        ref = parse_reference(f"{lying.host}/team/tiny:v1")
        with (
            client(docker_config_dir) as registry_client,
            pytest.raises(DigestMismatchError) as caught,
        ):
            registry_client.pull(ref, store)
    assert caught.value.status == 502
    layer = tiny_artifact.layers[0].digest
    assert store.list_models() == []
    assert not store.has_blob(layer)
    assert not store.incomplete_path(layer).exists()
    assert not any(p.name.endswith(".incomplete") for p in store.root.rglob("*"))


def test_range_survives_redirects(
    tiny_artifact: Artifact, docker_config_dir: Path, store: Store
) -> None:
    """A resumed download keeps its Range header across a redirect to another path."""
    layer = tiny_artifact.layers[0]
    keep = layer.size // 2
    store.incomplete_path(layer.digest).write_bytes(layer.path.read_bytes()[:keep])
    with LyingRegistry(tiny_artifact, corrupt=False, redirect=True) as lying:
        ref = parse_reference(f"{lying.host}/team/tiny:v1")
        with client(docker_config_dir) as registry_client:
            record = registry_client.pull(ref, store)
    assert record.id == tiny_artifact.model_id
    assert f"bytes={keep}-" in lying.ranges


def test_insufficient_scope_fetches_a_wider_token(token_registry: RegistryServer) -> None:
    """A pull token used for an upload gets 401 insufficient_scope and is replaced by pull,push."""
    session = requests.Session()
    auth = Authenticator(
        session,
        token_registry.host,
        credentials=Credentials("testuser", "testpass"),
        insecure=True,
        timeout_seconds=10,
    )
    scope = "repository:team/scoped:pull"
    url = f"{token_registry.url}/v2/team/scoped/blobs/uploads/"
    first = session.head(f"{token_registry.url}/v2/team/scoped/blobs/sha256:{'0' * 64}", timeout=5)
    assert first.status_code == 401
    assert auth.handle_unauthorized(first, scope, None)
    pull_token = auth.authorization(scope)
    denied = session.post(url, headers={"Authorization": pull_token or ""}, timeout=5)
    assert denied.status_code == 401
    assert 'error="insufficient_scope"' in denied.headers["WWW-Authenticate"]
    assert auth.handle_unauthorized(denied, scope, pull_token)
    wider = auth.authorization(scope)
    assert wider != pull_token
    accepted = session.post(url, headers={"Authorization": wider or ""}, timeout=5)
    assert accepted.status_code == 202
    assert token_registry.token_server is not None
    assert token_registry.token_server.requests[-1] == (
        ["repository:team/scoped:pull,push"],
        "testuser",
    )


class ClientGone(Exception):
    """Raised by a progress callback, as the API does when the HTTP client disconnects."""


def test_aborted_pull_keeps_partial_and_resumes(
    registry: RegistryServer, docker_config_dir: Path, store: Store, smollm2_artifact: Artifact
) -> None:
    """A progress callback that raises stops the pull; the next pull resumes the partial file."""
    target = registry.ref("team/abort:v1")
    layer = smollm2_artifact.layers[0]

    def callback(event: dict[str, object]) -> None:
        layer_info = event.get("layer")
        if isinstance(layer_info, dict) and layer_info.get("current", 0) >= 8 * 1024 * 1024:
            raise ClientGone

    with client(docker_config_dir) as registry_client:
        registry_client.push_artifact(smollm2_artifact, target)
        with pytest.raises(ClientGone):
            registry_client.pull(target, store, callback)
        partial = store.incomplete_path(layer.digest)
        kept = partial.stat().st_size
        assert 8 * 1024 * 1024 <= kept < layer.size
        assert store.list_models() == []
        assert registry_client.pull(target, store).id == smollm2_artifact.model_id
    gets = [e for e in registry.access_log() if e.method == "GET" and layer.digest in e.uri]
    assert gets[-1].status == 206
    assert gets[-1].bytes == layer.size - kept


def test_explicit_bearer_token_is_used_directly(
    token_registry: RegistryServer, docker_config_dir: Path, store: Store, tmp_path: Path
) -> None:
    """A bearer token given with the request is sent as is; a bad one is denied."""
    assert token_registry.token_server is not None
    token = token_registry.token_server.issue(
        ["repository:team/direct:pull,push"], "testuser", SERVICE
    )
    small = build_gguf_artifact(write_llama_model(tmp_path / "tiny.gguf"), created=CREATED)
    target = token_registry.ref("team/direct:v1")
    with client(docker_config_dir, bearer_token=token) as registry_client:
        assert registry_client.push_artifact(small, target) == small.model_id
        assert registry_client.pull(target, store).id == small.model_id
    assert token_registry.token_server.requests == []  # no exchange happened
    with client(docker_config_dir, bearer_token="junk") as junk, pytest.raises(RegistryDeniedError):
        junk.remote_model(target)
