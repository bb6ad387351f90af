"""PNG plots of evaluation results (matplotlib, headless). Each function writes one file, returns its path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def niah_heatmap(rows: Sequence[Mapping[str, Any]], path: str | Path, *,
                 title: str = "NIAH accuracy") -> Path:
    """Accuracy per depth (rows) × length (columns), as RULER/NIAH papers draw it.

    ``rows``: records with ``seq_len``, ``depth``, ``accuracy``.
    """
    lengths = sorted({r["seq_len"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    grid = [[float("nan")] * len(lengths) for _ in depths]
    for r in rows:
        grid[depths.index(r["depth"])][lengths.index(r["seq_len"])] = r["accuracy"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.5 * len(depths)))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [str(t) for t in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.05)
    return _save(fig, path)


def sink_share_per_layer(results: Mapping[str, Mapping[int, Sequence[float]]], path: str | Path, *,
                         title: str = "first-token attention share") -> Path:
    """Sink share per attention layer: one bar per (model, layer) at the mean over heads, heads as dots.

    ``results``: ``{label: {layer_index: [share per head]}}`` (one label per model, e.g. gated vs not).
    """
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = list(results)
    width = 0.8 / max(len(labels), 1)
    all_layers = sorted({int(i) for r in results.values() for i in r})
    for k, label in enumerate(labels):
        layers = sorted(int(i) for i in results[label])
        per = {int(i): v for i, v in results[label].items()}
        xs = [all_layers.index(i) + (k - (len(labels) - 1) / 2) * width for i in layers]
        means = [sum(per[i]) / len(per[i]) for i in layers]
        ax.bar(xs, means, width=width * 0.9, label=label, alpha=0.8)
        for x, i in zip(xs, layers):
            ax.scatter([x] * len(per[i]), per[i], s=8, color="k", zorder=3)
    ax.set_xticks(range(len(all_layers)), [f"layer {i}" for i in all_layers])
    ax.set_ylabel("attention on token 0 (mean over queries)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def lines(series: Mapping[str, Mapping[Any, float]], path: str | Path, *, xlabel: str, ylabel: str,
          title: str, logx: bool = False, ylim: tuple[float, float] | None = (0, 1.02),
          vline: float | None = None, vline_label: str = "") -> Path:
    """One line per series (``{label: {x: y}}``), e.g. accuracy per mixer per length."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, pts in series.items():
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker="o", label=label)
    if vline is not None:
        ax.axvline(vline, color="grey", linestyle="--", linewidth=1, label=vline_label or None)
    if logx:
        ax.set_xscale("log", base=2)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def max_activation_per_layer(results: Mapping[str, Sequence[float]], path: str | Path, *,
                             title: str = "largest hidden activation per layer") -> Path:
    """``{label: [max |h| per hidden state]}`` (index 0 = embeddings), log scale."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, values in results.items():
        ax.plot(range(len(values)), values, marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("hidden state (0 = embeddings)")
    ax.set_ylabel("max |h|")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
