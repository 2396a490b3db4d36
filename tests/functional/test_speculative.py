"""Speculative decoding through `docker model configure` and the real llama-server.

The same small model (SmolLM2 135M) is its own draft: enough to prove the plumbing (the
runner's argv, the engine drafting, the memory estimate) and to measure it. The tests run in
file order: the first configures the draft, the next ones use that configuration, the last
one removes it and compares the speed (printed, never asserted: timing on a shared host).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.daemon_fixtures import Daemon
from tests.support.docker_cli import docker_model, ok, plugin_env

pytestmark = [pytest.mark.llama_server]

MODEL = "ai/smollm2"
PROMPT = "Count from 1 to 40, separated by commas."
MAX_TOKENS = 96


@pytest.fixture(scope="module")
def docker_env(tmp_path_factory: pytest.TempPathFactory, daemon: Daemon) -> dict[str, str]:
    """Return the environment of ``docker model`` commands: plugin installed, host set."""
    return plugin_env(tmp_path_factory.mktemp("docker-config"), daemon.base_url)


def chat(daemon: Daemon) -> dict[str, Any]:
    answer = daemon.post(
        "/engines/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        },
        timeout=300,
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def runner_argv(daemon: Daemon) -> list[str]:
    processes = daemon.runner_processes()
    assert len(processes) == 1, [p.cmdline() for p in processes]
    return list(processes[0].cmdline())


def estimated_weights(daemon: Daemon) -> int:
    memory = daemon.get(f"/models/{MODEL}", timeout=30).json()["memory"]
    return int(memory["estimate"]["ram"]["weights"]) + int(memory["estimate"]["vram"]["weights"])


SPEEDS: dict[str, float] = {}


def test_unknown_draft_model_is_refused_by_name(docker_env: dict[str, str], daemon: Daemon) -> None:
    answer = daemon.post(
        "/engines/_configure",
        json={"model": MODEL, "speculative": {"draft_model": "ai/no-such-draft"}},
        timeout=30,
    )
    assert answer.status_code == 404, answer.text
    error = answer.json()["error"]
    assert error["param"] == "speculative.draft_model" and "ai/no-such-draft" in error["message"]
    refused = docker_model(
        docker_env, "configure", "--speculative-draft-model", "ai/no-such-draft", MODEL
    )
    assert refused.returncode != 0 and "ai/no-such-draft" in refused.stderr
    assert daemon.get(f"/engines/_configure?model={MODEL}", timeout=30).json() == []


def test_baseline_speed_without_a_draft(daemon: Daemon) -> None:
    chat(daemon)  # warm: the runner starts and the page cache holds the model
    answer = chat(daemon)
    assert "draft_n" not in answer["timings"]
    SPEEDS["without draft"] = float(answer["timings"]["predicted_per_second"])
    assert "--model-draft" not in runner_argv(daemon)


def test_configure_draft_restarts_the_runner_with_the_draft(
    docker_env: dict[str, str], daemon: Daemon
) -> None:
    weights_alone = estimated_weights(daemon)
    old_pid = daemon.runner_processes()[0].pid
    ok(
        docker_model(
            docker_env, "configure", "--speculative-draft-model", MODEL,
            "--speculative-num-tokens", "8", "--speculative-min-acceptance-rate", "0.5", MODEL,
        )
    )  # fmt: skip
    entries = daemon.get(f"/engines/_configure?model={MODEL}", timeout=30).json()
    assert [entry["Config"]["speculative"] for entry in entries] == [
        {"draft_model": MODEL, "num_tokens": 8, "min_acceptance_rate": 0.5}
    ]
    # The draft's weights are in the estimate too: here, the same model once more.
    assert estimated_weights(daemon) == 2 * weights_alone

    answer = chat(daemon)
    assert answer["choices"][0]["message"]["content"].strip()
    argv = runner_argv(daemon)
    assert daemon.runner_processes()[0].pid != old_pid  # idle runner restarted
    draft_path = argv[argv.index("--model-draft") + 1]
    assert draft_path == argv[argv.index("--model") + 1]  # its own draft, from the store
    assert argv[argv.index("--spec-draft-n-max") + 1] == "8"
    assert argv[argv.index("--spec-draft-p-min") + 1] == "0.50"
    # The engine really drafted: llama-server reports drafted and accepted tokens.
    assert answer["timings"]["draft_n"] > 0
    assert answer["timings"]["draft_n_accepted"] > 0
    ps = daemon.get("/engines/ps", timeout=30).json()
    assert [entry.get("draft_model") for entry in ps] == [MODEL]
    SPEEDS["with draft"] = float(chat(daemon)["timings"]["predicted_per_second"])


def test_configure_without_the_draft_goes_back(docker_env: dict[str, str], daemon: Daemon) -> None:
    ok(docker_model(docker_env, "configure", MODEL))
    entries = daemon.get(f"/engines/_configure?model={MODEL}", timeout=30).json()
    assert all("speculative" not in entry["Config"] for entry in entries)
    answer = chat(daemon)
    assert "draft_n" not in answer["timings"]
    assert "--model-draft" not in runner_argv(daemon)
    print(
        "\nSmolLM2 135M, its own draft, "
        + ", ".join(f"{name}: {speed:.1f} tokens/s" for name, speed in SPEEDS.items())
    )
