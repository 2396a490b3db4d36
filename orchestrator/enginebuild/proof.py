"""Prove a llama-server build by generating tokens with it, as a runner would.

``llama-server --version`` proves nothing: it runs no matrix multiply, and the instruction-set
crashes this guards against (SIGILL in an AMX kernel the hypervisor traps, say) happen on the
first one. So the proof starts the server on a real model with llama-server's default CPU
settings (repacking on, as runners use it), waits until ``/health`` answers, asks ``/completion``
for a few tokens after a prompt long enough to be processed as a batch, and reports tokens/s or
how it failed. Every wait has a deadline; the server is stopped (TERM, wait, KILL) whatever
happens.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Standard library only, like this package: the same connection class the daemon's runners use.
from orchestrator.runners.readiness import probe_health
from orchestrator.unixhttp import UnixHTTPConnection

PROMPT = (
    "The three primary colours of light are red, green and blue. Mixing all three gives white. "
    "Name the colour you get by mixing red and green light:"
)
PREDICT_TOKENS = 32
READY_TIMEOUT_SECONDS = 120.0
GENERATE_TIMEOUT_SECONDS = 120.0
STOP_GRACE_SECONDS = 5.0
LOG_TAIL_LINES = 15

# Signals that mean "this binary uses an instruction this CPU does not honour": rebuilding with
# fewer instruction sets is the remedy. A trapped AMX instruction is not always SIGILL: on one
# cloud VM `tilezero` died with SIGILL, on another `ldtilecfg` in ggml_backend_amx_mul_mat died
# with SIGSEGV (measured with gdb on this project's CI machine). A proof that segfaults with one
# build and generates with the next is that case; if every rung segfaults, the provisioner stops.
CPU_SIGNALS = frozenset({signal.SIGILL, signal.SIGBUS, signal.SIGSEGV})


@dataclass(frozen=True)
class ProofResult:
    """How one proof went.

    Attributes:
        ok: Tokens came back.
        tokens_per_second: Generation speed llama-server reported (0 when not ok).
        prompt_tokens_per_second: Prompt processing speed it reported (0 when not ok).
        signal: The signal that killed the server, if one did.
        detail: One line for people: the answer's start, or what failed.
        log_tail: The server's last output lines (for failures).
    """

    ok: bool
    tokens_per_second: float = 0.0
    prompt_tokens_per_second: float = 0.0
    signal: int | None = None
    detail: str = ""
    log_tail: tuple[str, ...] = ()

    @property
    def cpu_trap(self) -> bool:
        """Return whether a signal that a smaller instruction set avoids killed the server."""
        return self.signal in CPU_SIGNALS


def proof_argv(
    server: Path, model: Path, socket_path: Path, extra: Sequence[str] = ()
) -> list[str]:
    """Return the command line of the proof (small context: the check must be cheap).

    The server listens on a Unix socket in a private temporary directory, as runners do: no port
    to race for, and no other local user can talk to it meanwhile.
    """
    return [
        str(server), "-m", str(model), "--host", str(socket_path),
        "--ctx-size", "512", "--no-webui", *extra,
    ]


def proof_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment without ``LLAMA_ARG_*`` settings.

    ``LLAMA_ARG_REPACK=0`` in the caller's shell would skip the very kernels that crash; the
    proof must test what a runner runs by default.
    """
    env = dict(os.environ if environ is None else environ)
    return {key: value for key, value in env.items() if not key.startswith("LLAMA_ARG_")}


def _post_json(
    socket_path: Path, path: str, body: dict[str, object], timeout: float
) -> tuple[int, bytes]:
    connection = UnixHTTPConnection(str(socket_path), timeout)
    try:
        connection.request(
            "POST", path, body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_GRACE_SECONDS)


def _tail(path: Path) -> tuple[str, ...]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ()
    return tuple(lines[-LOG_TAIL_LINES:])


def _died(process: subprocess.Popen[bytes], log_path: Path, when: str) -> ProofResult:
    code = process.returncode
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return ProofResult(
            ok=False, signal=-code, detail=f"killed by {name} {when}", log_tail=_tail(log_path)
        )
    return ProofResult(
        ok=False, detail=f"exited with status {code} {when}", log_tail=_tail(log_path)
    )


def prove(
    server: Path,
    model: Path,
    *,
    extra_args: Sequence[str] = (),
    ready_timeout: float = READY_TIMEOUT_SECONDS,
    generate_timeout: float = GENERATE_TIMEOUT_SECONDS,
    predict_tokens: int = PREDICT_TOKENS,
) -> ProofResult:
    """Start ``server`` on ``model``, generate a few tokens, stop it; return what happened.

    Args:
        server: The llama-server executable.
        model: A GGUF model file.
        extra_args: More llama-server arguments (``-ngl 999`` for a GPU build).
        ready_timeout: Deadline for ``/health`` to answer 200.
        generate_timeout: Deadline for the completion.
        predict_tokens: How many tokens to ask for (benchmarks ask for more).
    """
    with tempfile.TemporaryDirectory(prefix="engine-proof-") as scratch:  # mode 0700
        log_path = Path(scratch) / "llama-server.log"
        socket_path = Path(scratch) / "proof.sock"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                proof_argv(server, model, socket_path, extra_args),
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                cwd=scratch, start_new_session=True, env=proof_environment(),
            )
        try:
            return _ready_then_generate(
                process, socket_path, log_path, ready_timeout, generate_timeout, predict_tokens
            )
        finally:
            _stop(process)


def _ready_then_generate(
    process: subprocess.Popen[bytes],
    socket_path: Path,
    log_path: Path,
    ready_timeout: float,
    generate_timeout: float,
    predict_tokens: int,
) -> ProofResult:
    deadline = time.monotonic() + ready_timeout
    while True:
        if process.poll() is not None:
            return _died(process, log_path, "while loading the model")
        if time.monotonic() >= deadline:
            return ProofResult(
                ok=False, detail=f"not ready within {ready_timeout:.0f} s", log_tail=_tail(log_path)
            )
        if probe_health(str(socket_path)) == 200:
            break  # None while not listening yet, 503 while loading
        time.sleep(0.1)
    # ignore_eos: exactly predict_tokens tokens, so speeds compare across builds.
    body = {
        "prompt": PROMPT, "n_predict": predict_tokens, "temperature": 0, "seed": 1,
        "ignore_eos": True,
    }
    try:
        status, raw = _post_json(socket_path, "/completion", body, timeout=generate_timeout)
    except (OSError, http.client.HTTPException) as ex:
        try:
            process.wait(STOP_GRACE_SECONDS)  # a crash mid-request: wait for its status
        except subprocess.TimeoutExpired:
            pass
        if process.returncode is not None:
            return _died(process, log_path, "while generating")
        return ProofResult(
            ok=False, detail=f"no answer to /completion: {ex}", log_tail=_tail(log_path)
        )
    if status != 200:
        return ProofResult(
            ok=False, detail=f"/completion answered HTTP {status}: {raw[:200]!r}",
            log_tail=_tail(log_path),
        )
    try:
        answer = json.loads(raw)
        predicted = int(answer.get("tokens_predicted", 0))
        timings = answer.get("timings", {})
        speed = float(timings.get("predicted_per_second", 0.0))
        prompt_speed = float(timings.get("prompt_per_second", 0.0))
        text = str(answer.get("content", ""))
    except (ValueError, TypeError, AttributeError) as ex:
        return ProofResult(ok=False, detail=f"/completion answered unreadable JSON: {ex}")
    if predicted < 1:
        return ProofResult(
            ok=False, detail="/completion generated no tokens", log_tail=_tail(log_path)
        )
    return ProofResult(
        ok=True,
        tokens_per_second=speed,
        prompt_tokens_per_second=prompt_speed,
        detail=f"{predicted} tokens at {speed:.1f} tokens/s: {text.strip()[:60]!r}",
    )
