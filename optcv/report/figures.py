"""Figures drawn on Agg canvases of their own: pyplot's global backend and figure list stay untouched."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optcv._io import write_atomic
from optcv.report.latency import how_fast_rows


def _figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Any, Any]:
    """A figure drawn by the Agg canvas directly: pyplot's global backend and figure list stay untouched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols)


def _save_figure(fig: Any, path: str | Path) -> Path:
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    return Path(path)


def plot_loss_comparison(losses: dict[str, list[list[float]]], path: str | Path) -> Path:
    """The course's loss_plot_comparison: mean training loss per epoch, one curve per optimizer; with several
    seeds the curve is their mean and the band their min–max."""
    fig, ax = _figure(7, 4.5)
    seeds = max(len(runs) for runs in losses.values())
    for name, runs in losses.items():
        epochs = range(1, len(runs[0]) + 1)
        per_epoch = list(zip(*runs, strict=True))
        line, = ax.plot(epochs, [sum(v) / len(v) for v in per_epoch], marker="o", label=name)
        if len(runs) > 1:
            ax.fill_between(epochs, [min(v) for v in per_epoch], [max(v) for v in per_epoch],
                            color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss")
    ax.set_title("Optimizer comparison" + (f" (mean of {seeds} seeds; band: min–max)" if seeds > 1 else ""))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    return _save_figure(fig, path)


def plot_latency_bars(labels: Sequence[str], medians_us: Sequence[float], p95_us: Sequence[float],
                      path: str | Path, title: str = "Per-image latency (batch 1)") -> Path:
    fig, ax = _figure(7, 0.6 * len(labels) + 1.5)
    positions = range(len(labels))
    ax.barh(list(positions), medians_us, color="tab:blue", label="median")
    ax.errorbar(p95_us, list(positions), fmt="|", color="black", markersize=12, label="p95")
    ax.set_yticks(list(positions), labels)
    ax.invert_yaxis()
    ax.set_xlabel("µs per image")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _save_figure(fig, path)


def plot_how_fast(result: dict[str, Any], path: str | Path) -> Path:
    """Two panels per model group: batch-1 µs per image (log scale) and batched % of the GEMM peak."""
    rows = how_fast_rows(result)
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, (left, right) = _figure(11, 0.55 * len(models) * len(backends) / 2 + 2.5, 1, 2)
    width = 0.8 / len(backends)
    peak_key = next(k for k in rows[0] if k.endswith("% of peak"))
    for i, backend in enumerate(backends):
        mine = {r["model"]: r for r in rows if r["backend"] == backend}
        ys = [m + i * width for m in range(len(models)) if models[m] in mine]
        left.barh(ys, [mine[m]["b1 µs/image"] for m in models if m in mine], height=width, label=backend)
        right.barh(ys, [float(mine[m][peak_key].rstrip(" %")) for m in models if m in mine], height=width)
    for ax in (left, right):
        ax.set_yticks([m + 0.4 - width / 2 for m in range(len(models))], models)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    left.set_xscale("log")
    left.set_xlabel("batch 1: µs per image (log scale; lower is faster)")
    right.set_xlabel(f"{peak_key.split()[0]}: % of the measured fp32 GEMM peak")
    left.legend(loc="lower right", fontsize=8)
    return _save_figure(fig, path)
