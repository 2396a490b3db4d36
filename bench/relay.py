"""Relay capacity: aggregate streamed tokens/s through the daemon and through nginx, same engine.

``python -m bench.relay [--streams 1,16,64,256] [--seconds 10] [--tokens 128]``

The engine is ``bench/synthetic_engine.c`` (compiled here with ``cc``): it takes llama-server's
argv and answers every chat request with ``max_tokens`` SSE events of llama-server's shape,
written back to back, so what limits the figure is the relay, not the engine. Three paths, each
loaded by ``wrk`` (Debian's package; C, one connection per stream, keep-alive) with the same
POST for ``--seconds`` at each stream count, in interleaved order:

* **direct**: wrk to the synthetic engine on 127.0.0.1 (the ceiling of this machine);
* **nginx**: Debian's nginx (``worker_processes auto``, ``proxy_buffering off``, HTTP/1.1
  keep-alive upstream) relaying to a synthetic engine on a Unix socket, as the daemon does;
* **bare**: :mod:`bench.bare_relay` (the simplest Python relay: a thread per connection,
  ``recv``/``sendall``, a new engine connection per answer) in front of the same engine socket:
  what one Python process can relay at all on this machine, the yardstick for the daemon;
* **daemon**: ``model-runner serve`` whose ``LLAMA_SERVER_PATH`` holds the synthetic engine as
  ``llama-server``: the scheduler starts it as a runner for ai/smollm2 and the proxy relays.

Per row: tokens/s (completed answers x tokens / seconds), answers/s, non-2xx answers, and the
relay's CPU seconds per 1,000 tokens (nginx: master + workers; daemon: gunicorn master + worker;
from ``/proc/<pid>/stat``), then the daemon/nginx ratio. Everything listens on 127.0.0.1 or
Unix sockets; every process started is stopped at the end (TERM, wait, KILL).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.procs import BenchError, cpu_seconds, free_port, wait_http_ready
from bench.targets import DAEMON_MODEL, Workspace, package_model, start_bare_relay, start_daemon

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE = REPO_ROOT / "bench" / "synthetic_engine.c"
CHAT_PATHS = {"direct": "/v1/chat/completions", "nginx": "/v1/chat/completions",
              "bare": "/v1/chat/completions", "daemon": "/engines/v1/chat/completions"}  # fmt: skip


@dataclass
class Row:
    """One path at one stream count."""

    path: str
    streams: int
    tokens_per_second: float
    answers_per_second: float
    errors: int
    relay_cpu_ms_per_1k_tokens: float | None


def build_engine(cache: Path) -> Path:
    """Compile the synthetic engine once per source version; return its directory."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    target = cache / f"synthetic-engine-{digest}"
    binary = target / "llama-server"
    if not binary.is_file():
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cc", "-O2", "-o", str(binary), str(SOURCE)], check=True, timeout=120)
    return target


def nginx_config(base: Path, port: int, upstream_socket: Path) -> Path:
    """Write an nginx.conf relaying 127.0.0.1:port to the engine socket, unbuffered."""
    config = base / "nginx.conf"
    # As root nginx's workers would become "nobody", who cannot open the engine's socket.
    user = "user root;" if os.geteuid() == 0 else ""
    config.write_text(textwrap.dedent(f"""\
        {user}
        worker_processes auto;
        pid {base}/nginx.pid;
        error_log {base}/error.log warn;
        daemon off;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            client_body_temp_path {base}/body;
            proxy_temp_path {base}/proxy;
            fastcgi_temp_path {base}/fastcgi;
            uwsgi_temp_path {base}/uwsgi;
            scgi_temp_path {base}/scgi;
            upstream engine {{ server unix:{upstream_socket}; keepalive 256; }}
            server {{
                listen 127.0.0.1:{port};
                location / {{
                    proxy_pass http://engine;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_buffering off;
                }}
            }}
        }}
        """))
    return config


def wrk_script(base: Path, tokens: int) -> Path:
    body = json.dumps({"model": DAEMON_MODEL, "stream": True, "max_tokens": tokens,
                       "messages": [{"role": "user", "content": "Say hello."}]})  # fmt: skip
    script = base / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    return script


_REQUESTS = re.compile(r"(\d+) requests in ([\d.]+)(m?s)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def run_wrk(
    url: str, streams: int, seconds: int, script: Path, *, closes_after_answer: bool = False
) -> tuple[int, float, int]:
    """Return (answers, seconds, errors) of one wrk run.

    ``closes_after_answer``: the server closes every connection after its answer (the bare
    relay), which wrk counts as a read error each time; those are not errors then.
    """
    threads = min(2, streams)
    done = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{streams}", f"-d{seconds}s", "--timeout", "30s",
         "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 60, check=False,
    )  # fmt: skip
    match = _REQUESTS.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise BenchError(f"wrk failed on {url}: {done.stdout}{done.stderr}")
    answers, elapsed, unit = int(match.group(1)), float(match.group(2)), match.group(3)
    elapsed = elapsed / 1000 if unit == "ms" else elapsed
    errors = int(m.group(1)) if (m := _NON_2XX.search(done.stdout)) else 0
    if m := _SOCKET_ERRORS.search(done.stdout):
        connect, read, write, timeout = (int(value) for value in m.groups())
        errors += connect + write + timeout + (0 if closes_after_answer else read)
    return answers, elapsed, errors


def missing_tools() -> list[str]:
    """Return the tools this section needs that the machine lacks (wrk, nginx, cc)."""
    return [
        tool
        for tool in ("wrk", "nginx", "cc")
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()
    ]


def engine_cache() -> Path:
    """Return where the compiled synthetic engine is kept."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "model-runner"
    return cache / "bench"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,16,64,256")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--model", default="", help="GGUF for the daemon's store (DMR_TEST_MODEL)")
    args = parser.parse_args(argv)
    missing = missing_tools()
    if missing:
        needed = "apt-get install wrk nginx-light gcc"
        raise SystemExit(f"not installed: {', '.join(missing)} ({needed})")
    levels = [int(x) for x in args.streams.split(",")]
    gguf = Path(args.model or os.environ.get("DMR_TEST_MODEL", ""))
    if not gguf.is_file():
        raise SystemExit("set DMR_TEST_MODEL to the SmolLM2 GGUF (bin/provision-model)")
    engine_dir = build_engine(engine_cache())
    with tempfile.TemporaryDirectory(prefix="relay-", dir="/tmp") as scratch:
        ws = Workspace(Path(scratch), engine_dir / "llama-server", gguf)
        try:
            rows = measure(ws, levels, seconds=args.seconds, tokens=args.tokens)
        finally:
            for note in ws.procs.stop_all():
                print(f"note: {note}", file=sys.stderr)
    _print(rows)
    return 0


def measure(ws: Workspace, levels: list[int], *, seconds: int, tokens: int) -> list[Row]:
    """Load direct, nginx, the bare relay and the daemon with wrk at each stream count, in
    rotating order.

    ``ws.engine`` is the synthetic engine; every process started goes to ``ws.procs`` (the
    caller stops them).
    """
    engine = ws.engine
    direct_port, nginx_port = free_port(), free_port()
    direct = ws.procs.spawn([str(engine), "--host", "127.0.0.1", "--port", str(direct_port)],
                            log_path=ws.scratch / "direct.log")  # fmt: skip
    sock = ws.scratch / "engine.sock"
    # nginx's upstream; its readiness shows through nginx's /health below.
    ws.procs.spawn([str(engine), "--host", str(sock)], log_path=ws.scratch / "up.log")
    nginx_base = ws.scratch / "nginx"
    nginx_base.mkdir()
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    nginx = ws.procs.spawn(
        [nginx_bin, "-e", str(nginx_base / "error.log"),
         "-c", str(nginx_config(nginx_base, nginx_port, sock))],
        log_path=nginx_base / "nginx.log",
    )  # fmt: skip
    bare, bare_address = start_bare_relay(ws, str(sock))
    models = ws.scratch / "store" / "models"
    package_model(ws, models)
    daemon = start_daemon(ws, "daemon", models)
    for proc, address in ((direct, f"127.0.0.1:{direct_port}"), (nginx, f"127.0.0.1:{nginx_port}")):
        wait_http_ready(proc, address, "/health", timeout=30, log_path=ws.scratch / "direct.log")
    urls = {
        "direct": f"http://127.0.0.1:{direct_port}{CHAT_PATHS['direct']}",
        "nginx": f"http://127.0.0.1:{nginx_port}{CHAT_PATHS['nginx']}",
        "bare": f"http://{bare_address}{CHAT_PATHS['bare']}",
        "daemon": f"http://{daemon.address}{CHAT_PATHS['daemon']}",
    }
    script = wrk_script(ws.scratch, tokens)
    # The daemon's first request starts its runner: not part of any window.
    run_wrk(urls["daemon"], 1, 2, script)
    def relay_pids(name: str) -> list[int]:
        if name == "nginx":
            return [nginx.pid, *(child.pid for child in psutil.Process(nginx.pid).children())]
        if name == "daemon":
            return [daemon.proc.pid, *(p for p in [daemon.worker_pid()] if p)]
        if name == "bare":
            return [bare.pid]
        return []

    rows: list[Row] = []
    order = ["direct", "nginx", "bare", "daemon"]
    for index, streams in enumerate(levels):
        for name in order[index % len(order) :] + order[: index % len(order)]:
            pids = relay_pids(name)
            before = sum(cpu_seconds(pid) for pid in pids)
            answers, elapsed, errors = run_wrk(
                urls[name], streams, seconds, script, closes_after_answer=name == "bare"
            )
            used = sum(cpu_seconds(pid) for pid in pids) - before
            relayed = answers * tokens
            rows.append(Row(
                name, streams, relayed / elapsed, answers / elapsed, errors,
                used * 1e6 / relayed if pids and relayed else None,
            ))  # fmt: skip
            print(f"{name} x{streams}: {relayed / elapsed:,.0f} tokens/s", file=sys.stderr)
    return rows


def _print(rows: list[Row]) -> None:
    print("| streams | path | tokens/s | answers/s | errors | relay CPU ms / 1k tokens |")
    print("|---|---|---|---|---|---|")
    for row in sorted(rows, key=lambda r: (r.streams, r.path)):
        cpu_ms = row.relay_cpu_ms_per_1k_tokens
        cpu = "-" if cpu_ms is None else f"{cpu_ms:.1f}"
        print(f"| {row.streams} | {row.path} | {row.tokens_per_second:,.0f} | "
              f"{row.answers_per_second:,.1f} | {row.errors} | {cpu} |")  # fmt: skip
    print()
    print("| streams | daemon / nginx tokens/s | bare relay / nginx | nginx / direct |")
    print("|---|---|---|---|")
    by = {(r.path, r.streams): r for r in rows}
    for streams in sorted({r.streams for r in rows}):
        d, n, x = by[("daemon", streams)], by[("nginx", streams)], by[("direct", streams)]
        b = by[("bare", streams)]
        print(f"| {streams} | {d.tokens_per_second / n.tokens_per_second:.3f} | "
              f"{b.tokens_per_second / n.tokens_per_second:.3f} | "
              f"{n.tokens_per_second / x.tokens_per_second:.3f} |")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
