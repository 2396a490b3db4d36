"""Sections 8-11 and the "Issue 18 targets" table: summaries and Markdown.

Issue 18 asks for each overhead as one figure from one interleaved run: warm TTFT, small
embedding requests, the worker's CPU per request and per 1,000 streamed tokens (against a bare
Python relay measured in the same run), streamed tokens/s at 1 and 16 streams, the first token
of a fresh daemon, and relay capacity against nginx. :func:`summarize` adds the new sections
to the summary of :func:`bench.report.summarize`; :func:`render` returns their tables.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from bench.report import _fmt, _table, median, percentile

RELAY_SKIPPED = "skipped: apt-get install nginx-light wrk"


def _paired(values: Sequence[float | None], bases: Sequence[float | None], op: Callable) -> float:
    """Median over rounds of ``op(value, base)``, skipping rounds where either is missing."""
    pairs = [op(v, b) for v, b in zip(values, bases, strict=False) if v is not None and b]
    return statistics.median(pairs) if pairs else math.nan


def _per_1000(cpu_s: float, tokens: int) -> float:
    return cpu_s * 1e6 / tokens if tokens else math.nan


def _embeddings(raw: dict[str, Any]) -> dict[str, Any]:
    data = raw["embeddings"]
    out: dict[str, Any] = {}
    for key in ("A", "B"):
        samples = data[key]["request_s"]
        out[key] = {
            "mean_ms": statistics.fmean(samples) * 1e3 if samples else math.nan,
            "p50_ms": median(samples) * 1e3,
            "p90_ms": percentile(samples, 90) * 1e3,
            "n": len(samples),
        }
    a, b = data["A"], data["B"]
    out["B_minus_A_mean_ms"] = out["B"]["mean_ms"] - out["A"]["mean_ms"]
    out["B_minus_A_p50_ms"] = out["B"]["p50_ms"] - out["A"]["p50_ms"]
    # Paired by round: each round's B mean - the same round's A mean, then the median.
    out["paired_B_minus_A_mean_ms"] = 1e3 * _paired(
        b["round_mean_s"], a["round_mean_s"], lambda x, y: x - y
    )
    out["paired_B_over_A_mean_pct"] = 100 * _paired(
        b["round_mean_s"], a["round_mean_s"], lambda x, y: x / y - 1
    )
    out["paired_B_minus_A_p50_ms"] = 1e3 * _paired(
        b["round_p50_s"], a["round_p50_s"], lambda x, y: x - y
    )
    requests = b["requests"]
    out["worker_cpu_ms_per_request"] = b["proxy_thread_cpu_s"] * 1e3 / requests
    out["worker_process_cpu_ms_per_request"] = b["proxy_process_cpu_s"] * 1e3 / requests
    out["argv_check"] = data.get("argv_check", {})
    return out


def _bare_relay(raw: dict[str, Any]) -> dict[str, Any]:
    """Proxy CPU per 1,000 tokens over the windows of sections 1 and 4, process clocks alike."""
    single, conc = raw.get("single_stream", {}), raw.get("concurrency", {})
    out: dict[str, Any] = {}
    for key, name in (("B", "daemon_worker"), ("D", "bare_relay"), ("C", "router")):
        entry: dict[str, Any] = {}
        cpu, tokens = 0.0, 0
        if key in single:
            data = single[key]
            entry["1_stream"] = _per_1000(data["proxy_process_cpu_s"], data["tokens"])
            cpu, tokens = cpu + data["proxy_process_cpu_s"], tokens + data["tokens"]
        for level, data in conc.get(key, {}).items():
            entry[f"{level}_clients"] = _per_1000(data["proxy_process_cpu_s"], data["tokens"])
            cpu, tokens = cpu + data["proxy_process_cpu_s"], tokens + data["tokens"]
        entry["all"] = _per_1000(cpu, tokens)
        entry["tokens"] = tokens
        out[name] = entry
    bare = out["bare_relay"]["all"]
    out["ratio_daemon_to_bare"] = out["daemon_worker"]["all"] / bare if bare else math.nan
    return out


def _fresh(raw: dict[str, Any]) -> dict[str, Any]:
    data = raw["fresh_daemon"]
    out = {
        f"{name[:-2]}_p50_ms": median(data[name]) * 1e3
        for name in (
            "A_spawn_to_ready_s",
            "A_spawn_to_first_token_s",
            "F_spawn_to_version_s",
            "F_first_token_s",
            "F_spawn_to_first_token_s",
        )
    }
    out["F_minus_A_p50_ms"] = out["F_first_token_p50_ms"] - out["A_spawn_to_first_token_p50_ms"]
    out["paired_F_minus_A_ms"] = 1e3 * _paired(
        data["F_first_token_s"], data["A_spawn_to_first_token_s"], lambda x, y: x - y
    )
    out["n"] = len(data["F_first_token_s"])
    out["errors"] = data["errors"]
    return out


def _relay(raw: dict[str, Any]) -> dict[str, Any]:
    data = raw["relay"]
    if "skipped" in data:
        return {"skipped": data["skipped"]}
    by = {(row["path"], row["streams"]): row for row in data["rows"]}
    levels = sorted({row["streams"] for row in data["rows"]})
    table = {}
    for streams in levels:
        d, n, x = by[("daemon", streams)], by[("nginx", streams)], by[("direct", streams)]
        # Runs from before the bare relay joined section 11 have no "bare" rows.
        b = by.get(("bare", streams), {})
        nginx_tps = n["tokens_per_second"]
        table[str(streams)] = {
            "direct_tps": x["tokens_per_second"],
            "nginx_tps": nginx_tps,
            "daemon_tps": d["tokens_per_second"],
            "bare_tps": b.get("tokens_per_second", math.nan),
            "daemon_errors": d["errors"],
            "nginx_errors": n["errors"],
            "ratio_daemon_nginx": d["tokens_per_second"] / nginx_tps if nginx_tps else math.nan,
            "ratio_bare_nginx": b.get("tokens_per_second", math.nan) / nginx_tps
            if nginx_tps
            else math.nan,
            "daemon_cpu_ms_per_1k": d["relay_cpu_ms_per_1k_tokens"],
            "nginx_cpu_ms_per_1k": n["relay_cpu_ms_per_1k_tokens"],
            "bare_cpu_ms_per_1k": b.get("relay_cpu_ms_per_1k_tokens"),
        }
    return {"levels": table, "seconds": data["seconds"], "tokens": data["tokens"]}


def _ttft_paired(raw: dict[str, Any]) -> float:
    single = raw["single_stream"]
    return 1e3 * _paired(
        single["B"].get("round_ttft_p50_s", []),
        single["A"].get("round_ttft_p50_s", []),
        lambda x, y: x - y,
    )


def summarize(raw: dict[str, Any], out: dict[str, Any]) -> None:
    """Add sections 8-11 and ``issue18`` (the target rows) to ``out``."""
    if "single_stream" in raw and "2_ttft" in out:
        out["2_ttft"]["paired_B_minus_A_p50_ms"] = _ttft_paired(raw)
    if "embeddings" in raw:
        out["8_embeddings"] = _embeddings(raw)
    if "D" in raw.get("single_stream", {}) or "D" in raw.get("concurrency", {}):
        out["9_bare_relay"] = _bare_relay(raw)
    if "fresh_daemon" in raw:
        out["10_fresh_daemon"] = _fresh(raw)
    if "relay" in raw:
        out["11_relay"] = _relay(raw)
    out["issue18"] = targets(out)


def _others(ratios: dict[str, Any]) -> str:
    """The other relays' paired ratios over direct in the same rounds, for scale."""
    names = (("C", "router"), ("D", "bare Python relay"))
    return ", ".join(
        f"{name} {ratios[f'paired_ratio_{key}_A']:.3f}"
        for key, name in names
        if f"paired_ratio_{key}_A" in ratios
    )


def targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the issue's rows: what was measured, the target, and whether it is met."""
    rows: list[dict[str, Any]] = []

    def add(row: str, value: float, detail: str, goal: str, met: bool | None) -> None:
        ok = None if met is None else bool(met) and not math.isnan(value)
        rows.append({"row": row, "value": value, "detail": detail, "goal": goal, "met": ok})

    ttft = out.get("2_ttft", {})
    if "paired_B_minus_A_p50_ms" in ttft:
        value = ttft["paired_B_minus_A_p50_ms"]
        detail = (
            f"p50 A {_fmt(ttft['A']['median_ms'], 2)} ms, B {_fmt(ttft['B']['median_ms'], 2)} ms"
        )
        add("warm TTFT p50, daemon - direct (ms, paired)", value, detail, "<= +1", value <= 1)
    emb = out.get("8_embeddings")
    if emb:
        value = emb["paired_B_minus_A_mean_ms"]
        detail = (
            f"mean A {_fmt(emb['A']['mean_ms'], 2)} ms, B {_fmt(emb['B']['mean_ms'], 2)} ms, "
            f"{_fmt(emb['paired_B_over_A_mean_pct'], 1)}%; p50 A {_fmt(emb['A']['p50_ms'], 2)}, "
            f"B {_fmt(emb['B']['p50_ms'], 2)} ms"
        )
        add("embeddings per request, daemon - direct (ms, paired)", value, detail, "<= +1",
            value <= 1)  # fmt: skip
        value = emb["worker_cpu_ms_per_request"]
        detail = f"process clock {_fmt(emb['worker_process_cpu_ms_per_request'], 3)} ms"
        add("daemon worker CPU per embeddings request (ms)", value, detail, "<= 1", value <= 1)
    gen = out.get("1_generation")
    if gen:
        value = gen["paired_ratio_B_A"]
        add("streamed tokens/s daemon/direct, 1 stream (paired)", value, _others(gen),
            ">= 0.995", value >= 0.995)  # fmt: skip
    row16 = out.get("4_concurrency", {}).get("16")
    if row16:
        value = row16["paired_ratio_B_A"]
        add("streamed tokens/s daemon/direct, 16 streams (paired)", value, _others(row16),
            ">= 0.98", value >= 0.98)  # fmt: skip
    bare = out.get("9_bare_relay")
    if bare:
        value = bare["ratio_daemon_to_bare"]
        detail = (
            f"ms per 1,000 tokens: daemon worker {_fmt(bare['daemon_worker']['all'], 1)}, "
            f"bare relay {_fmt(bare['bare_relay']['all'], 1)}, "
            f"router {_fmt(bare['router']['all'], 1)}"
        )
        add("worker CPU per 1,000 streamed tokens, daemon / bare relay", value, detail, "<= 1",
            value <= 1)  # fmt: skip
    fresh = out.get("10_fresh_daemon")
    if fresh:
        value = fresh["F_minus_A_p50_ms"]
        detail = (
            f"fresh daemon request->1st token {_fmt(fresh['F_first_token_p50_ms'])} ms, "
            f"A spawn->1st token {_fmt(fresh['A_spawn_to_first_token_p50_ms'])} ms "
            f"(ready {_fmt(fresh['A_spawn_to_ready_p50_ms'])} ms); daemon start->/version "
            f"{_fmt(fresh['F_spawn_to_version_p50_ms'])} ms"
        )
        add("first token, fresh daemon - bare spawn (ms, p50)", value, detail, "<= 10",
            value <= 10)  # fmt: skip
    cold = out.get("3_cold_start")
    if cold:
        value = cold["B_overhead_vs_first_token_ms"]
        detail = (
            f"after unload {_fmt(cold['B_cold_first_token_median_ms'])} ms, A spawn->1st token "
            f"{_fmt(cold['A_spawn_to_first_token_median_ms'])} ms"
        )
        add("later cold start, daemon - bare spawn (ms, p50)", value, detail, "<= 10",
            value <= 10)  # fmt: skip
    relay = out.get("11_relay")
    if relay and "skipped" in relay:
        add("relay capacity daemon/nginx, 64 streams", math.nan, relay["skipped"], ">= 0.8", None)
    elif relay and "64" in relay["levels"]:
        level = relay["levels"]["64"]
        value = level["ratio_daemon_nginx"]
        detail = f"daemon {level['daemon_tps']:,.0f}, nginx {level['nginx_tps']:,.0f} tokens/s"
        if not math.isnan(level.get("bare_tps", math.nan)):
            detail += f"; bare Python relay {level['ratio_bare_nginx']:.3f} of nginx"
        add("relay capacity daemon/nginx, 64 streams", value, detail, ">= 0.8", value >= 0.8)
    return rows


def render(summary: dict[str, Any]) -> list[str]:
    """Return the Markdown parts of sections 8-11 and the issue table."""
    parts: list[str] = []
    emb = summary.get("8_embeddings")
    if emb:
        rows = [
            [label, _fmt(emb[k]["mean_ms"], 2), _fmt(emb[k]["p50_ms"], 2),
             _fmt(emb[k]["p90_ms"], 2), emb[k]["n"]]
            for k, label in (("A", "A direct (Unix socket)"), ("B", "B daemon (TCP)"))
        ]  # fmt: skip
        check = emb.get("argv_check", {})
        same = check.get("identical_except_socket", "not checked")
        parts.append(
            "**8. Embeddings**, small requests in a row on one kept-alive connection (ms per "
            "request)\n\n" + _table(["target", "mean", "p50", "p90", "n"], rows)
        )
        parts.append(
            f"B - A mean {_fmt(emb['B_minus_A_mean_ms'], 3)} ms (paired by round "
            f"{_fmt(emb['paired_B_minus_A_mean_ms'], 3)} ms, "
            f"{_fmt(emb['paired_B_over_A_mean_pct'], 1)}%), p50 "
            f"{_fmt(emb['B_minus_A_p50_ms'], 3)} ms; daemon worker CPU per request "
            f"{_fmt(emb['worker_cpu_ms_per_request'], 3)} ms (threads' schedstat), "
            f"{_fmt(emb['worker_process_cpu_ms_per_request'], 3)} ms (process clock). A runs "
            f"the daemon runner's argv; build_argv's rebuild matches it: {same}."
        )
    bare = summary.get("9_bare_relay")
    if bare:
        columns = [c for c in bare["daemon_worker"] if c not in ("tokens",)]
        rows = [
            [label] + [_fmt(bare[name].get(c, math.nan), 1) for c in columns]
            for name, label in (
                ("daemon_worker", "B daemon worker"),
                ("bare_relay", "D bare Python relay"),
                ("router", "C router (C++)"),
            )
        ]
        parts.append(
            "**9. Proxy CPU against a bare Python relay** (ms of process CPU per 1,000 "
            "streamed tokens, windows of sections 1 and 4)\n\n"
            + _table(["process", *[c.replace("_", " ") for c in columns]], rows)
        )
        parts.append(f"daemon / bare relay = {_fmt(bare['ratio_daemon_to_bare'], 3)}.")
    fresh = summary.get("10_fresh_daemon")
    if fresh:
        rows = [
            ["A spawn -> ready (bare llama-server)", _fmt(fresh["A_spawn_to_ready_p50_ms"])],
            ["A spawn -> first token", _fmt(fresh["A_spawn_to_first_token_p50_ms"])],
            ["F daemon start -> GET /version answers", _fmt(fresh["F_spawn_to_version_p50_ms"])],
            ["F first request -> first token", _fmt(fresh["F_first_token_p50_ms"])],
            ["F daemon start -> first token", _fmt(fresh["F_spawn_to_first_token_p50_ms"])],
        ]
        parts.append(
            f"**10. Fresh daemon** (ms p50, {fresh['n']} repeats)\n\n" + _table(["", "p50"], rows)
        )
        parts.append(
            f"F first token - A spawn->first token: {_fmt(fresh['F_minus_A_p50_ms'])} ms "
            f"(paired by repeat {_fmt(fresh['paired_F_minus_A_ms'])} ms)."
        )
    relay = summary.get("11_relay")
    if relay and "skipped" in relay:
        parts.append(f"**11. Relay capacity**: {relay['skipped']}")
    elif relay:
        rows = [
            [streams, f"{v['direct_tps']:,.0f}", f"{v['nginx_tps']:,.0f}",
             f"{v.get('bare_tps', math.nan):,.0f}", f"{v['daemon_tps']:,.0f}",
             _fmt(v["ratio_daemon_nginx"], 3), _fmt(v.get("ratio_bare_nginx", math.nan), 3),
             f"{v['nginx_errors']}/{v['daemon_errors']}",
             _fmt(v["nginx_cpu_ms_per_1k"] or math.nan, 1),
             _fmt(v.get("bare_cpu_ms_per_1k") or math.nan, 1),
             _fmt(v["daemon_cpu_ms_per_1k"] or math.nan, 1)]
            for streams, v in relay["levels"].items()
        ]  # fmt: skip
        parts.append(
            f"**11. Relay capacity**, synthetic engine, wrk {relay['seconds']} s per cell, "
            f"{relay['tokens']} tokens per answer (tokens/s)\n\n"
            + _table(
                [
                    "streams",
                    "direct",
                    "nginx",
                    "bare relay",
                    "daemon",
                    "daemon/nginx",
                    "bare/nginx",
                    "errors n/d",
                    "nginx CPU ms/1k",
                    "bare CPU ms/1k",
                    "daemon CPU ms/1k",
                ],
                rows,
            )  # fmt: skip
        )
    rows = [
        [
            t["row"],
            _fmt(t["value"], 3 if abs(t["value"]) < 2 else 1),
            t["goal"],
            "skipped" if t["met"] is None else "yes" if t["met"] else "NO",
            t["detail"],
        ]
        for t in summary.get("issue18", [])
    ]
    if rows:
        parts.append(
            "**Issue 18 targets**\n\n"
            + _table(["row", "measured", "target", "met", "detail"], rows)
        )
    return parts
