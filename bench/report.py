"""Turn raw samples into the summary, the tables (Markdown), the JSON file and the charts."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

KEYS = ("A", "B", "C")
LABELS = {"A": "A direct", "B": "B daemon", "C": "C router", "D": "D bare relay"}
COLORS = {"A": "#4c72b0", "B": "#dd8452", "C": "#55a868", "D": "#8172b3"}
# D (section 9's bare Python relay) joins sections 1 and 4 only when section 9 runs.
OPTIONAL_KEYS = ("D",)


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0-100) with linear interpolation; NaN when empty."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    """Return the median; NaN when empty."""
    return percentile(values, 50)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator and not math.isnan(denominator) else math.nan


def _per_1000(cpu_s: float, tokens: int) -> float:
    return cpu_s * 1e6 / tokens if tokens else math.nan


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Return medians, percentiles, differences, ratios and the target checks."""
    out: dict[str, Any] = {}
    single = raw.get("single_stream")
    if single:
        gen = {
            key: {
                "median_tps": median(single[key]["generation_tps"]),
                "p90_tps": percentile(single[key]["generation_tps"], 90),
                "n": len(single[key]["generation_tps"]),
                "errors": single[key]["error_count"],
            }
            for key in single
        }
        gen["ratio_B_A"] = _ratio(gen["B"]["median_tps"], gen["A"]["median_tps"])
        gen["ratio_C_A"] = _ratio(gen["C"]["median_tps"], gen["A"]["median_tps"])
        # Paired by round: each round's B (C, D) mean over the same round's A mean, then the
        # median over rounds; drift between rounds cancels out.
        for key in [k for k in ("B", "C", "D") if k in single]:
            pairs = zip(
                single[key]["round_mean_tps"], single["A"]["round_mean_tps"], strict=True
            )
            gen[f"paired_ratio_{key}_A"] = median([_ratio(x, a) for x, a in pairs if a and x])
        out["1_generation"] = gen
        ttft = {
            key: {
                "median_ms": median(single[key]["ttft_s"]) * 1e3,
                "p90_ms": percentile(single[key]["ttft_s"], 90) * 1e3,
                "n": len(single[key]["ttft_s"]),
            }
            for key in single
        }
        for key in ("B", "C"):
            ttft[f"{key}_minus_A_median_ms"] = ttft[key]["median_ms"] - ttft["A"]["median_ms"]
            ttft[f"{key}_minus_A_p90_ms"] = ttft[key]["p90_ms"] - ttft["A"]["p90_ms"]
        out["2_ttft"] = ttft
    cold = raw.get("cold_start")
    if cold:
        c: dict[str, Any] = {}
        for name in (
            "A_spawn_to_ready_s",
            "A_spawn_to_first_token_s",
            "A_first_request_ttft_s",
            "A_warm_ttft_s",
            "B_cold_first_token_s",
            "C_cold_first_token_s",
        ):
            base = name[:-2]
            c[f"{base}_median_ms"] = median(cold[name]) * 1e3
            c[f"{base}_p90_ms"] = percentile(cold[name], 90) * 1e3
        warm_a = c["A_warm_ttft_median_ms"]
        for key in ("B", "C"):
            # The formula: cold first token - A spawn-to-ready - A warm TTFT. The first
            # request on a fresh server also processes its (uncached) prompt, which a warm
            # probe does not; "vs_first_token" compares like with like: A's own first request.
            c[f"{key}_overhead_ms"] = (
                c[f"{key}_cold_first_token_median_ms"] - c["A_spawn_to_ready_median_ms"] - warm_a
            )
            c[f"{key}_overhead_vs_first_token_ms"] = (
                c[f"{key}_cold_first_token_median_ms"] - c["A_spawn_to_first_token_median_ms"]
            )
        c["errors"] = cold["errors"]
        out["3_cold_start"] = c
    conc = raw.get("concurrency")
    if conc:
        levels = list(next(iter(conc.values())).keys())
        table: dict[str, Any] = {}
        for level in levels:
            row: dict[str, Any] = {}
            for key in conc:
                entry = conc[key][level]
                row[key] = {
                    "aggregate_tps_median": median(entry["aggregate_tps"]),
                    "aggregate_tps_p90": percentile(entry["aggregate_tps"], 90),
                    "errors": entry["errors"],
                    "requests": entry["requests"],
                    "ttft_p99_ms": percentile(entry["ttft_s"], 99) * 1e3,
                    "ttft_median_ms": median(entry["ttft_s"]) * 1e3,
                }
            for other in [k for k in ("B", "C", "D") if k in conc]:
                pairs = zip(
                    conc[other][level]["aggregate_tps"],
                    conc["A"][level]["aggregate_tps"],
                    strict=True,
                )
                row[f"paired_ratio_{other}_A"] = median([_ratio(x, a) for x, a in pairs if a and x])
            row["ratio_B_A"] = _ratio(
                row["B"]["aggregate_tps_median"], row["A"]["aggregate_tps_median"]
            )
            row["ratio_C_A"] = _ratio(
                row["C"]["aggregate_tps_median"], row["A"]["aggregate_tps_median"]
            )
            table[level] = row
        out["4_concurrency"] = table
    out["5_proxy_cpu"] = _proxy_cpu(raw)
    api = raw.get("api_latency")
    if api and "samples_s" in api:
        out["6_api_latency"] = {
            path: {
                "p50_ms": median(samples) * 1e3,
                "p99_ms": percentile(samples, 99) * 1e3,
                "n": len(samples),
                "body_bytes": api["body_bytes"].get(path, 0),
            }
            for path, samples in api["samples_s"].items()
        }
        out["6_api_latency"]["models_in_store"] = api["models_listed"]
    pull = raw.get("pull")
    if pull and "daemon" in pull:
        daemon_rates = [item["mib_s"] for item in pull["daemon"] if item["ok"]]
        curl_rates = [item["curl_mib_s"] for item in pull["curl"] if item["ok"]]
        careful = [item["curl_sha256sum_mib_s"] for item in pull["curl"] if item["ok"]]
        out["7_pull"] = {
            "daemon_mib_s_median": median(daemon_rates),
            "daemon_mib_s_p90": percentile(daemon_rates, 90),
            "curl_mib_s_median": median(curl_rates),
            "curl_sha256sum_mib_s_median": median(careful),
            "ratio_daemon_to_curl_sha256sum": _ratio(median(daemon_rates), median(careful)),
            "ratio_daemon_to_curl": _ratio(median(daemon_rates), median(curl_rates)),
            "daemon_peak_rss_mib": max(
                (item["rss_peak_bytes"] for item in pull["daemon"]), default=0
            )
            / 2**20,
            "daemon_hwm_mib": max((item["hwm_bytes"] for item in pull["daemon"]), default=0)
            / 2**20,
            "daemon_idle_rss_mib": pull["daemon_rss_idle_bytes"] / 2**20,
            "python_sha256_mib_s": pull["python_sha256_mib_s"],
            "failed": [item for item in pull["daemon"] if not item["ok"]],
        }
    out["targets"] = _targets(out)
    return out


def _proxy_cpu(raw: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    single = raw.get("single_stream")
    conc = raw.get("concurrency")
    for key, name in (("B", "daemon_worker"), ("C", "router")):
        entry: dict[str, Any] = {}
        # The headline figure is the threads' schedstat time (ns); /proc/<pid>/stat's
        # utime+stime over the same windows (10 ms ticks) is kept next to it as "_stat".
        if single:
            data = single[key]
            entry["single_stream_ms_per_1000_tokens"] = _per_1000(
                data["proxy_thread_cpu_s"], data["tokens"]
            )
            entry["single_stream_ms_per_1000_tokens_stat"] = _per_1000(
                data["proxy_cpu_s"], data["tokens"]
            )
            entry["single_stream_tokens"] = data["tokens"]
        if conc:
            for level, data in conc[key].items():
                entry[f"c{level}_ms_per_1000_tokens"] = _per_1000(
                    data["proxy_thread_cpu_s"], data["tokens"]
                )
                entry[f"c{level}_ms_per_1000_tokens_stat"] = _per_1000(
                    data["proxy_cpu_s"], data["tokens"]
                )
                entry[f"c{level}_tokens"] = data["tokens"]
            cpu = sum(data["proxy_cpu_s"] for data in conc[key].values())
            tokens = sum(data["tokens"] for data in conc[key].values())
            entry["concurrent_all_ms_per_1000_tokens_stat"] = _per_1000(cpu, tokens)
        result[name] = entry
    if single:
        result["engine_ms_per_token"] = {
            key: single[key]["engine_cpu_s"] * 1e3 / single[key]["tokens"]
            if single[key]["tokens"]
            else math.nan
            for key in single
        }
    memory = raw.get("memory", {})
    result["memory_mib"] = {name: value / 2**20 for name, value in memory.items()}
    return result


def _targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    checks: list[tuple[str, float, str, bool]] = []

    def add(name: str, value: float, goal: str, met: bool) -> None:
        checks.append((name, value, goal, bool(met) and not math.isnan(value)))

    if "1_generation" in out:
        gen = out["1_generation"]
        b_a, c_a = gen["paired_ratio_B_A"], gen["paired_ratio_C_A"]
        add("B/A tokens/s, 1 stream (paired)", b_a, ">= 0.99", b_a >= 0.99)
        add("B/A - C/A tokens/s, 1 stream", b_a - c_a, ">= 0", b_a >= c_a)
    if "4_concurrency" in out and "16" in out["4_concurrency"]:
        row = out["4_concurrency"]["16"]
        b_a, c_a = row["paired_ratio_B_A"], row["paired_ratio_C_A"]
        add("B/A tokens/s, 16 streams (paired)", b_a, ">= 0.97", b_a >= 0.97)
        add("B/A - C/A tokens/s, 16 streams", b_a - c_a, ">= 0", b_a >= c_a)
    if "2_ttft" in out:
        ttft = out["2_ttft"]
        add(
            "warm TTFT B-A p50 (ms)",
            ttft["B_minus_A_median_ms"],
            "<= 2",
            ttft["B_minus_A_median_ms"] <= 2,
        )
        add(
            "warm TTFT B-A p90 (ms)",
            ttft["B_minus_A_p90_ms"],
            "<= 10",
            ttft["B_minus_A_p90_ms"] <= 10,
        )
    if "3_cold_start" in out:
        value = out["3_cold_start"]["B_overhead_ms"]
        add("cold start overhead (ms)", value, "<= 50", value <= 50)
        value = out["3_cold_start"]["B_overhead_vs_first_token_ms"]
        add("cold start vs A spawn->first token (ms)", value, "<= 50", value <= 50)
    proxy = out.get("5_proxy_cpu", {}).get("daemon_worker", {})
    if "single_stream_ms_per_1000_tokens" in proxy:
        value = proxy["single_stream_ms_per_1000_tokens"]
        add("proxy CPU ms/1000 tokens, 1 stream", value, "<= 30", value <= 30)
    if "c16_ms_per_1000_tokens" in proxy:
        value = proxy["c16_ms_per_1000_tokens"]
        add("proxy CPU ms/1000 tokens, 16 streams", value, "<= 30", value <= 30)
    if "7_pull" in out:
        pull = out["7_pull"]
        ratio = pull["ratio_daemon_to_curl_sha256sum"]
        add("pull vs curl+sha256sum", ratio, ">= 0.9", ratio >= 0.9)
        add(
            "daemon peak RSS in pull (MiB)",
            pull["daemon_peak_rss_mib"],
            "< 150",
            pull["daemon_peak_rss_mib"] < 150,
        )
    if "6_api_latency" in out:
        value = out["6_api_latency"]["/models"]["p50_ms"]
        add("GET /models p50 (ms), 200 models", value, "<= 5", value <= 5)
    return [
        {"target": name, "value": value, "goal": goal, "met": met}
        for name, value, goal, met in checks
    ]


# --- text ----------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(cell) for cell in header]] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def render(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    """Return every section as Markdown tables (stdout and ``table.md``)."""
    pressure_start = meta.get("cpu_pressure_start", {}).get("avg60", "n/a")
    pressure_end = meta.get("cpu_pressure_end", {}).get("avg60", "n/a")
    header = (
        f"Mode {meta['mode']}, {meta['started']}, {meta['cpus']} CPUs, engine "
        f"{meta['engine_version']}; load average at start {meta['load_start']}, at end "
        f"{meta.get('load_end')}; CPU pressure (some, avg60) {pressure_start}% -> "
        f"{pressure_end}%; {meta['duration_s']:.0f} s."
    )
    parts = [header]
    if "1_generation" in summary:
        gen, ttft = summary["1_generation"], summary["2_ttft"]
        rows = [
            [
                LABELS[k],
                _fmt(gen[k]["median_tps"]),
                _fmt(gen[k]["p90_tps"]),
                gen[k]["n"],
                _fmt(ttft[k]["median_ms"], 2),
                _fmt(ttft[k]["p90_ms"], 2),
                gen[k]["errors"],
            ]
            for k in (*KEYS, *OPTIONAL_KEYS)
            if k in gen
        ]
        parts.append(
            "**1-2. Single stream** (generation tokens/s; warm time to first token)\n\n"
            + _table(
                ["target", "tok/s p50", "tok/s p90", "n", "TTFT p50 ms", "TTFT p90 ms", "errors"],
                rows,
            )
        )
        parts.append(
            f"Tokens/s B/A {_fmt(gen['ratio_B_A'], 3)} "
            f"(paired by round {_fmt(gen['paired_ratio_B_A'], 3)}), "
            f"C/A {_fmt(gen['ratio_C_A'], 3)} (paired {_fmt(gen['paired_ratio_C_A'], 3)}); "
            f"TTFT B-A p50 {_fmt(ttft['B_minus_A_median_ms'], 2)} ms (paired by round "
            f"{_fmt(ttft.get('paired_B_minus_A_p50_ms', math.nan), 2)} ms), "
            f"p90 {_fmt(ttft['B_minus_A_p90_ms'], 2)} ms; "
            f"C-A p50 {_fmt(ttft['C_minus_A_median_ms'], 2)} ms, "
            f"p90 {_fmt(ttft['C_minus_A_p90_ms'], 2)} ms."
        )
    if "3_cold_start" in summary:
        c = summary["3_cold_start"]
        rows = [
            [
                "A spawn -> ready (bare llama-server)",
                _fmt(c["A_spawn_to_ready_median_ms"]),
                _fmt(c["A_spawn_to_ready_p90_ms"]),
            ],
            [
                "A spawn -> first token",
                _fmt(c["A_spawn_to_first_token_median_ms"]),
                _fmt(c["A_spawn_to_first_token_p90_ms"]),
            ],
            [
                "A warm TTFT (same server, later requests)",
                _fmt(c["A_warm_ttft_median_ms"]),
                _fmt(c["A_warm_ttft_p90_ms"]),
            ],
            [
                "B request on unloaded model -> first token",
                _fmt(c["B_cold_first_token_median_ms"]),
                _fmt(c["B_cold_first_token_p90_ms"]),
            ],
            [
                "C request on unloaded model -> first token",
                _fmt(c["C_cold_first_token_median_ms"]),
                _fmt(c["C_cold_first_token_p90_ms"]),
            ],
        ]
        parts.append("**3. Cold start** (ms)\n\n" + _table(["", "p50", "p90"], rows))
        parts.append(
            "Overhead, cold first token - A spawn-to-ready - A warm TTFT: "
            f"B {_fmt(c['B_overhead_ms'])} ms, C {_fmt(c['C_overhead_ms'])} ms. "
            "Cold first token - A spawn-to-first-token (same first request): "
            f"B {_fmt(c['B_overhead_vs_first_token_ms'])} ms, "
            f"C {_fmt(c['C_overhead_vs_first_token_ms'])} ms."
        )
    if "4_concurrency" in summary:
        rows = []
        first = next(iter(summary["4_concurrency"].values()), {})
        shown = [k for k in (*KEYS, *OPTIONAL_KEYS) if k in first]
        for level, row in summary["4_concurrency"].items():
            rows.append(
                [level]
                + [
                    f"{_fmt(row[k]['aggregate_tps_median'])} / "
                    f"{row[k]['errors']}/{row[k]['requests']} / "
                    f"{_fmt(row[k]['ttft_p99_ms'], 0)}"
                    for k in shown
                ]
                + [_fmt(row["paired_ratio_B_A"], 3), _fmt(row["paired_ratio_C_A"], 3)]
            )
        parts.append(
            "**4. Concurrent streams** (aggregate tok/s p50 / errors/requests / TTFT p99 ms; "
            "ratios paired by round)\n\n"
            + _table(["clients", *(LABELS[k] for k in shown), "B/A", "C/A"], rows)
        )
    proxy = summary.get("5_proxy_cpu", {})
    if proxy.get("daemon_worker"):
        rows = []
        for name, label in (
            ("daemon_worker", "B daemon worker (Python)"),
            ("router", "C router (C++)"),
        ):
            entry = proxy[name]
            rows.append(
                [label, _fmt(entry.get("single_stream_ms_per_1000_tokens", math.nan), 0)]
                + [
                    _fmt(entry.get(f"c{level}_ms_per_1000_tokens", math.nan), 0)
                    for level in summary.get("4_concurrency", {})
                ]
            )
        stat = proxy["daemon_worker"]
        parts.append(
            "**5. Proxy CPU** (ms of CPU per 1000 streamed tokens; threads' schedstat time)\n\n"
            + _table(
                ["process", "1 stream"]
                + [f"{level} clients" for level in summary.get("4_concurrency", {})],
                rows,
            )
        )
        engine = proxy.get("engine_ms_per_token", {})
        memory = proxy.get("memory_mib", {})
        parts.append(
            "Same windows from /proc/<worker>/stat utime+stime (10 ms ticks): "
            f"{_fmt(stat.get('single_stream_ms_per_1000_tokens_stat', math.nan), 0)} ms "
            "single stream, "
            f"{_fmt(stat.get('c16_ms_per_1000_tokens_stat', math.nan), 0)} ms at 16 clients. "
            "Engine CPU per generated token (single stream): "
            + ", ".join(f"{LABELS[k]} {_fmt(v)} ms" for k, v in engine.items())
            + ". RSS: "
            + ", ".join(f"{name} {_fmt(v)} MiB" for name, v in memory.items())
            + "."
        )
    if "6_api_latency" in summary:
        api = summary["6_api_latency"]
        rows = [
            [f"GET {path}", _fmt(v["p50_ms"], 2), _fmt(v["p99_ms"], 2), v["n"], v["body_bytes"]]
            for path, v in api.items()
            if isinstance(v, dict)
        ]
        parts.append(
            f"**6. Non-inference latency**, {api['models_in_store']} models in the store (ms)\n\n"
            + _table(["request", "p50", "p99", "n", "body bytes"], rows)
        )
    if "7_pull" in summary:
        p = summary["7_pull"]
        rows = [
            [
                "daemon pull (POST /models/create, verified)",
                _fmt(p["daemon_mib_s_median"], 0),
                _fmt(p["daemon_peak_rss_mib"], 0),
            ],
            ["curl (GGUF blob only, no check)", _fmt(p["curl_mib_s_median"], 0), "-"],
            ["curl + sha256sum", _fmt(p["curl_sha256sum_mib_s_median"], 0), "-"],
        ]
        parts.append(
            "**7. Pull from a loopback registry** (MiB/s p50, peak RSS MiB)\n\n"
            + _table(["", "MiB/s", "peak RSS"], rows)
        )
        parts.append(
            f"daemon / (curl + sha256sum) = {_fmt(p['ratio_daemon_to_curl_sha256sum'], 2)}; "
            f"daemon / curl = {_fmt(p['ratio_daemon_to_curl'], 2)}; "
            f"daemon worker RSS idle {_fmt(p['daemon_idle_rss_mib'], 0)} MiB."
        )
    rows = [
        [
            t["target"],
            _fmt(t["value"], 4 if abs(t["value"]) < 2 else 1)
            if isinstance(t["value"], float)
            else t["value"],
            t["goal"],
            "yes" if t["met"] else "NO",
        ]
        for t in summary.get("targets", [])
    ]
    if rows:
        parts.append("**Targets**\n\n" + _table(["target", "measured", "goal", "met"], rows))
    return "\n\n".join(parts) + "\n"


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` (NaN as null) to ``path``."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(document), indent=1) + "\n")
