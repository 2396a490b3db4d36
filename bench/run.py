"""Entry point: ``python -m bench.run [--quick] [--only 1,3,7] [--out bench/results]``.

Starts A (direct llama-server with the daemon's argv), B (``model-runner serve``) and C
(llama-server router mode) on the same GGUF file, runs sections 1-5 against all three in
interleaved rounds, then sections 6 (API latency, 200-model store) and 7 (pull from a loopback
registry) against fresh daemons. Prints Markdown tables on stdout (progress goes to stderr) and
writes ``bench.json``, ``table.md`` and one PNG per section into ``<out>/<quick|full>/``.

Everything listens on 127.0.0.1 or Unix sockets. Every process started here is stopped in a
``finally`` (SIGTERM, bounded wait, SIGKILL), on errors and on Ctrl-C/SIGTERM too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import inference, storebench
from bench.charts import write_charts
from bench.client import Target, stream_chat
from bench.procs import (
    BenchError,
    cpu_seconds,
    engine_children,
    load_average,
    machine_state,
    peak_rss_bytes,
    rss_bytes,
)
from bench.report import render, summarize, write_json
from bench.targets import (
    DAEMON_MODEL,
    Subject,
    Workspace,
    direct_argv,
    engine_version,
    package_model,
    spawn_direct,
    start_daemon,
    start_direct,
    start_router,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Settings:
    """How much of everything to measure."""

    rounds: int
    gen_requests: int
    gen_max_tokens: int
    ttft_probes: int
    cold_repeats: int
    levels: tuple[int, ...]
    concurrency_rounds: int
    concurrency_max_tokens: int
    api_requests: int
    api_models: int
    pull_rounds: int


QUICK = Settings(
    rounds=4,
    gen_requests=3,
    gen_max_tokens=64,
    ttft_probes=6,
    cold_repeats=3,
    levels=(1, 4, 16, 64),
    concurrency_rounds=1,
    concurrency_max_tokens=16,
    api_requests=200,
    api_models=200,
    pull_rounds=2,
)
FULL = Settings(
    rounds=6,
    gen_requests=3,
    gen_max_tokens=256,
    ttft_probes=10,
    cold_repeats=5,
    levels=(1, 4, 16, 64),
    concurrency_rounds=3,
    concurrency_max_tokens=32,
    api_requests=1000,
    api_models=200,
    pull_rounds=5,
)


def log(message: str) -> None:
    """Print a progress line on stderr (stdout carries the tables only)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def find_model() -> Path:
    """Return the SmolLM2 GGUF: ``DMR_TEST_MODEL``, else the provisioning cache."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    for candidate in (
        os.environ.get("DMR_TEST_MODEL", ""),
        f"{cache_home}/model-runner/models/{MODEL_FILE}",
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise BenchError("the SmolLM2 model is not available; run bin/provision-model (make model)")


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_inference(
    ws: Workspace, settings: Settings, sections: set[int], raw: dict[str, Any], meta: dict[str, Any]
) -> None:
    """Sections 1-5 against A, B and C."""
    models = ws.scratch / "b" / "models"
    package_model(ws, models)
    daemon = start_daemon(ws, "b", models)
    argv = direct_argv(ws, models, ws.scratch / "a.sock")
    meta["direct_argv"] = argv
    a_proc, a_address = start_direct(ws, argv)
    gguf = Path(argv[argv.index("--model") + 1])
    c_proc, c_address, c_model, c_argv = start_router(ws, gguf, argv)
    meta["router_argv"] = c_argv
    targets = {
        "A": Target("A", "direct", a_address, "/v1/chat/completions", DAEMON_MODEL),
        "B": Target("B", "daemon", daemon.address, "/engines/v1/chat/completions", DAEMON_MODEL),
        "C": Target("C", "router", c_address, "/v1/chat/completions", c_model),
    }

    def router_child() -> int | None:
        children = engine_children(c_proc.pid)
        return children[0] if children else None

    subjects = [
        Subject(targets["A"], lambda: None, lambda: a_proc.pid, a_proc),
        Subject(targets["B"], daemon.worker_pid, daemon.runner_pid, daemon.proc),
        Subject(targets["C"], lambda: c_proc.pid, router_child, c_proc),
    ]
    log("warming up A, B, C (loads the daemon's runner and the router's child)")
    for subject in subjects:
        result = stream_chat(subject.target, prompt=inference.PROMPTS[0], max_tokens=16, seed=1)
        if not result.ok:
            raise BenchError(f"warm-up request to {subject.target.name} failed: {result.error}")
    ws.procs.adopt([pid for pid in (daemon.runner_pid(), router_child()) if pid])
    meta["argv_check"] = inference.argv_matches(daemon.runner_pid(), argv)
    worker = daemon.worker_pid()
    before = cpu_seconds(worker)
    time.sleep(2.0)
    meta["daemon_idle_cpu_ms_per_s"] = (cpu_seconds(worker) - before) * 1e3 / 2.0
    if sections & {1, 2, 5}:
        log(
            f"sections 1-2: {settings.rounds} rounds x {settings.gen_requests} x "
            f"{settings.gen_max_tokens} tokens, "
            f"{settings.ttft_probes} TTFT probes per round"
        )
        meta["load"]["1-2"] = machine_state()
        raw["single_stream"] = inference.single_stream(
            subjects,
            rounds=settings.rounds,
            gen_requests=settings.gen_requests,
            max_tokens=settings.gen_max_tokens,
            ttft_probes=settings.ttft_probes,
            log=log,
        )
    if sections & {4, 5}:
        log(
            f"section 4: {settings.levels} clients x {settings.concurrency_max_tokens} tokens, "
            f"{settings.concurrency_rounds} round(s)"
        )
        meta["load"]["4"] = machine_state()
        raw["concurrency"] = inference.concurrency(
            subjects,
            levels=settings.levels,
            rounds=settings.concurrency_rounds,
            max_tokens=settings.concurrency_max_tokens,
            log=log,
        )
    worker = daemon.worker_pid()
    raw["memory"] = {
        "daemon_worker_rss": rss_bytes(worker),
        "daemon_worker_peak_rss": peak_rss_bytes(worker),
        "daemon_master_rss": rss_bytes(daemon.proc.pid),
        "router_rss": rss_bytes(c_proc.pid),
        "router_peak_rss": peak_rss_bytes(c_proc.pid),
    }
    if 3 in sections:
        log(f"section 3: cold start, {settings.cold_repeats} repeats")
        meta["load"]["3"] = machine_state()

        def spawn_cold(repeat: int) -> tuple[Any, str]:
            socket_path = ws.scratch / f"cold{repeat}.sock"
            cold_argv = list(argv)
            cold_argv[cold_argv.index("--host") + 1] = str(socket_path)
            return spawn_direct(ws, cold_argv, f"cold{repeat}"), str(socket_path)

        raw["cold_start"] = inference.cold_start(
            targets=targets,
            spawn_direct=spawn_cold,
            stop_direct=ws.procs.stop,
            daemon_runner_pid=daemon.runner_pid,
            router_pid=c_proc.pid,
            repeats=settings.cold_repeats,
            log=log,
        )
        ws.procs.adopt([pid for pid in (daemon.runner_pid(), router_child()) if pid])
    for proc in (c_proc, a_proc, daemon.proc):
        ws.procs.stop(proc)


def run_sections(
    ws: Workspace, settings: Settings, sections: set[int], raw: dict[str, Any], meta: dict[str, Any]
) -> None:
    """Run the requested sections in order; inference first, then the store and the pull."""
    if sections & {1, 2, 3, 4, 5}:
        run_inference(ws, settings, sections, raw, meta)
    if 6 in sections:
        log(f"section 6: writing {settings.api_models} synthetic models")
        models = ws.scratch / "api" / "models"
        meta["synthetic_store_s"] = storebench.make_synthetic_store(models, settings.api_models)
        daemon = start_daemon(ws, "api", models)
        try:
            meta["load"]["6"] = machine_state()
            log(f"section 6: {settings.api_requests} GETs per endpoint")
            raw["api_latency"] = storebench.api_latency(daemon, requests=settings.api_requests)
        finally:
            ws.procs.stop(daemon.proc)
    if 7 in sections:
        log(f"section 7: pull, {settings.pull_rounds} rounds")
        meta["load"]["7"] = machine_state()
        raw["pull"] = storebench.pull(
            ws, registry_bin=shutil.which("docker-registry"), rounds=settings.pull_rounds, log=log
        )


def parse_sections(text: str) -> set[int]:
    """Parse ``1,3,7`` into section numbers."""
    sections = {int(part) for part in text.split(",") if part.strip()}
    if not sections <= set(range(1, 8)):
        raise argparse.ArgumentTypeError(f"sections are 1-7, got {text!r}")
    return sections


def publish(raw: dict[str, Any], meta: dict[str, Any], out_dir: Path) -> None:
    """Summarize ``raw``; print the tables; write ``table.md``, ``bench.json`` and the charts."""
    try:
        summary = summarize(raw)
        text = render(summary, meta)
    except (KeyError, TypeError, ValueError) as ex:
        # A run that stopped half-way leaves sections incomplete; keep the raw samples.
        summary, text = {}, f"no summary: the run stopped early ({ex!r}); see bench.json\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    subtitle = (
        f"{meta['mode']} run {meta['started']}, {meta['cpus']} CPUs, "
        f"load {meta['load_start'][0]:.2f}->{meta['load_end'][0]:.2f}"
    )
    meta["charts"] = write_charts(summary, out_dir, subtitle)
    if not meta["charts"] and importlib.util.find_spec("matplotlib") is None:
        log("matplotlib is not installed: no charts (make bench installs it into .venv)")
    (out_dir / "table.md").write_text(text)
    write_json(out_dir / "bench.json", {"meta": meta, "summary": summary, "raw": raw})
    print(text)
    log(
        f"wrote {out_dir}/bench.json, table.md and {len(meta['charts'])} charts "
        f"in {meta['duration_s']:.0f} s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0, or 1 when it could not complete."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="the < 3 minute version")
    parser.add_argument("--only", type=parse_sections, default=set(range(1, 8)), help="e.g. 1,2,7")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder and logs")
    parser.add_argument(
        "--from-json",
        type=Path,
        help="measure nothing: redo the tables and charts of an earlier bench.json, in its folder",
    )
    args = parser.parse_args(argv)
    if args.from_json is not None:
        document = json.loads(args.from_json.read_text())
        publish(document["raw"], document["meta"], args.from_json.parent)
        return 0
    settings = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    from orchestrator.engine import find_engine

    signal.signal(signal.SIGTERM, _on_sigterm)
    began = time.monotonic()
    ws = Workspace(
        scratch=Path(tempfile.mkdtemp(prefix="dmrb-", dir="/tmp")),
        engine=find_engine(os.environ.get("LLAMA_SERVER_PATH", "")),
        model_gguf=find_model(),
    )
    meta: dict[str, Any] = {
        "mode": mode,
        "started": datetime.now().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "engine": str(ws.engine),
        "engine_version": engine_version(ws.engine),
        "model": str(ws.model_gguf),
        "settings": asdict(settings),
        "sections": sorted(args.only),
        "load_start": load_average(),
        "cpu_pressure_start": machine_state()["cpu_pressure_some"],
        "load": {},
        "scratch": str(ws.scratch),
    }
    raw: dict[str, Any] = {}
    status = 0
    log(f"mode {mode}, scratch {ws.scratch}, load average {meta['load_start']}")
    try:
        run_sections(ws, settings, args.only, raw, meta)
    except (BenchError, OSError) as ex:
        log(f"benchmark stopped: {ex}")
        meta["failure"] = str(ex)
        status = 1
    except Exception as ex:  # noqa: BLE001 - report what was measured so far, then fail
        log(f"benchmark failed: {traceback.format_exc()}")
        meta["failure"] = repr(ex)
        status = 1
    except KeyboardInterrupt:
        log("interrupted; stopping every process")
        meta["failure"] = "interrupted"
        status = 130
    finally:
        meta["cleanup_notes"] = ws.procs.stop_all()
        if args.keep or status == 1:
            log(f"scratch kept in {ws.scratch}")
        else:
            shutil.rmtree(ws.scratch, ignore_errors=True)
    meta["load_end"] = load_average()
    meta["cpu_pressure_end"] = machine_state()["cpu_pressure_some"]
    meta["duration_s"] = time.monotonic() - began
    publish(raw, meta, args.out / mode)
    return status


if __name__ == "__main__":
    sys.exit(main())
