"""llama.cpp RPC workers: what they have to offer, and where a runner's layers went.

A runner started with ``--rpc host:port,...`` treats each ``rpc-server`` as one more device and
spreads its offloaded layers over them (in proportion to their free memory), keeping only the
input embeddings and its host buffers local. Three facts about this engine build shape the code:

* ``llama-server --rpc <list> --list-devices`` connects to each worker and prints
  ``RPC0: 127.0.0.1:50052 (24105 MiB, 24105 MiB free)`` per device; ``--rpc`` must come first
  (``--list-devices`` prints and exits as soon as it is parsed). A worker that refuses the
  connection makes it abort (SIGABRT, ``Failed to connect to <endpoint>``), so each worker is
  asked by its own process, in parallel, each under :data:`PROBE_TIMEOUT_SECONDS`.
* ``rpc-server`` serves **one client at a time**: a second client's connection is accepted by
  the kernel and then waits. A worker that one of our runners holds is therefore never probed
  (its last reading is used, and admission stops the holder first, see ``gate.py``); a worker
  held by someone else does not answer before the deadline and is reported so.
* A worker that dies under a runner makes it abort mid-request (``Remote RPC server crashed``):
  the request's stream ends with an error and the next start finds the worker unreachable.

At ``--log-verbosity 4`` the runner's log says what each device holds
(``load_tensors: RPC0[127.0.0.1:50052] model buffer size = 33.82 MiB``, the KV and compute
buffers likewise); :func:`parse_placement` reads those lines for ``/engines/ps``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from orchestrator.errors import ServiceUnavailableError
from orchestrator.memory.sizes import MiB, Reserve, format_bytes

PROBE_TIMEOUT_SECONDS = 5.0
"""Longest one worker's ``--list-devices`` may take (connect, handshake, memory query)."""

NO_BACKTRACE_ENV = {"GGML_NO_BACKTRACE": "1"}
"""Environment added for processes that talk to workers: a lost worker aborts llama-server, and
ggml's abort handler would otherwise attach gdb for a backtrace (a second, slow process)."""

_DEVICE_LINE = re.compile(
    r"^\s*RPC\d+\s*:\s*(?P<endpoint>\S+)\s+\((?P<total>\d+) MiB, (?P<free>\d+) MiB free\)"
)


class RpcWorkerUnreachableError(ServiceUnavailableError):
    """A runner's RPC worker did not answer, so its runner is not started (503).

    ``details`` names each worker and why: refused, timed out, not an rpc-server.
    """


@dataclasses.dataclass(frozen=True)
class RpcDevice:
    """One RPC device as ``--list-devices`` reports it.

    Attributes:
        endpoint: ``host:port`` of the worker.
        total_bytes: Its memory (a CPU worker reports its host's RAM).
        free_bytes: What is free there now.
    """

    endpoint: str
    total_bytes: int
    free_bytes: int


def parse_list_devices(text: str) -> list[RpcDevice]:
    """Return the RPC devices in ``llama-server --list-devices`` output (other lines ignored)."""
    devices = []
    for line in text.splitlines():
        match = _DEVICE_LINE.match(line)
        if match:
            devices.append(
                RpcDevice(
                    endpoint=match["endpoint"],
                    total_bytes=int(match["total"]) * MiB,
                    free_bytes=int(match["free"]) * MiB,
                )
            )
    return devices


@dataclasses.dataclass(frozen=True)
class WorkerReading:
    """What the daemon knows about one worker when a runner is planned.

    Attributes:
        endpoint: ``host:port``.
        device: Its memory, ``None`` when it did not answer.
        error: Why it did not answer (``""`` when it did).
        held_by: The runner of ours connected to it (its reading is then the last one taken
            before that runner loaded), ``""`` when none.
    """

    endpoint: str
    device: RpcDevice | None
    error: str = ""
    held_by: str = ""

    @property
    def reachable(self) -> bool:
        """Return whether the worker answered (now, or before our runner took it)."""
        return self.device is not None


@dataclasses.dataclass(frozen=True)
class RpcWorkers:
    """The workers of one planned runner.

    Attributes:
        readings: One per worker, in the order given.
        reserve: Kept free on each worker (the daemon's ``memory_reserve`` rule, applied to
            the worker's own total).
    """

    readings: tuple[WorkerReading, ...]
    reserve: Reserve

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Return every worker's ``host:port``."""
        return tuple(reading.endpoint for reading in self.readings)

    @property
    def unreachable(self) -> tuple[WorkerReading, ...]:
        """Return the workers that did not answer."""
        return tuple(reading for reading in self.readings if not reading.reachable)

    @property
    def free_bytes(self) -> int:
        """Return the memory runners may use on the reachable workers, reserves kept."""
        total = 0
        for reading in self.readings:
            if reading.device is not None:
                reserve = self.reserve.resolve(reading.device.total_bytes)
                total += max(reading.device.free_bytes - reserve, 0)
        return total

    def error(self, model: str) -> RpcWorkerUnreachableError:
        """Return the 503 that names the workers that did not answer."""
        dead = self.unreachable
        names = "; ".join(f"{reading.endpoint}: {reading.error}" for reading in dead)
        return RpcWorkerUnreachableError(
            f"model {model!r} runs over llama.cpp RPC workers, and "
            f"{'this one' if len(dead) == 1 else 'these'} did not answer: {names}. Start "
            f"rpc-server there (systemctl start docker-model-rpc-server), or remove it from "
            f"DMR_RPC_SERVERS or the model's --rpc runtime flag",
            details={
                "rpc_workers": [
                    {"endpoint": reading.endpoint, "error": reading.error} for reading in dead
                ]
            },
        )

    def to_json(self) -> list[dict[str, object]]:
        """Return the readings as ``/engines/ps`` shows them."""
        shown: list[dict[str, object]] = []
        for reading in self.readings:
            entry: dict[str, object] = {
                "endpoint": reading.endpoint,
                "reachable": reading.reachable,
            }
            if reading.device is not None:
                entry["total_bytes"] = reading.device.total_bytes
                entry["free_bytes"] = reading.device.free_bytes
            if reading.error:
                entry["error"] = reading.error
            if reading.held_by:
                entry["held_by"] = reading.held_by
            shown.append(entry)
        return shown


Runner = Callable[[Sequence[str], float], "subprocess.CompletedProcess[bytes]"]


def _run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    # subprocess.run kills the child and reaps it when the timeout passes: bounded either way.
    return subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **NO_BACKTRACE_ENV},
    )


def _failure(endpoint: str, done: subprocess.CompletedProcess[bytes]) -> str:
    text = (done.stdout + done.stderr).decode("utf-8", "replace")
    if "Failed to connect" in text:
        return "connection failed (nothing listens there, or a firewall drops it)"
    if "handshake failed" in text:
        return "it answered, but not as an rpc-server of this llama.cpp version (handshake failed)"
    if "RPC not supported" in text:
        return "this llama-server build has no RPC support (GGML_RPC=ON is needed)"
    last = text.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
    return f"llama-server --list-devices failed: {last[0][:200]}"


class RpcProbe:
    """Asks llama-server what each RPC worker offers.

    Args:
        engine_path: The llama-server executable (the runners' own, so versions match).
        timeout: Seconds each worker has to answer.
        run: Runs one probe command (tests inject it); default :func:`subprocess.run`.
        clock: Monotonic clock, for the age of remembered readings.
    """

    def __init__(
        self,
        engine_path: Path,
        *,
        timeout: float = PROBE_TIMEOUT_SECONDS,
        run: Runner = _run,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine_path = Path(engine_path)
        self._timeout = timeout
        self._run = run
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, RpcDevice] = {}
        self._latest: dict[str, WorkerReading] = {}

    def latest(self) -> list[WorkerReading]:
        """Return the latest reading of every worker asked so far (for ``/engines/status``)."""
        with self._lock:
            return list(self._latest.values())

    def _probe_one(self, endpoint: str) -> WorkerReading:
        reading = self._ask(endpoint)
        with self._lock:
            self._latest[endpoint] = reading
        return reading

    def _ask(self, endpoint: str) -> WorkerReading:
        argv = [str(self._engine_path), "--rpc", endpoint, "--list-devices"]
        try:
            done = self._run(argv, self._timeout)
        except subprocess.TimeoutExpired:
            return WorkerReading(
                endpoint,
                None,
                error=f"no answer within {self._timeout:g}s (rpc-server serves one client at a "
                f"time: another llama-server may be connected to it, or the host is down)",
            )
        except OSError as ex:
            return WorkerReading(endpoint, None, error=f"cannot run llama-server: {ex}")
        devices = parse_list_devices(done.stdout.decode("utf-8", "replace"))
        if done.returncode != 0 or not devices:
            return WorkerReading(endpoint, None, error=_failure(endpoint, done))
        # One worker may offer several devices (rpc-server -d CUDA0,CUDA1): pool them.
        device = RpcDevice(
            endpoint,
            sum(d.total_bytes for d in devices),
            sum(d.free_bytes for d in devices),
        )
        with self._lock:
            self._last[endpoint] = device
        return WorkerReading(endpoint, device)

    def read(
        self, endpoints: Sequence[str], *, held: Mapping[str, str], reserve: Reserve
    ) -> RpcWorkers:
        """Return the readings of ``endpoints``; those in ``held`` are not asked.

        Args:
            endpoints: ``host:port`` of each worker.
            held: Workers one of our runners is connected to, with that runner's label.
            reserve: Kept free on each worker.
        """
        readings: dict[str, WorkerReading] = {}
        asked = [e for e in endpoints if e not in held]
        for endpoint in endpoints:
            if endpoint in held:
                with self._lock:
                    last = self._last.get(endpoint)
                readings[endpoint] = WorkerReading(
                    endpoint,
                    last,
                    error="" if last else f"held by {held[endpoint]}, never measured",
                    held_by=held[endpoint],
                )
        if asked:
            with concurrent.futures.ThreadPoolExecutor(
                max_workers=len(asked), thread_name_prefix="rpc-probe"
            ) as pool:
                for reading in pool.map(self._probe_one, asked):
                    readings[reading.endpoint] = reading
        return RpcWorkers(tuple(readings[e] for e in endpoints), reserve)


# --- placement: what the runner's log says each device holds --------------------------------

_BUFFER_LINE = re.compile(
    r"(?P<device>[A-Za-z][\w]*(?:\[(?P<endpoint>[^\]]+)\])?)\s+"
    r"(?P<kind>model|KV|compute) buffer size\s*=\s*(?P<mib>[\d.]+) MiB"
)
_KV_TOTAL = re.compile(
    r"llama_kv_cache: size =\s*(?P<mib>[\d.]+) MiB \(\s*\d+ cells,\s*(?P<layers>\d+) layers"
)
_OFFLOADED = re.compile(r"offloaded (?P<done>\d+)/(?P<all>\d+) layers to GPU")


@dataclasses.dataclass(frozen=True)
class DevicePlacement:
    """What one device holds of a runner, from the runner's load log.

    Attributes:
        device: ``host:port`` for an RPC worker, ``CPU`` for this host (``CUDA0`` ...).
        model_bytes: Weights.
        kv_bytes: KV cache.
        compute_bytes: Compute buffers.
        layers: Repeating layers whose KV cache is there (a layer's KV follows its weights).
    """

    device: str
    model_bytes: int = 0
    kv_bytes: int = 0
    compute_bytes: int = 0
    layers: int = 0

    def to_json(self) -> dict[str, object]:
        """Return it as ``/engines/ps`` shows it."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a runner's model went.

    Attributes:
        devices: One entry per device, this host's first.
        offloaded_layers: Layers off this host's CPU (``offloaded N/M layers``: N).
        total_layers: M of the same line.
    """

    devices: tuple[DevicePlacement, ...]
    offloaded_layers: int
    total_layers: int

    def describe(self) -> str:
        """Return one line such as ``CPU 28.7 MiB; 127.0.0.1:50052 16 layers 33.8 MiB``."""
        parts = []
        for device in self.devices:
            layers = f" {device.layers} layers" if device.layers else ""
            parts.append(f"{device.device}{layers} {format_bytes(device.model_bytes)}")
        return "; ".join(parts)


def _device_name(token: str, endpoint: str | None) -> str:
    """``RPC0[h:p]`` -> ``h:p``; host buffers (``CPU_Mapped``, ``CUDA_Host``) -> ``CPU``."""
    if endpoint:
        return endpoint
    if token.startswith("CPU") or token.endswith("_Host"):
        return "CPU"
    return token


def parse_placement(log_text: str) -> Placement | None:
    """Return the placement the load log of a runner reports, ``None`` without buffer lines.

    Only the last load in the text counts (a log file holds every run of the model): the buffers
    after the last ``offloaded N/M layers`` line.
    """
    start = log_text.rfind("load_tensors: offloaded")
    if start < 0:
        return None
    text = log_text[start:]
    offloaded = _OFFLOADED.search(text)
    sizes: dict[str, dict[str, float]] = {}
    for match in _BUFFER_LINE.finditer(text):
        device = _device_name(match["device"], match["endpoint"])
        kind = match["kind"]
        slot = sizes.setdefault(device, {"model": 0.0, "KV": 0.0, "compute": 0.0})
        slot[kind] += float(match["mib"])
    if not sizes:
        return None
    kv_total = _KV_TOTAL.search(text)
    total_layers_kv = int(kv_total["layers"]) if kv_total else 0
    kv_mib = float(kv_total["mib"]) if kv_total else 0.0
    devices = []
    for name in sorted(sizes, key=lambda d: (d != "CPU", d)):
        slot = sizes[name]
        layers = round(slot["KV"] / kv_mib * total_layers_kv) if kv_mib > 0 else 0
        devices.append(
            DevicePlacement(
                device=name,
                model_bytes=int(slot["model"] * MiB),
                kv_bytes=int(slot["KV"] * MiB),
                compute_bytes=int(slot["compute"] * MiB),
                layers=layers,
            )
        )
    return Placement(
        devices=tuple(devices),
        offloaded_layers=int(offloaded["done"]) if offloaded else 0,
        total_layers=int(offloaded["all"]) if offloaded else 0,
    )


def read_placement(log_path: Path, *, max_bytes: int = 4 * MiB) -> Placement | None:
    """Return :func:`parse_placement` of the end of ``log_path`` (``None`` when unreadable)."""
    try:
        with open(log_path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(size - max_bytes, 0))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    return parse_placement(text)


def describe_workers(configured: Sequence[str], readings: Sequence[WorkerReading]) -> str:
    """Return ``RPC workers: h:p 23.5 GiB free, h2:p unreachable (why)`` for a status line.

    Workers of ``configured`` (``DMR_RPC_SERVERS``) come first, then any other worker a model's
    ``--rpc`` named; ``""`` when there are none. Readings are the latest taken when a runner
    was planned: a status request never connects to a worker itself.
    """
    by_endpoint = {reading.endpoint: reading for reading in readings}
    order = [*configured, *(e for e in by_endpoint if e not in configured)]
    if not order:
        return ""
    parts = []
    for endpoint in order:
        reading = by_endpoint.get(endpoint)
        if reading is None:
            parts.append(f"{endpoint} not asked yet")
        elif reading.device is None:
            parts.append(f"{endpoint} unreachable ({reading.error})")
        else:
            parts.append(f"{endpoint} {format_bytes(reading.device.free_bytes)} free")
    return "RPC workers: " + ", ".join(parts)
