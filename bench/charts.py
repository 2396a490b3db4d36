"""One PNG chart per section (matplotlib, Agg backend); skipped when matplotlib is missing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench import issue18_charts
from bench.report import COLORS, KEYS, LABELS


def _bars(
    ax: Any, names: list[str], values: list[float], errors: list[float] | None, colors: list[str]
) -> None:
    clean = [0.0 if math.isnan(v) else v for v in values]
    yerr = None
    if errors is not None:
        yerr = [
            [0.0] * len(clean),
            [
                max(0.0, (0.0 if math.isnan(e) else e) - v)
                for e, v in zip(errors, clean, strict=True)
            ],
        ]
    bars = ax.bar(names, clean, color=colors, yerr=yerr, capsize=4)
    for bar, value in zip(bars, values, strict=True):
        # Inside the bar, below its top: the p90 whisker starts at the top.
        label = "n/a" if math.isnan(value) else f"{value:.1f}"
        ax.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            xytext=(0, -4),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize=8,
            color="white",
        )


def write_charts(summary: dict[str, Any], out_dir: Path, subtitle: str) -> list[str]:
    """Write the charts into ``out_dir``; return their file names (empty without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written: list[str] = []

    def save(fig: Any, name: str, title: str) -> None:
        fig.suptitle(f"{title}\n{subtitle}", fontsize=10)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(name)

    colors = [COLORS[k] for k in KEYS]
    names = [LABELS[k] for k in KEYS]
    if "1_generation" in summary:
        gen = summary["1_generation"]
        fig, ax = plt.subplots(figsize=(6, 4))
        _bars(
            ax,
            names,
            [gen[k]["median_tps"] for k in KEYS],
            [gen[k]["p90_tps"] for k in KEYS],
            colors,
        )
        ax.set_ylabel("generation tokens/s (median, bar to p90)")
        save(
            fig,
            "1-generation.png",
            f"1. Single stream, paired by round: B/A {gen['paired_ratio_B_A']:.3f}, "
            f"C/A {gen['paired_ratio_C_A']:.3f}",
        )
        ttft = summary["2_ttft"]
        fig, ax = plt.subplots(figsize=(6, 4))
        _bars(
            ax,
            names,
            [ttft[k]["median_ms"] for k in KEYS],
            [ttft[k]["p90_ms"] for k in KEYS],
            colors,
        )
        ax.set_ylabel("warm time to first token, ms (median, bar to p90)")
        save(
            fig,
            "2-ttft.png",
            f"2. Warm TTFT: B-A {ttft['B_minus_A_median_ms']:.2f} ms, "
            f"C-A {ttft['C_minus_A_median_ms']:.2f} ms",
        )
    if "3_cold_start" in summary:
        c = summary["3_cold_start"]
        fig, ax = plt.subplots(figsize=(7, 4))
        _bars(
            ax,
            ["A spawn->ready", "A spawn->1st token", "B cold 1st token", "C cold 1st token"],
            [
                c["A_spawn_to_ready_median_ms"],
                c["A_spawn_to_first_token_median_ms"],
                c["B_cold_first_token_median_ms"],
                c["C_cold_first_token_median_ms"],
            ],
            [
                c["A_spawn_to_ready_p90_ms"],
                c["A_spawn_to_first_token_p90_ms"],
                c["B_cold_first_token_p90_ms"],
                c["C_cold_first_token_p90_ms"],
            ],
            [COLORS["A"], COLORS["A"], COLORS["B"], COLORS["C"]],
        )
        ax.set_ylabel("ms (median, bar to p90)")
        save(
            fig,
            "3-cold-start.png",
            f"3. Cold start: B - A spawn->1st token {c['B_overhead_vs_first_token_ms']:.0f} ms, "
            f"C {c['C_overhead_vs_first_token_ms']:.0f} ms",
        )
    if "4_concurrency" in summary:
        conc = summary["4_concurrency"]
        levels = list(conc)
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        for k in KEYS:
            left.plot(
                levels,
                [conc[level][k]["aggregate_tps_median"] for level in levels],
                marker="o",
                color=COLORS[k],
                label=LABELS[k],
            )
            right.plot(
                levels,
                [conc[level][k]["ttft_p99_ms"] for level in levels],
                marker="o",
                color=COLORS[k],
                label=LABELS[k],
            )
        left.set_xlabel("concurrent streaming clients")
        left.set_ylabel("aggregate tokens/s (median)")
        right.set_xlabel("concurrent streaming clients")
        right.set_ylabel("TTFT p99, ms")
        right.set_yscale("log")
        left.legend()
        save(fig, "4-concurrency.png", "4. Concurrent streams")
    proxy = summary.get("5_proxy_cpu", {})
    if proxy.get("daemon_worker"):
        columns = ["single_stream"] + [f"c{level}" for level in summary.get("4_concurrency", {})]
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.38
        for offset, (name, key) in enumerate((("daemon_worker", "B"), ("router", "C"))):
            values = [
                proxy[name].get(f"{column}_ms_per_1000_tokens", math.nan) for column in columns
            ]
            xs = [i + (offset - 0.5) * width for i in range(len(columns))]
            ax.bar(
                xs,
                [0 if math.isnan(v) else v for v in values],
                width,
                color=COLORS[key],
                label=LABELS[key],
            )
        ax.axhline(30, color="red", linestyle="--", linewidth=1, label="target 30")
        ax.axhline(
            150, color="grey", linestyle=":", linewidth=1, label="facts.md realistic target 150"
        )
        ax.axhline(120, color="black", linestyle=":", linewidth=1, label="bare thread relay ~120")
        ax.set_xticks(
            range(len(columns)),
            ["1 stream (s.1)"] + [f"{c[1:]} clients (s.4)" for c in columns[1:]],
        )
        ax.set_ylabel("proxy CPU ms per 1000 streamed tokens")
        ax.legend(fontsize=8)
        save(fig, "5-proxy-cpu.png", "5. Proxy CPU per 1000 streamed tokens")
    if "6_api_latency" in summary:
        api = {path: v for path, v in summary["6_api_latency"].items() if isinstance(v, dict)}
        fig, ax = plt.subplots(figsize=(8, 4))
        paths = list(api)
        xs = range(len(paths))
        ax.bar(
            [x - 0.2 for x in xs],
            [api[p]["p50_ms"] for p in paths],
            0.4,
            label="p50",
            color=COLORS["B"],
        )
        ax.bar(
            [x + 0.2 for x in xs],
            [api[p]["p99_ms"] for p in paths],
            0.4,
            label="p99",
            color="#c44e52",
        )
        ax.set_xticks(list(xs), [f"GET {p}" for p in paths], fontsize=8)
        ax.axhline(5, color="red", linestyle="--", linewidth=1, label="target p50 5 ms (/models)")
        ax.set_ylabel("ms")
        ax.legend(fontsize=8)
        save(
            fig,
            "6-api-latency.png",
            f"6. Daemon API latency, {summary['6_api_latency']['models_in_store']} models",
        )
    if "7_pull" in summary:
        p = summary["7_pull"]
        fig, ax = plt.subplots(figsize=(7, 4))
        _bars(
            ax,
            ["daemon pull", "curl", "curl + sha256sum"],
            [p["daemon_mib_s_median"], p["curl_mib_s_median"], p["curl_sha256sum_mib_s_median"]],
            None,
            [COLORS["B"], "#8172b3", "#937860"],
        )
        ax.set_ylabel("MiB/s (median)")
        save(
            fig,
            "7-pull.png",
            f"7. Pull: daemon/(curl+sha256sum) {p['ratio_daemon_to_curl_sha256sum']:.2f}, "
            f"peak RSS {p['daemon_peak_rss_mib']:.0f} MiB",
        )
    issue18_charts.write(plt, summary, save)
    return written
