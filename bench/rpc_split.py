"""Tokens/s of one model run locally against the same model split over two RPC workers.

Usage (about a minute on 2 cores)::

    .venv/bin/python -m bench.rpc_split [--rounds 6] [--tokens 96] [--out bench/results/rpc]

Two ``rpc-server`` processes listen on free 127.0.0.1 ports (the one beside ``llama-server`` in
``$(bin/provision-engine)``, or ``LLAMA_SERVER_PATH``); two ``llama-server`` processes serve the
same GGUF (``DMR_TEST_MODEL``, else ``bin/provision-model``'s) with the same arguments, one with
``--rpc <worker1>,<worker2>``. Each round asks both, in alternating order, for the same prompt
with a fixed seed, temperature 0 and ``ignore_eos`` (so every answer has exactly ``--tokens``
tokens), and reads llama-server's own ``timings.predicted_per_second`` and
``prompt_per_second``. It prints the medians and the median of the per-round ratios
(split / local) and writes ``rpc_split.json``. Every process is stopped at the end (TERM, wait,
KILL).

On loopback the "network" costs only the RPC round trips (one per graph split, per token), and
the workers share this machine's cores with the runner: the figure is the protocol's overhead,
not what a second host's memory and compute would add.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.procs import BenchError, ProcessSet, free_port, machine_state, wait_http_ready

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
READY_TIMEOUT_SECONDS = 120.0
REQUEST_TIMEOUT_SECONDS = 300.0


def _engine_dir() -> Path:
    env = os.environ.get("LLAMA_SERVER_PATH")
    if env:
        return Path(env)
    import subprocess

    done = subprocess.run(
        [str(ROOT / "bin" / "provision-engine")], capture_output=True, text=True, check=True,
        timeout=3600,
    )  # fmt: skip
    return Path(done.stdout.strip().splitlines()[-1])


def _model() -> Path:
    env = os.environ.get("DMR_TEST_MODEL")
    if env:
        return Path(env)
    import subprocess

    done = subprocess.run(
        [str(ROOT / "bin" / "provision-model")], capture_output=True, text=True, check=True,
        timeout=600,
    )  # fmt: skip
    return Path(done.stdout.strip().splitlines()[-1])


def complete(port: int, *, tokens: int, seed: int) -> dict[str, Any]:
    """Ask ``/completion`` on 127.0.0.1:``port`` for ``tokens`` tokens; return its timings."""
    body = json.dumps({
        "prompt": PROMPT, "n_predict": tokens, "seed": seed, "temperature": 0,
        "ignore_eos": True, "cache_prompt": False,
    })  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_SECONDS)
    try:
        conn.request("POST", "/completion", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise BenchError(f"/completion on port {port} answered {response.status}: {data[:300]!r}")
    timings = json.loads(data)["timings"]
    if timings["predicted_n"] != tokens:
        raise BenchError(f"asked for {tokens} tokens, got {timings['predicted_n']}")
    return dict(timings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each worker")
    parser.add_argument(
        "--engine-threads", type=int, default=0,
        help="--threads of both llama-servers (0: the engine's default, all cores)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rpc")
    args = parser.parse_args(argv)

    engine_dir = _engine_dir()
    model = _model()
    rpc_server = engine_dir / "rpc-server"
    if not rpc_server.is_file():
        print(f"no rpc-server beside llama-server in {engine_dir}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    procs = ProcessSet()
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
    try:
        workers = []
        for index in range(2):
            port = free_port()
            proc = procs.spawn(
                [str(rpc_server), "-H", "127.0.0.1", "-p", str(port), "-t", str(args.threads)],
                log_path=args.out / f"rpc-{index}.log", env=env,
            )  # fmt: skip
            workers.append((proc, f"127.0.0.1:{port}"))
        time.sleep(0.5)
        base = [
            str(engine_dir / "llama-server"), "--model", str(model), "--host", "127.0.0.1",
            "-ngl", "999", "--ctx-size", "4096", "--cache-ram", "0", "--no-webui",
            "--parallel", "1",
        ]  # fmt: skip
        if args.engine_threads > 0:
            base += ["--threads", str(args.engine_threads)]
        subjects: dict[str, int] = {}
        for name, extra in (
            ("local", []),
            ("split", ["--rpc", ",".join(endpoint for _proc, endpoint in workers)]),
        ):
            port = free_port()
            log_path = args.out / f"llama-server-{name}.log"
            proc = procs.spawn([*base, "--port", str(port), *extra], log_path=log_path, env=env)
            wait_http_ready(
                proc, f"127.0.0.1:{port}", "/health", timeout=READY_TIMEOUT_SECONDS,
                log_path=log_path,
            )  # fmt: skip
            subjects[name] = port
        for port in subjects.values():  # warm-up, not counted
            complete(port, tokens=8, seed=0)

        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in subjects}
        order = list(subjects)
        for round_index in range(args.rounds):
            for name in order if round_index % 2 == 0 else list(reversed(order)):
                samples[name].append(
                    complete(subjects[name], tokens=args.tokens, seed=round_index + 1)
                )
        gen = {n: [s["predicted_per_second"] for s in samples[n]] for n in samples}
        prompt = {n: [s["prompt_per_second"] for s in samples[n]] for n in samples}
        ratios = [split / local for local, split in zip(gen["local"], gen["split"], strict=True)]
        result = {
            "rounds": args.rounds,
            "tokens": args.tokens,
            "worker_threads": args.threads,
            "engine_threads": args.engine_threads or "default",
            "generation_tok_s": {n: statistics.median(v) for n, v in gen.items()},
            "prompt_tok_s": {n: statistics.median(v) for n, v in prompt.items()},
            "paired_ratio_split_over_local": statistics.median(ratios),
            "samples": samples,
            "machine": machine_state(),
        }
        (args.out / "rpc_split.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"model {model.name}, {args.rounds} interleaved rounds of {args.tokens} tokens")
        for name in subjects:
            print(
                f"  {name:5s}  generation {result['generation_tok_s'][name]:7.1f} tok/s (p50)  "
                f"prompt {result['prompt_tok_s'][name]:7.1f} tok/s"
            )
        ratio = result["paired_ratio_split_over_local"]
        print(f"  split/local generation ratio (paired, p50): {ratio:.3f}")
        return 0
    finally:
        for note in procs.stop_all():
            print(note, file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
