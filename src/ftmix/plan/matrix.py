"""The study's optimization matrix (model size x context length -> fastest fitting mixture) for any
GPU, and its heatmap."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftmix.catalog import GpuSpec, ModelSpec
from ftmix.errors import FtmixError
from ftmix.plan.context import Reach, reach_of_candidates
from ftmix.plan.search import Candidate, plan


@dataclass(frozen=True)
class Cell:
    model: str
    seq_len: int
    best: Candidate | None
    note: str | None = None  # why there is no plan (context beyond the model's positions)

    def to_json(self) -> dict:
        return {"model": self.model, "seq_len": self.seq_len,
                "best": None if self.best is None else self.best.to_json(), "note": self.note}


def matrix(models: list[ModelSpec], gpu: GpuSpec, seq_lens: list[int], flags: dict, **plan_kwargs) -> list[Cell]:
    cells = []
    for model in models:
        for s in seq_lens:
            if s > model.max_positions:
                cells.append(Cell(model.name, s, None, f"beyond {model.max_positions} positions"))
                continue
            result = plan(model, gpu, dict(flags, seq_len=s), suggest=False, **plan_kwargs)
            cells.append(Cell(model.name, s, result.best))
    return cells


@dataclass(frozen=True)
class ReachCell:
    """``matrix --max-seq-len``: a model on a GPU, the farthest-reaching candidate mixture."""

    model: str
    gpu: str
    reach: Reach

    def to_json(self) -> dict:
        return {"model": self.model, "gpu": self.gpu, **self.reach.to_json()}


def reach_matrix(models: list[ModelSpec], gpus: list[GpuSpec], flags: dict, granularity: int,
                 **fit_args) -> list[ReachCell]:
    """Per model and GPU, the longest context any candidate mixture fits (``plan --max-seq-len``'s
    first answer), exact to ``granularity`` tokens."""
    return [ReachCell(model.name, gpu.name, reach_of_candidates(model, gpu, flags, granularity, **fit_args)[0])
            for model in models for gpu in gpus]


# image formats matplotlib's Agg backend writes
IMAGE_FORMATS = ("png", "pdf", "svg", "svgz", "jpg", "jpeg", "tif", "tiff", "webp", "eps", "ps")
LEGEND = "off-opt: optimizer states offloaded to CPU; off-all: optimizer states and parameters offloaded"


def png_path(path: str) -> Path:
    """Where the heatmap goes: ``.png`` added when the name has no extension; the folder must exist
    and the extension be an image format."""
    out = Path(path).expanduser()
    if not out.suffix:
        out = out.with_name(out.name + ".png")
    if out.suffix.lower().lstrip(".") not in IMAGE_FORMATS:
        raise FtmixError(f"--png {path}: {out.suffix} is not an image format ({', '.join(IMAGE_FORMATS)})")
    if not out.parent.is_dir():
        raise FtmixError(f"--png {path}: folder {out.parent} does not exist")
    return out


def write_png(cells: list[Cell], path: str | Path, title: str) -> None:
    try:
        # lazy: matplotlib loads only when a figure is drawn
        import matplotlib

        matplotlib.use("Agg")
        # lazy: matplotlib loads only when a figure is drawn
        import matplotlib.pyplot as plt
    except ImportError as exc:  # the planning side installs without matplotlib
        raise FtmixError(f"--png needs matplotlib ({exc})") from None
    models = list(dict.fromkeys(c.model for c in cells))
    seqs = list(dict.fromkeys(c.seq_len for c in cells))
    grid = [[next(c for c in cells if c.model == m and c.seq_len == s) for s in seqs] for m in models]
    fig, ax = plt.subplots(figsize=(1.9 * len(seqs) + 3.4, 0.9 * len(models) + 1.8))
    colors = {0: "#d8f0d0", 1: "#b6e3a8", 2: "#8fd1c9", 3: "#f5d28c"}
    for i, row in enumerate(grid):
        for j, cell in enumerate(row):
            best = cell.best
            color = "#dddddd" if best is None else colors[best.mixture.zero]
            if best is not None and best.mixture.gc:
                color = "#f2a98f"
            ax.add_patch(plt.Rectangle((j, i), 1, 1, color=color, ec="white"))
            text = "—" if best is None else f"{best.mixture.short_label}\n{best.time.total:.2f} s/step"
            ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=8)
    ax.set_xlim(0, len(seqs))
    ax.set_ylim(len(models), 0)
    ax.set_xticks([j + 0.5 for j in range(len(seqs))], [str(s) for s in seqs])
    ax.set_yticks([i + 0.5 for i in range(len(models))], models)
    ax.set_xlabel("context length (tokens)")
    ax.set_title(title, fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in (*colors.values(), "#f2a98f", "#dddddd")]
    names = ["DDP (ZeRO-0)", "ZeRO-1", "ZeRO-2", "ZeRO-3", "with GC", "nothing fits"]
    ax.legend(handles, names, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    fig.text(0.01, 0.01, LEGEND + "; cells: mixture, seconds per optimizer step", fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    try:
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as exc:
        raise FtmixError(f"cannot write {path}: {exc}") from None
    finally:
        plt.close(fig)
