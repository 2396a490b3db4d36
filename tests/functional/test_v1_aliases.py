"""The ``/v1`` alias and DMR's other inference paths, probed as clients probe them.

Real curl and the official openai client against the real daemon, engine and model:
``/v1/models[/{ref}]`` (openai ``models.list``/``retrieve`` with ``base_url=.../v1``),
``/engines/v1/models/{ref}``, ``/v1/rerank`` and ``/engines[/llama.cpp]/v1/rerank``,
``/v1/score`` (501), ``/v1/images/generations`` (501 through ``client.images.generate``).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import openai
import pytest

from tests.support.daemon_fixtures import MODEL, Daemon

pytestmark = pytest.mark.llama_server

MODEL_ID = "docker.io/ai/smollm2:135M-Q4_1"


@pytest.fixture(scope="module")
def curl() -> str:
    path = shutil.which("curl")
    if path is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    return path


def run_curl(curl: str, url: str, body: object | None = None) -> tuple[int, str]:
    """Return (status, body) of a GET, or of a POST when ``body`` is given."""
    args = [curl, "--silent", "--show-error", "--max-time", "120", "--write-out", "\n%{http_code}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    done = subprocess.run(
        [*args, url], capture_output=True, text=True, timeout=130, check=False
    )
    assert done.returncode == 0, done.stderr
    text, _, status = done.stdout.rpartition("\n")
    return int(status), text


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> openai.OpenAI:
    """The openai client on the bare /v1 alias, as most tools are configured."""
    return openai.OpenAI(base_url=daemon.url("/v1"), api_key="unused", timeout=120, max_retries=0)


def test_openai_client_lists_and_retrieves_on_the_v1_alias(client: openai.OpenAI) -> None:
    (model,) = client.models.list().data
    assert model.id == MODEL_ID
    assert client.models.retrieve("ai/smollm2:latest").id == MODEL_ID
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("ai/absent")
    assert raised.value.code == "model_not_found"


@pytest.mark.parametrize(
    "path", ["/engines/v1/models/ai/smollm2", "/engines/llama.cpp/v1/models/ai/smollm2",
             "/v1/models/ai/smollm2", "/v1/models/docker.io/ai/smollm2:135M-Q4_1"],
)  # fmt: skip
def test_curl_gets_one_model_under_every_prefix(curl: str, daemon: Daemon, path: str) -> None:
    status, text = run_curl(curl, daemon.url(path))
    assert status == 200, text
    assert json.loads(text)["id"] == MODEL_ID


@pytest.mark.parametrize("path", ["/v1/rerank", "/engines/v1/rerank", "/engines/llama.cpp/v1/rerank",
                                  "/rerank"])  # fmt: skip
def test_rerank_answers_under_v1_as_at_the_top(curl: str, daemon: Daemon, path: str) -> None:
    body = {"model": MODEL, "query": "greeting", "documents": ["hello there", "tax forms"]}
    status, text = run_curl(curl, daemon.url(path), body)
    assert status == 200, text
    results = json.loads(text)["results"]
    assert sorted(result["index"] for result in results) == [0, 1]
    assert all(isinstance(result["relevance_score"], float) for result in results)


@pytest.mark.parametrize("path", ["/v1/score", "/engines/v1/score", "/score"])
def test_score_is_not_supported_under_every_path(curl: str, daemon: Daemon, path: str) -> None:
    status, text = run_curl(curl, daemon.url(path), {"model": MODEL, "query": "q", "documents": ["d"]})
    assert status == 501, text
    assert json.loads(text)["error"]["code"] == "not_supported"


def test_unknown_backend_under_v1_rerank_is_404(curl: str, daemon: Daemon) -> None:
    status, text = run_curl(curl, daemon.url("/engines/vllm/v1/rerank"), {"model": MODEL})
    assert status == 404 and "llama.cpp" in json.loads(text)["error"]["message"]


def test_openai_image_generation_gets_a_clear_501(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        client.images.generate(model=MODEL, prompt="a red circle")
    assert raised.value.status_code == 501
    assert raised.value.code == "not_supported"
    assert "cannot generate images" in raised.value.message


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/engines/v1/images/generations", {"model": "ai/absent", "prompt": "x"}, 404,
         "model_not_found"),
        ("/engines/llama.cpp/v1/images/generations", {"prompt": "x"}, 400, "invalid_request"),
        ("/v1/images/generations", {"model": MODEL, "prompt": "x"}, 501, "not_supported"),
    ],
)  # fmt: skip
def test_curl_image_generation_paths(
    curl: str, daemon: Daemon, path: str, body: object, status: int, code: str
) -> None:
    got, text = run_curl(curl, daemon.url(path), body)
    assert got == status, text
    assert json.loads(text)["error"]["code"] == code


def test_embeddings_and_completions_on_the_v1_alias(client: openai.OpenAI) -> None:
    vectors = client.embeddings.create(model=MODEL, input="hello")
    assert len(vectors.data[0].embedding) == 576
    text = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    assert text.choices[0].text
