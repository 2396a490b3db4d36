"""Profile the daemon's gunicorn worker under one workload (py-spy, optionally strace).

``python -m bench.profile WORKLOAD [--seconds 20] [--strace]`` with WORKLOAD one of:

* ``stream``: one streamed chat completion after another (256 tokens each);
* ``concurrent``: bursts of 16 streamed completions;
* ``ttft``: one-token completions in a loop (the per-request cost behind time to first token);
* ``models``: ``GET /models`` in a loop with 200 synthetic models in the store;
* ``cold``: unload the runner, then one request, in a loop.

It starts its own daemon (as :mod:`bench.run` does), records the worker with ``py-spy record
--format raw`` (needs ``pip install py-spy`` in the venv and ptrace rights), and prints the
functions with the most samples, inclusive and self; with ``--strace`` it also counts the
worker's system calls (``strace -c -f``) over a second run of the workload. Files go to
``bench/results/profile/``.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import inference
from bench.client import Target, burst, request_json, stream_chat, timed_get
from bench.procs import BenchError, thread_cpu_seconds
from bench.run import REPO_ROOT, find_model, log
from bench.storebench import make_synthetic_store
from bench.targets import DAEMON_MODEL, Daemon, Workspace, package_model, start_daemon
from orchestrator.unixhttp import open_connection

WORKLOADS = ("stream", "concurrent", "ttft", "models", "cold")
SAMPLE_RATE = 100


def _workload(name: str, daemon: Daemon) -> Callable[[float], int]:
    """Return ``run(seconds) -> units`` (tokens streamed, or requests made)."""
    target = Target("B", "daemon", daemon.address, "/engines/v1/chat/completions", DAEMON_MODEL)

    def stream(seconds: float) -> int:
        tokens, deadline, seed = 0, time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            seed += 1
            tokens += stream_chat(
                target, prompt=inference.PROMPTS[1], max_tokens=256, seed=seed
            ).tokens
        return tokens

    def concurrent(seconds: float) -> int:
        tokens, deadline, seed = 0, time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            seed += 100
            results, _ = burst(
                target, clients=16, prompt=inference.PROMPTS[2], max_tokens=32, seed=seed
            )
            tokens += sum(result.tokens for result in results)
        return tokens

    def ttft(seconds: float) -> int:
        count, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            stream_chat(target, prompt=inference.PROMPTS[0], max_tokens=1, seed=1)
            count += 1
        return count

    def models(seconds: float) -> int:
        count, deadline = 0, time.monotonic() + seconds
        conn = open_connection(daemon.address, 10.0)
        try:
            while time.monotonic() < deadline:
                timed_get(conn, "/models")
                count += 1
        finally:
            conn.close()
        return count

    def cold(seconds: float) -> int:
        count, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            request_json(daemon.address, "POST", "/engines/unload", {"all": True})
            time.sleep(0.3)
            stream_chat(target, prompt=inference.PROMPTS[0], max_tokens=1, seed=1)
            count += 1
        return count

    workloads = {
        "stream": stream,
        "concurrent": concurrent,
        "ttft": ttft,
        "models": models,
        "cold": cold,
    }
    return workloads[name]


def _per_thread(pid: int | None) -> dict[str, float]:
    """Return ``{"<tid>/<name>": cpu seconds}`` from each thread's schedstat."""
    found: dict[str, float] = {}
    if pid is None:
        return found
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            cpu = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
        found[f"{tid}/{name}"] = cpu
    return found


def _user_system(pid: int | None) -> tuple[float, float]:
    """Return (user, system) CPU seconds of ``pid`` from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def summarize_collapsed(path: Path, top: int = 30) -> str:
    """Return the top inclusive and self frames of a py-spy ``raw`` (collapsed) file."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    lines = [f"{total} samples (non-idle threads)", "--- inclusive"]
    lines += [f"{n / total * 100:5.1f}% {frame[:140]}" for frame, n in inclusive.most_common(top)]
    lines.append("--- self")
    lines += [f"{n / total * 100:5.1f}% {frame[:140]}" for frame, n in own.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one profile; return 0 on success."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__.splitlines()[0]
    )
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=int, default=SAMPLE_RATE, help="py-spy samples per second")
    parser.add_argument(
        "--strace", action="store_true", help="also count system calls (second run)"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "profile")
    args = parser.parse_args(argv)
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.is_file():
        print("py-spy is missing: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    from orchestrator.engine import find_engine

    args.out.mkdir(parents=True, exist_ok=True)
    ws = Workspace(
        scratch=Path(tempfile.mkdtemp(prefix="dmrp-", dir="/tmp")),
        engine=find_engine(os.environ.get("LLAMA_SERVER_PATH", "")),
        model_gguf=find_model(),
    )
    try:
        models = ws.scratch / "b" / "models"
        if args.workload == "models":
            make_synthetic_store(models, 200)
        else:
            package_model(ws, models)
        daemon = start_daemon(ws, "b", models)
        run = _workload(args.workload, daemon)
        run(2.0)  # warm-up: loads the runner, fills caches
        worker = daemon.worker_pid()
        idle_before = _per_thread(worker)
        time.sleep(5.0)
        idle = _delta(idle_before, _per_thread(worker))
        print(
            f"idle worker: {sum(idle.values()) * 1e3 / 5.0:.2f} ms CPU per second; busiest threads "
            f"{sorted(((round(v * 1e3 / 5.0, 2), k) for k, v in idle.items()), reverse=True)[:4]}"
        )
        unit = "tokens" if args.workload in ("stream", "concurrent") else "requests"
        # Run 1, nothing attached: the worker's CPU per unit and which threads spend it.
        cpu_before = thread_cpu_seconds(worker)
        threads_before = _per_thread(worker)
        user_before, system_before = _user_system(worker)
        units = run(args.seconds)
        cpu = thread_cpu_seconds(worker) - cpu_before
        user_after, system_after = _user_system(worker)
        print(
            f"worker /proc/<pid>/stat over run 1: user {(user_after - user_before) * 1e3:.0f} ms, "
            f"system {(system_after - system_before) * 1e3:.0f} ms"
        )
        busy = _delta(threads_before, _per_thread(worker))
        print(
            f"{args.workload}: {units} {unit} in {args.seconds:.0f}s, "
            f"worker CPU {cpu * 1e3:.0f} ms "
            f"= {cpu * 1e6 / max(1, units):.1f} ms per 1000 {unit}"
        )
        print(
            "busiest threads (ms CPU, tid/name): "
            f"{sorted(((round(v * 1e3), k) for k, v in busy.items()), reverse=True)[:6]}"
        )
        # Run 2, py-spy attached: --gil samples only the thread holding the GIL (Python work,
        # not waits); --nonblocking does not pause the worker for each sample.
        raw = args.out / f"{args.workload}.txt"
        spy = ws.procs.spawn(
            [
                str(py_spy),
                "record",
                "--gil",
                "--nonblocking",
                "-p",
                str(worker),
                "-r",
                str(args.rate),
                "-d",
                str(int(args.seconds) + 2),
                "-f",
                "raw",
                "-o",
                str(raw),
            ],
            log_path=ws.scratch / "logs" / "py-spy.log",
        )
        time.sleep(1.0)
        units = run(args.seconds)
        spy.wait(timeout=args.seconds + 60)
        print(f"py-spy run: {units} {unit}")
        if raw.exists():
            print(summarize_collapsed(raw))
        if args.strace and shutil.which("strace"):
            trace = args.out / f"{args.workload}-strace.txt"
            tracer = ws.procs.spawn(
                ["strace", "-c", "-f", "-o", str(trace), "-p", str(worker)],
                log_path=ws.scratch / "logs" / "strace.log",
            )
            time.sleep(1.0)
            units = run(args.seconds)
            ws.procs.stop(tracer)
            print(
                f"strace run: {units} {unit}\n"
                + (trace.read_text() if trace.exists() else "no strace output")
            )
    except BenchError as ex:
        print(f"profile failed: {ex}", file=sys.stderr)
        return 1
    finally:
        ws.procs.stop_all()
        shutil.rmtree(ws.scratch, ignore_errors=True)
    log(f"profile files in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
