"""Plots as base64 PNG strings (matplotlib Agg), so the HTML report is one self-contained file."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display on servers/CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from icm_backend.compare.reliability import ReliabilityBin  # noqa: E402


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def reliability_png(bins: list[ReliabilityBin]) -> str:
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    if bins:
        centers = [(b.low + b.high) / 2 for b in bins]
        ax.bar(centers, [b.accuracy for b in bins], width=0.09, alpha=0.7, color="tab:blue",
               edgecolor="black", label="agreement with crowd majority")
        ax.plot([b.mean_confidence for b in bins], [b.accuracy for b in bins], "o-", color="tab:red",
                label="mean confidence in bin")
        for c, b in zip(centers, bins):
            ax.annotate(str(b.count), (c, b.accuracy), ha="center", va="bottom", fontsize=7)
    else:
        ax.text(0.5, 0.5, "no task has both an ICM label\nand a crowd majority", ha="center")
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="ICM confidence", ylabel="fraction = crowd majority",
           title="Reliability of ICM confidence (n per bar)")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def heatmap_png(names: list[str], matrix: list[list[float | None]], title: str) -> str:
    m = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    size = max(4.0, 0.55 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdYlGn")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, "–" if np.isnan(m[i, j]) else f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    return _png(fig)


def confusion_png(labels: list[str], matrix: list[list[int]], row_name: str, col_name: str, title: str) -> str:
    m = np.array(matrix)
    fig, ax = plt.subplots(figsize=(max(3.5, 0.8 * len(labels) + 2),) * 2)
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    top = m.max() if m.size else 0
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > top / 2 else "black")
    ax.set(xlabel=col_name, ylabel=row_name, title=title)
    return _png(fig)
