"""Charts of sections 8-11 and one chart of the issue 18 rows (for README's Performance).

Called by :func:`bench.charts.write_charts` once matplotlib is imported (Agg backend).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bench.report import COLORS

# Rows of the combined chart: which are overheads in ms (left) and which are ratios (right).
_MS_GOALS = {"<= +1": 1.0, "<= 1": 1.0, "<= 10": 10.0}
_RATIO_GOALS = {">= 0.995": 0.995, ">= 0.98": 0.98, "<= 1": 1.0, ">= 0.8": 0.8}


def _clean(value: Any) -> float:
    return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else value


def write(plt: Any, summary: dict[str, Any], save: Callable[[Any, str, str], None]) -> None:
    """Draw ``8-embeddings.png`` ... ``11-relay.png`` and ``issue18.png`` with ``save``
    (charts.py's: title, layout, file, the list of names written)."""
    for key, draw in (
        ("8_embeddings", _embeddings),
        ("9_bare_relay", _bare_relay),
        ("10_fresh_daemon", _fresh),
        ("11_relay", _relay),
    ):
        section = summary.get(key)
        if section and "skipped" not in section:
            draw(plt, section, save)
    if summary.get("issue18"):
        _issue(plt, summary["issue18"], save)


def _embeddings(plt: Any, emb: dict[str, Any], save: Callable[..., None]) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    names = ["A direct mean", "B daemon mean", "A direct p50", "B daemon p50"]
    values = [emb["A"]["mean_ms"], emb["B"]["mean_ms"], emb["A"]["p50_ms"], emb["B"]["p50_ms"]]
    colors = [COLORS["A"], COLORS["B"], COLORS["A"], COLORS["B"]]
    ax.bar(names, [_clean(v) for v in values], color=colors)
    ax.set_ylabel("ms per embedding request")
    save(
        fig,
        "8-embeddings.png",
        f"8. Embeddings: B-A {emb['paired_B_minus_A_mean_ms']:+.2f} ms (paired), worker CPU "
        f"{emb['worker_cpu_ms_per_request']:.2f} ms/request",
    )


def _bare_relay(plt: Any, bare: dict[str, Any], save: Callable[..., None]) -> None:
    columns = [c for c in bare["daemon_worker"] if c != "tokens"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.27
    for offset, (name, key, label) in enumerate(
        (
            ("daemon_worker", "B", "B daemon worker"),
            ("bare_relay", "D", "D bare Python relay"),
            ("router", "C", "C router"),
        )
    ):
        xs = [i + (offset - 1) * width for i in range(len(columns))]
        values = [_clean(bare[name].get(c)) for c in columns]
        ax.bar(xs, values, width, color=COLORS[key], label=label)
    ax.set_xticks(range(len(columns)), [c.replace("_", " ") for c in columns])
    ax.set_ylabel("process CPU ms per 1,000 streamed tokens")
    ax.legend(fontsize=8)
    save(
        fig,
        "9-bare-relay.png",
        f"9. Proxy CPU: daemon / bare relay {bare['ratio_daemon_to_bare']:.2f}",
    )


def _fresh(plt: Any, fresh: dict[str, Any], save: Callable[..., None]) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    names = ["A spawn->ready", "A spawn->1st token", "F start->/version", "F request->1st token"]
    values = [
        fresh["A_spawn_to_ready_p50_ms"],
        fresh["A_spawn_to_first_token_p50_ms"],
        fresh["F_spawn_to_version_p50_ms"],
        fresh["F_first_token_p50_ms"],
    ]
    ax.bar(names, [_clean(v) for v in values], color=[COLORS["A"]] * 2 + [COLORS["B"]] * 2)
    ax.set_ylabel("ms (p50)")
    ax.tick_params(axis="x", labelsize=8)
    save(
        fig,
        "10-fresh-daemon.png",
        f"10. Fresh daemon: first token - A spawn->first token {fresh['F_minus_A_p50_ms']:+.1f} ms",
    )


def _relay(plt: Any, relay: dict[str, Any], save: Callable[..., None]) -> None:
    levels = list(relay["levels"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, color in (
        ("direct", COLORS["A"]),
        ("nginx", "#937860"),
        ("bare", COLORS["D"]),
        ("daemon", COLORS["B"]),
    ):
        values = [relay["levels"][level].get(f"{name}_tps", math.nan) for level in levels]
        if all(math.isnan(value) for value in values):
            continue  # a run from before the bare relay joined section 11
        ax.plot(
            levels,
            values,
            marker="o",
            color=color,
            label="bare Python relay" if name == "bare" else name,
        )
    ax.set_xlabel("concurrent streams (wrk connections)")
    ax.set_ylabel("relayed tokens/s (log scale: direct is often 10x the relays)")
    ax.set_yscale("log")
    ax.legend()
    ratio = relay["levels"].get("64", {}).get("ratio_daemon_nginx", math.nan)
    title = f"11. Relay capacity, synthetic engine: daemon/nginx at 64 streams {ratio:.2f}"
    save(fig, "11-relay.png", title)


def _issue(plt: Any, rows: list[dict[str, Any]], save: Callable[..., None]) -> None:
    """Two panels: overheads in ms (bar) and ratios (bar), each with its target as a tick."""
    ms = [r for r in rows if "(ms" in r["row"] or r["row"].endswith("(ms)")]
    ratios = [r for r in rows if r not in ms]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    for ax, group, goals, unit in (
        (left, ms, _MS_GOALS, "ms"),
        (right, ratios, _RATIO_GOALS, "ratio"),
    ):
        labels = [r["row"].split(" (")[0].replace(", ", ",\n") for r in group]
        values = [_clean(r["value"]) for r in group]
        colors = [
            "#999999" if r["met"] is None else "#55a868" if r["met"] else "#c44e52" for r in group
        ]
        ys = range(len(group))
        ax.barh(list(ys), values, color=colors)
        for y, row in zip(ys, group, strict=True):
            goal = goals.get(row["goal"])
            if goal is not None:
                ax.plot([goal, goal], [y - 0.4, y + 0.4], color="black", linewidth=2)
            text = "skipped" if row["met"] is None else f"{row['value']:.3g}"
            ax.annotate(text, (values[y], y), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=8)  # fmt: skip
        ax.set_yticks(list(ys), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{unit} (black tick: target; green met, red not)")
    save(fig, "issue18.png", "Issue 18: overheads of the daemon, one interleaved run")
