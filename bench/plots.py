"""PNG curves from results.json (matplotlib, the `bench` extra)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {  # who (a stage-name prefix): (label, colour, marker)
    "agentcred": ("agentcred", "tab:blue", "o"),
    "floor": ("floor (plain client)", "tab:gray", "s"),
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


def _number(value: float, _: object = None) -> str:
    """A tick as people write it: 1,000 and 5,000, but 1.5 and 2.5 (not 2 and 2)."""
    return f"{value:,.0f}" if value >= 100 or float(value).is_integer() else f"{value:,.3g}"


def _plain_ticks(ax: Any) -> None:
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(matplotlib.ticker.FuncFormatter(_number))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _finish(fig: Any, ax: Any, path: Path, title: str) -> Path:
    _plain_ticks(ax)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


PANELS = (("idle", ""), ("a core kept busy (--background-load)", "busy-"))
WHO = ("agentcred", "floor", "eso-default", "eso-raised", "eso-tuned")
Read = Callable[[dict[str, Any]], float | None]


def _bursts(
    results: dict[str, Any],
    path: Path,
    title: str,
    ylabel: str,
    read: Read,
    *,
    p50: Read | None = None,
    log_y: bool = False,
    target: tuple[float, str] | None = None,
) -> Path | None:
    """One panel per setting (idle, and busy where measured) side by side on one y axis: each
    with agentcred, the floor and ESO's variants, every burst size labelled."""
    panels = [(name, prefix) for name, prefix in PANELS if _series(results, prefix + "agentcred")]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), sharey=True, squeeze=False)
    sizes = _sizes(results)
    for ax, (name, prefix) in zip(axes[0], panels, strict=True):
        for who in WHO:
            label, colour, marker = STYLE[who]
            points = [
                (n, value, p50(r) if p50 else None)
                for n, r in _series(results, prefix + who)
                if (value := read(r)) is not None
            ]
            if not points:
                continue
            ns = [n for n, _, _ in points]
            ax.plot(ns, [v for _, v, _ in points], marker=marker, color=colour, label=label + (" p99" if p50 else ""))
            if p50:
                ax.plot(ns, [m for _, _, m in points], marker=marker, color=colour, linestyle=":", linewidth=0.8,
                        markersize=3, label=f"{label} p50")  # fmt: skip
            for n, v, _ in points:
                ax.annotate(f"{v:,.0f}" if v >= 10 else f"{v:.1f}", (n, v), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=colour)  # fmt: skip
        if target is not None:
            ax.axhline(target[0], color="black", linewidth=0.8, linestyle="--", label=target[1])
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("objects created at once (pods, or ExternalSecrets)")
        _plain_ticks(ax)
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.set_title(name, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if not log_y:  # once every panel is drawn: the shared axis then holds every panel's points
        axes[0][0].set_ylim(bottom=0)
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _p(summary: str, q: str) -> Read:
    return lambda r: (r.get(summary) or {}).get(q) if (r.get(summary) or {}).get("n") else None


def latency(results: dict[str, Any], path: Path) -> Path | None:
    return _bursts(
        results, path, "Pod created → value written (same API server, same client)", "ms",
        _p("written_ms", "p99"), p50=_p("written_ms", "p50"), log_y=True, target=(300.0, "target p99 300 ms (1,000)"),
    )  # fmt: skip


def throughput(results: dict[str, Any], path: Path) -> Path | None:
    return _bursts(results, path, "Values written per second", "Secrets written per second",
                   lambda r: r.get("written_per_second"))  # fmt: skip


def revocation(results: dict[str, Any], path: Path) -> Path | None:
    def worse(r: dict[str, Any]) -> float | None:
        found = [
            float(r[k]["p99"]) for k in ("revoked_succeeded_ms", "revoked_deleted_ms") if (r.get(k) or {}).get("n")
        ]
        return max(found) if found else None

    return _bursts(
        results, path, "Task ended → Secret gone, p99 (worse of Succeeded and deleted; ESO: deleted)", "ms",
        lambda r: worse(r) if "revoked_succeeded_ms" in r else _p("deleted_ms", "p99")(r), log_y=True,
        target=(1000.0, "target 1 s"),
    )  # fmt: skip


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
    return _bursts(
        results, path, "Controller CPU per 1,000 objects (agentcred: issued + revoked)", "CPU seconds per 1,000",
        lambda r: r.get("cpu_seconds_per_1000"), target=(3.0, "target (agentcred): 3 s"),
    )  # fmt: skip


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
        revocation(results, out / "revocation.png"),
        memory(results, out / "memory.png"),
        cpu(results, out / "cpu.png"),
        startup(results, out / "startup.png"),
        hot_paths(results, out / "hot_paths.png"),
    ]
    return [p for p in drawn if p is not None]
