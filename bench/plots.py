"""PNG curves from results.json (matplotlib, the `bench` extra)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {  # who (a stage-name prefix): (label, colour, marker)
    "agentcred": ("agentcred", "tab:blue", "o"),
    "busy-agentcred": ("agentcred, a core busy", "tab:cyan", "o"),
    "floor": ("floor (plain client)", "tab:gray", "s"),
    "busy-floor": ("floor, a core busy", "silver", "s"),
    "eso-default": ("ESO default (qps 50, 1 worker)", "tab:red", "^"),
    "eso-raised": ("ESO qps 1000", "tab:orange", "v"),
    "eso-tuned": ("ESO qps 1000, 16 workers", "tab:green", "D"),
}


def _series(results: dict[str, Any], prefix: str) -> list[tuple[int, dict[str, Any]]]:
    found = []
    for key, value in results.items():
        match = re.fullmatch(rf"{re.escape(prefix)}-(\d+)", key)
        if match and isinstance(value, dict):
            found.append((int(match.group(1)), value))
    return sorted(found, key=lambda item: item[0])


def _sizes(results: dict[str, Any]) -> list[int]:
    return sorted({n for who in STYLE for n, _ in _series(results, who)})


def _finish(fig: Any, ax: Any, path: Path, title: str, sizes: list[int] | None = None) -> Path:
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if sizes:  # every burst size labelled where it was measured, and nothing else on that axis
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency(results: dict[str, Any], path: Path) -> Path | None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for who, (label, colour, marker) in STYLE.items():
        points = [(n, r["written_ms"]) for n, r in _series(results, who) if (r.get("written_ms") or {}).get("n")]
        if not points:
            continue
        drawn = True
        ns = [n for n, _ in points]
        ax.plot(ns, [s["p50"] for _, s in points], marker=marker, color=colour, linestyle=":", label=f"{label} p50")
        ax.plot(ns, [s["p99"] for _, s in points], marker=marker, color=colour, label=f"{label} p99")
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("objects created at once (pods, or ExternalSecrets)")
    ax.set_ylabel("created → Secret written, ms")
    return _finish(fig, ax, path, "Latency vs burst size (same API server, same client)", _sizes(results))


def throughput(results: dict[str, Any], path: Path) -> Path | None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for who, (label, colour, marker) in STYLE.items():
        points = [(n, r["written_per_second"]) for n, r in _series(results, who) if r.get("written_per_second")]
        if points:
            drawn = True
            ax.plot([n for n, _ in points], [v for _, v in points], marker=marker, color=colour, label=label)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_xlabel("objects created at once")
    ax.set_ylabel("Secrets written per second")
    ax.set_ylim(bottom=0)
    return _finish(fig, ax, path, "Throughput vs burst size", _sizes(results))


def memory(results: dict[str, Any], path: Path) -> Path | None:
    scale = (results.get("scale") or {}).get("points") or []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    if scale:
        drawn = True
        ax.plot(
            [p["live"] for p in scale],
            [p["rss_mb"] for p in scale],
            marker="o",
            color="tab:blue",
            label="agentcred RSS",
        )
        ax.plot(
            [p["live"] for p in scale],
            [p["peak_rss_mb"] for p in scale],
            marker="o",
            color="tab:blue",
            linestyle=":",
            label="agentcred peak RSS",
        )
        startups = [s for s in (results.get("scale") or {}).get("startup") or [] if s.get("rss_mb") and s["live"]]
        if startups:
            ax.scatter(
                [s["live"] for s in startups],
                [s["rss_mb"] for s in startups],
                color="tab:cyan",
                zorder=3,
                label="agentcred just restarted (listed)",
            )
    for who in ("eso-default", "eso-raised", "eso-tuned"):
        label, colour, marker = STYLE[who]
        points = [(n, r["rss_mb_at_n"]) for n, r in _series(results, who) if r.get("rss_mb_at_n")]
        refresh = results.get("eso-refresh") or {}
        variant = who.split("-", 1)[1]
        if refresh.get(variant, {}).get("rss_mb"):
            points.append((refresh["objects"], refresh[variant]["rss_mb"]))
        if points:
            drawn = True
            points.sort()
            ax.plot([n for n, _ in points], [v for _, v in points], marker=marker, color=colour, label=f"{label} RSS")
    if not drawn:
        plt.close(fig)
        return None
    for limit, at in ((200, 10000), (350, 20000)):
        ax.scatter([at], [limit], marker="_", s=400, color="black")
    ax.set_xlabel("live projections (pods with a value) / live ExternalSecrets")
    ax.set_ylabel("controller RSS, MB")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    return _finish(fig, ax, path, "Memory vs live objects (black bars: targets)")


def cpu(results: dict[str, Any], path: Path) -> Path | None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for who in ("agentcred", "busy-agentcred", "eso-default", "eso-raised", "eso-tuned"):
        label, colour, marker = STYLE[who]
        points = [(n, r["cpu_seconds_per_1000"]) for n, r in _series(results, who) if r.get("cpu_seconds_per_1000")]
        if points:
            drawn = True
            ax.plot([n for n, _ in points], [v for _, v in points], marker=marker, color=colour, label=label)
    if not drawn:
        plt.close(fig)
        return None
    ax.axhline(3.0, color="black", linewidth=0.8, linestyle=":", label="target (agentcred): 3 s")
    ax.set_xscale("log")
    ax.set_xlabel("objects created at once")
    ax.set_ylabel("controller CPU seconds per 1,000 (issued + revoked)")
    ax.set_ylim(bottom=0)
    return _finish(fig, ax, path, "CPU per 1,000 objects vs burst size", _sizes(results))


def startup(results: dict[str, Any], path: Path) -> Path | None:
    points = [s for s in (results.get("scale") or {}).get("startup") or []]
    if len(points) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(
        [s["live"] for s in points],
        [s["seconds"] for s in points],
        marker="o",
        color="tab:blue",
        label="agentcred: start → ready (every index listed)",
    )
    ax.set_xlabel("live pods with values")
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    return _finish(fig, ax, path, "Operator start-up (a new leader after a failover)")


def hot_paths(results: dict[str, Any], path: Path) -> Path | None:
    """Every stage's paths (bench/hot_paths.py), one panel per path: per second and p99 at each
    concurrency, agentcred and its floor (and any peer) in the same panel."""
    points = [p for value in results.values() if isinstance(value, dict) for p in value.get("paths") or []]
    names = list(dict.fromkeys(p["path"] for p in points))
    if not names:
        return None
    fig, axes = plt.subplots(2, len(names), figsize=(4.5 * len(names), 7), squeeze=False)
    palette = {"agentcred": "tab:blue", "floor": "tab:gray"}
    for column, name in enumerate(names):
        rate, latency = axes[0][column], axes[1][column]
        mine = [p for p in points if p["path"] == name]
        whos = list(dict.fromkeys(p["who"] for p in mine))
        callers = sorted({p["callers"] for p in mine})
        peers = [who for who in whos if who not in palette]
        for who in whos:
            series = sorted((p for p in mine if p["who"] == who), key=lambda p: p["callers"])
            colour = palette.get(who) or f"C{peers.index(who) + 1}"
            xs = [p["callers"] for p in series]
            if len(callers) == 1:  # one concurrency: bars side by side
                index = whos.index(who)
                rate.bar([index], [series[0]["per_second"]], color=colour, label=who)
                latency.bar([index], [series[0]["latency_ms"]["p99"]], color=colour, label=f"{who} p99")
                continue
            rate.plot(xs, [p["per_second"] for p in series], marker="o", color=colour, label=who)
            latency.plot(xs, [p["latency_ms"]["p99"] for p in series], marker="o", color=colour, label=f"{who} p99")
        for axis, unit in ((rate, "per second"), (latency, "p99 ms")):
            if len(callers) == 1:
                axis.set_xticks(range(len(whos)), whos, fontsize=7)
                axis.set_xlabel(f"{callers[0]} concurrent callers")
            else:
                axis.set_xscale("log")
                axis.set_xticks(callers, [str(c) for c in callers])
                axis.set_xlabel("concurrent callers")
            axis.set_ylabel(unit)
            axis.set_ylim(bottom=0)
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=7)
        rate.set_title(name, fontsize=9)
    fig.suptitle("Hot paths beside their floors", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    drawn = [
        latency(results, out / "latency.png"),
        throughput(results, out / "throughput.png"),
        memory(results, out / "memory.png"),
        cpu(results, out / "cpu.png"),
        startup(results, out / "startup.png"),
        hot_paths(results, out / "hot_paths.png"),
    ]
    return [p for p in drawn if p is not None]
