"""Entry point: ``python -m bench.run [--quick] [--only 1,3,7] [--out bench/results]``.

Starts A (direct llama-server with the daemon's argv), B (``model-runner serve``) and C
(llama-server router mode) on the same GGUF file, runs sections 1-5 against all three in
interleaved rounds (with D, a bare Python relay in front of A, when section 9 runs), then
section 8 (embeddings, direct vs daemon), 10 (first token of a fresh daemon), 6 (API latency,
200-model store), 7 (pull from a loopback registry) and 11 (relay capacity against nginx, when
nginx and wrk are installed). Prints Markdown tables on stdout (progress goes to stderr), the
"Issue 18 targets" table last, and writes ``bench.json``, ``table.md`` and one PNG per section
into ``<out>/<quick|full>/``.

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
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import embeddings, fresh_daemon, inference, issue18, relay, storebench
from bench.charts import write_charts
from bench.client import Target, stream_chat
from bench.embeddings import EmbedSubject
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
    live_argv,
    package_model,
    spawn_direct,
    start_bare_relay,
    start_daemon,
    start_direct,
    start_router,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SECTIONS = range(1, 12)
# Sections whose windows need the A/B/C subjects (9 adds D to the windows of 1 and 4).
INFERENCE_SECTIONS = {1, 2, 3, 4, 5, 9}


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
    embed_rounds: int
    embed_requests: int
    fresh_repeats: int
    relay_seconds: int
    relay_levels: tuple[int, ...]
    relay_tokens: int


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
    embed_rounds=4,
    embed_requests=100,
    fresh_repeats=3,
    relay_seconds=3,
    relay_levels=(1, 16, 64, 256),
    relay_tokens=128,
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
    embed_rounds=10,
    embed_requests=100,
    fresh_repeats=5,
    relay_seconds=10,
    relay_levels=(1, 16, 64, 256),
    relay_tokens=128,
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


def describe_source(source: Path | None) -> dict[str, str]:
    """Return where the daemons' code comes from, with its commit when it is a git checkout."""
    where = source or REPO_ROOT
    try:
        done = subprocess.run(
            ["git", "-C", str(where), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        commit = done.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return {"path": str(where), "commit": commit, "default": str(source is None).lower()}


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_inference(
    ws: Workspace,
    settings: Settings,
    sections: set[int],
    models: Path,
    raw: dict[str, Any],
    meta: dict[str, Any],
) -> None:
    """Sections 1-5 against A, B and C, and D (the bare relay) when section 9 is asked for."""
    daemon = start_daemon(ws, "b", models)
    b_target = Target("B", "daemon", daemon.address, "/engines/v1/chat/completions", DAEMON_MODEL)
    # B first: A copies the argv its runner runs (flags sized from the daemon's memory plan).
    warm = stream_chat(b_target, prompt=inference.PROMPTS[0], max_tokens=16, seed=1)
    if not warm.ok:
        raise BenchError(f"warm-up request to B daemon failed: {warm.error}")
    built = direct_argv(ws, models, ws.scratch / "a.sock")
    meta["built_argv_check"] = inference.argv_matches(daemon.runner_pid(), built)
    argv = live_argv(daemon.runner_pid(), ws.scratch / "a.sock") or built
    meta["direct_argv"] = argv
    a_proc, a_address = start_direct(ws, argv)
    gguf = Path(argv[argv.index("--model") + 1])
    c_proc, c_address, c_model, c_argv = start_router(ws, gguf, argv)
    meta["router_argv"] = c_argv
    targets = {
        "A": Target("A", "direct", a_address, "/v1/chat/completions", DAEMON_MODEL),
        "B": b_target,
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
    started = [c_proc, a_proc, daemon.proc]
    if 9 in sections:
        # D relays to A's engine: its windows meter the relay alone, the engine is A's.
        d_proc, d_address = start_bare_relay(ws, a_address)
        started.insert(0, d_proc)
        meta["bare_relay_argv"] = d_proc.args
        target = Target("D", "bare relay", d_address, "/v1/chat/completions", DAEMON_MODEL)
        subjects.append(Subject(target, lambda: d_proc.pid, lambda: a_proc.pid, d_proc))
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
    if sections & {1, 2, 5, 9}:
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
    if sections & {4, 5, 9}:
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
    for proc in started:
        ws.procs.stop(proc)


def run_embeddings(
    ws: Workspace, settings: Settings, models: Path, raw: dict[str, Any], meta: dict[str, Any]
) -> None:
    """Section 8: embedding requests, llama-server in embedding mode (A) against the daemon."""
    daemon = start_daemon(ws, "embed", models)
    b_subject = EmbedSubject(
        "B", daemon.address, "/engines/v1/embeddings", DAEMON_MODEL, daemon.worker_pid
    )
    a_proc = None
    try:
        log("section 8: warming up (the daemon's first request starts its embedding runner)")
        embeddings.run_block(b_subject, 5)
        runner = daemon.runner_pid()
        ws.procs.adopt([runner] if runner else [])
        socket_path = ws.scratch / "e.sock"
        built = direct_argv(ws, models, socket_path, mode="embedding")
        # build_argv's argv next to the live runner's: does the harness's rebuild still match?
        check = inference.argv_matches(runner, built)
        argv = live_argv(runner, socket_path) or built
        meta["direct_embedding_argv"] = argv
        a_proc, a_address = start_direct(ws, argv, "direct-embed")
        a_subject = EmbedSubject("A", a_address, "/v1/embeddings", DAEMON_MODEL, lambda: None)
        embeddings.run_block(a_subject, 5)
        subjects = [a_subject, b_subject]
        log(
            f"section 8: {settings.embed_rounds} rounds x {settings.embed_requests} requests; "
            f"build_argv matches the runner: {check.get('identical_except_socket')} "
            "(A runs the runner's own argv either way)"
        )
        meta["load"]["8"] = machine_state()
        raw["embeddings"] = embeddings.embeddings(
            subjects, rounds=settings.embed_rounds, requests=settings.embed_requests, log=log
        )
        raw["embeddings"]["argv_check"] = check
    finally:
        if a_proc is not None:
            ws.procs.stop(a_proc)
        ws.procs.stop(daemon.proc)


def run_fresh_daemon(
    ws: Workspace, settings: Settings, models: Path, raw: dict[str, Any], meta: dict[str, Any]
) -> None:
    """Section 10: first token of a freshly started daemon against a bare spawn of A."""
    argv = direct_argv(ws, models, ws.scratch / "f.sock")

    def spawn(repeat: int, live: list[str]) -> tuple[Any, str]:
        socket_path = ws.scratch / f"fresh{repeat}.sock"
        cold_argv = list(live)
        cold_argv[cold_argv.index("--host") + 1] = str(socket_path)
        return spawn_direct(ws, cold_argv, f"fresh-a{repeat}"), str(socket_path)

    log(f"section 10: fresh daemon, {settings.fresh_repeats} repeats")
    meta["load"]["10"] = machine_state()
    template = Target("A", "direct", "", "/v1/chat/completions", DAEMON_MODEL)
    raw["fresh_daemon"] = fresh_daemon.fresh_daemon(
        ws,
        models=models,
        template=template,
        spawn_direct=spawn,
        argv=argv,
        repeats=settings.fresh_repeats,
        log=log,
    )


def run_relay(ws: Workspace, settings: Settings, raw: dict[str, Any], meta: dict[str, Any]) -> None:
    """Section 11: relay capacity (bench.relay) when nginx, wrk and cc are installed."""
    missing = relay.missing_tools()
    if missing:
        raw["relay"] = {"skipped": f"{issue18.RELAY_SKIPPED} ({', '.join(missing)} missing)"}
        log(f"section 11: {raw['relay']['skipped']}")
        return
    log(f"section 11: relay capacity at {settings.relay_levels} streams")
    meta["load"]["11"] = machine_state()
    engine_dir = relay.build_engine(relay.engine_cache())
    sub = Workspace(
        ws.scratch / "relay",
        engine_dir / "llama-server",
        ws.model_gguf,
        daemon_source=ws.daemon_source,
    )
    sub.scratch.mkdir(parents=True, exist_ok=True)
    try:
        rows = relay.measure(
            sub,
            list(settings.relay_levels),
            seconds=settings.relay_seconds,
            tokens=settings.relay_tokens,
        )
    finally:
        meta["relay_cleanup_notes"] = sub.procs.stop_all()
    raw["relay"] = {
        "rows": [asdict(row) for row in rows],
        "seconds": settings.relay_seconds,
        "tokens": settings.relay_tokens,
    }


def run_sections(
    ws: Workspace, settings: Settings, sections: set[int], raw: dict[str, Any], meta: dict[str, Any]
) -> None:
    """Run the requested sections: inference, embeddings, fresh daemon, store, pull, relay."""
    models = ws.scratch / "b" / "models"
    if sections & (INFERENCE_SECTIONS | {8, 10}):
        package_model(ws, models)
    if sections & INFERENCE_SECTIONS:
        run_inference(ws, settings, sections, models, raw, meta)
    if 8 in sections:
        run_embeddings(ws, settings, models, raw, meta)
    if 10 in sections:
        run_fresh_daemon(ws, settings, models, raw, meta)
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
    if 11 in sections:
        run_relay(ws, settings, raw, meta)


def parse_sections(text: str) -> set[int]:
    """Parse ``1,3,7`` into section numbers."""
    sections = {int(part) for part in text.split(",") if part.strip()}
    if not sections <= set(SECTIONS):
        raise argparse.ArgumentTypeError(f"sections are 1-{SECTIONS[-1]}, got {text!r}")
    return sections


def publish(raw: dict[str, Any], meta: dict[str, Any], out_dir: Path) -> None:
    """Summarize ``raw``; print the tables; write ``table.md``, ``bench.json`` and the charts."""
    try:
        summary = summarize(raw)
        issue18.summarize(raw, summary)
        text = "\n\n".join([render(summary, meta).rstrip("\n"), *issue18.render(summary)]) + "\n"
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
    parser.add_argument("--only", type=parse_sections, default=set(SECTIONS), help="e.g. 1,2,7")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder and logs")
    parser.add_argument(
        "--from-json",
        type=Path,
        help="measure nothing: redo the tables and charts of an earlier bench.json, in its folder",
    )
    parser.add_argument(
        "--daemon-source",
        type=Path,
        help="run the daemons from this checkout (python -m orchestrator with PYTHONPATH=DIR), "
        "e.g. a `git worktree add /tmp/before <commit>`, for a before/after comparison",
    )
    args = parser.parse_args(argv)
    if args.daemon_source is not None:
        args.daemon_source = args.daemon_source.resolve()
        if not (args.daemon_source / "orchestrator" / "__init__.py").is_file():
            parser.error(f"--daemon-source {args.daemon_source} holds no orchestrator package")
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
        daemon_source=args.daemon_source,
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
        "daemon_source": describe_source(args.daemon_source),
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
