"""Reports: JSON files and the nDCG@10-against-dimension plot of a Matryoshka sweep."""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from embedforge.evaluation.retrieval import StageReport


def environment() -> dict[str, Any]:
    """Where a report was measured (library versions, CPU count, time)."""
    import os

    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` as indented JSON (parent directories created); NaN is refused."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8"
    )
    return path


def plot_dims(
    stages: Sequence[StageReport], path: str | Path, *, metric: str = "ndcg@10", title: str = ""
) -> Path:
    """PNG of ``metric`` against embedding dimension (log2 x axis), one point per swept dimension."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted((s.dim, s.metrics[metric]) for s in stages if s.dim is not None)
    if not points:
        raise ValueError("no dimension sweep to plot: pass dims")
    dims, values = zip(*points, strict=True)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(dims, [100 * v for v in values], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_xlabel("embedding dimension (Matryoshka truncation)")
    ax.set_ylabel(f"{metric} (x100)")
    ax.set_title(title or f"{metric} against dimension")
    ax.grid(True, alpha=0.3)
    lo, hi = min(values), max(values)
    if math.isclose(lo, hi):
        ax.set_ylim(100 * lo - 1, 100 * hi + 1)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
