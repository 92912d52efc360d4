"""``ftmix study report``: the study's figures from the store, PNG and SVG, and a markdown report
with the tables behind them; ``report.json`` holds every number each figure draws.

Figures, by what a study varies (its name's prefix first: mixtures, context, matrix):
- mixtures: grouped bars of peak memory and step time per mixture (tag) and ZeRO stage;
- context: peak memory and step time against context length, one line per attention kernel;
- matrix: model x context grid coloured by step time, the mixture that ran (or would run) in each
  cell, OOM cells marked;
- any other sweep: peak memory and step time per trial;
- every store: predicted against measured, memory and time, with the median and worst error.
Measured values where a trial ran; a trial that only has predictions (``--predict-only``) is drawn
from them, and the figure says so. A step time measured on a CPU is never set against a GPU's
predicted one (the table says "CPU run", the figures draw no prediction beside it).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ftmix.errors import FtmixError

OOM = ("oom", "predicted_oom")


def _value(row: dict, measured: str, predicted: str) -> tuple[float | None, str]:
    if row["status"] == "ok" and row.get(measured) is not None:
        return row[measured], "measured"
    if row["status"] in ("predicted",) and row.get(predicted) is not None:
        return row[predicted], "predicted"
    return None, row["status"]


def _kind(name: str, rows: list[dict]) -> str:
    for prefix in ("mixtures", "context", "matrix"):
        if name.startswith(prefix):
            return prefix
    configs = [r.get("config") or {} for r in rows]
    if any(c.get("mixture") == "auto" for c in configs):
        return "matrix"
    if len({c.get("zero") for c in configs}) > 1 and any(r.get("tag") for r in rows):
        return "mixtures"
    if len({c.get("seq_len") for c in configs}) > 1 and len({c.get("attn") for c in configs}) > 1:
        return "context"
    return "other"


def figure_data(name: str, rows: list[dict]) -> dict | None:
    kind = _kind(name, rows)
    if kind == "mixtures":
        series = []
        for r in rows:
            mem, mem_src = _value(r, "peak_gb", "predicted_peak_gb")
            time, time_src = _value(r, "step_s", "predicted_step_s")
            series.append({"id": r["id"], "mixture": r.get("tag") or r.get("label"), "zero": (r.get("config") or {}).get("zero"),
                           "peak_gb": mem, "peak_source": mem_src, "step_s": time, "step_source": time_src,
                           "predicted_peak_gb": r.get("predicted_peak_gb"), "predicted_step_s": _gpu_time(r),
                           "status": r["status"]})
        return {"kind": kind, "points": series}
    if kind == "other" and any((r.get("source") or "run") == "run" for r in rows):
        # a sweep over any other keys (not measurements imported from elsewhere): one bar per trial
        series = []
        for r in rows:
            mem, mem_src = _value(r, "peak_gb", "predicted_peak_gb")
            time, time_src = _value(r, "step_s", "predicted_step_s")
            series.append({"id": r["id"], "mixture": r.get("trial_key") or r.get("tag") or r["id"], "zero": None,
                           "peak_gb": mem, "peak_source": mem_src, "step_s": time, "step_source": time_src,
                           "predicted_peak_gb": r.get("predicted_peak_gb"), "predicted_step_s": _gpu_time(r),
                           "status": r["status"]})
        return {"kind": "trials", "points": series}
    if kind == "context":
        points = []
        for r in rows:
            mem, mem_src = _value(r, "peak_gb", "predicted_peak_gb")
            time, time_src = _value(r, "step_s", "predicted_step_s")
            c = r.get("config") or {}
            points.append({"id": r["id"], "seq_len": c.get("seq_len"), "attn": c.get("attn") or "default",
                           "peak_gb": mem, "peak_source": mem_src, "step_s": time, "step_source": time_src,
                           "status": r["status"]})
        return {"kind": kind, "points": sorted(points, key=lambda p: (p["attn"], p["seq_len"] or 0))}
    if kind == "matrix":
        cells = []
        for r in rows:
            c = r.get("config") or {}
            time, src = _value(r, "step_s", "predicted_step_s")
            cells.append({"id": r["id"], "model": r.get("tag") or c.get("model"), "seq_len": c.get("seq_len"),
                          "mixture": r.get("label"), "step_s": time, "step_source": src, "status": r["status"],
                          "oom": r["status"] in OOM})
        return {"kind": kind, "cells": cells}
    return None


def _gpu_time(row: dict) -> float | None:
    """The predicted step time where it can stand beside the measured one: not beside a CPU's."""
    return None if row.get("device") == "cpu" and row["status"] == "ok" else row.get("predicted_step_s")


def scatter_data(rows: list[dict]) -> dict:
    out = {}
    for what, m_key, p_key in (("memory", "peak_gb", "predicted_peak_gb"), ("time", "step_s", "predicted_step_s")):
        # a step time measured on a CPU is another machine's than the GPU the prediction is for
        points = [{"id": r["id"], "study": r["study"], "measured": r[m_key], "predicted": r[p_key],
                   "error": r[p_key] / r[m_key] - 1}
                  for r in rows if r["status"] == "ok" and r.get(m_key) and r.get(p_key) is not None
                  and not (what == "time" and r.get("device") == "cpu")]
        errs = [abs(p["error"]) for p in points]
        out[what] = {"points": points, "median": round(statistics.median(errs), 4) if errs else None,
                     "worst": round(max(errs), 4) if errs else None, "n": len(points)}
    return out


def _plt():
    # lazy: matplotlib loads only when a figure is drawn
    import matplotlib

    matplotlib.use("Agg")
    # lazy: matplotlib loads only when a figure is drawn
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, stem: str) -> list[str]:
    paths = []
    for ext in ("png", "svg"):
        path = out / f"{stem}.{ext}"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        paths.append(str(path))
    _plt().close(fig)
    return paths


def _scale(values: list[float | None]) -> tuple[float, str]:
    """GB, or MB where every value is under one GB (the CPU forms' tiny models)."""
    present = [v for v in values if v is not None]
    return (1e3, "MB") if present and max(present) < 1 else (1.0, "GB")


def draw_mixtures(data: dict, title: str, out: Path, stem: str) -> list[str]:
    plt = _plt()
    points = data["points"]
    mixtures = list(dict.fromkeys(p["mixture"] for p in points))
    zeros = sorted({p["zero"] for p in points}, key=lambda z: (z is None, z))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(zeros))
    factor, unit = _scale([p["peak_gb"] for p in points])
    predicted_only = False
    for ax, key, pkey, src, label, k in (
            (axes[0], "peak_gb", "predicted_peak_gb", "peak_source", f"peak memory per GPU ({unit})", factor),
            (axes[1], "step_s", "predicted_step_s", "step_source", "seconds per step", 1.0)):
        for j, z in enumerate(zeros):
            xs, ys, marks = [], [], []
            for i, mix in enumerate(mixtures):
                p = next((q for q in points if q["mixture"] == mix and q["zero"] == z), None)
                if p is None:
                    continue
                x = i + (j - (len(zeros) - 1) / 2) * width
                if p[key] is None:
                    ax.text(x, 0, "OOM" if p["status"] in OOM else p["status"], rotation=90, ha="center",
                            va="bottom", fontsize=7, color="red")
                    continue
                xs.append(x)
                ys.append(p[key] * k)
                marks.append((x, p[src], None if p.get(pkey) is None else p[pkey] * k))
            bars = ax.bar(xs, ys, width, label="each trial" if z is None else f"ZeRO-{z}")
            for bar, (x, source, predicted) in zip(bars, marks):
                if source == "predicted":
                    bar.set_hatch("//")
                    predicted_only = True
                elif predicted is not None:
                    ax.plot([x - width / 2, x + width / 2], [predicted, predicted], color="black", lw=1.2)
        ax.set_xticks(range(len(mixtures)), mixtures, rotation=0 if len(mixtures) < 6 else 45,
                      ha="center" if len(mixtures) < 6 else "right", fontsize=8)
        ax.set_ylabel(label)
        ax.set_xlabel("mixture" if data["kind"] == "mixtures" else "trial")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(zeros), bbox_to_anchor=(0.5, -0.1), fontsize=8,
               title="hatched: predicted only" if predicted_only else "black line: ftmix's prediction", title_fontsize=8)
    fig.suptitle(title)
    return _save(fig, out, stem)


def draw_context(data: dict, title: str, out: Path, stem: str) -> list[str]:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    kernels = list(dict.fromkeys(p["attn"] for p in data["points"]))
    for ax, key, label in ((axes[0], "peak_gb", "peak memory per GPU (GB)"), (axes[1], "step_s", "seconds per step")):
        for kernel in kernels:
            pts = [p for p in data["points"] if p["attn"] == kernel and p[key] is not None]
            ax.plot([p["seq_len"] for p in pts], [p[key] for p in pts], marker="o", label=kernel)
            for p in data["points"]:
                if p["attn"] == kernel and p[key] is None:
                    ax.annotate("OOM", (p["seq_len"], 0), color="red", fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(label)
        ax.legend(title="attention")
    fig.suptitle(title)
    return _save(fig, out, stem)


def text_colour(background) -> str:
    """Black on light cells, white on dark ones (relative luminance, WCAG's weights)."""
    # lazy: matplotlib loads only when a figure is drawn
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(background)
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def draw_matrix(data: dict, title: str, out: Path, stem: str) -> list[str]:
    plt = _plt()
    cells = data["cells"]
    models = list(dict.fromkeys(c["model"] for c in cells))
    lengths = sorted({c["seq_len"] for c in cells})
    times = [c["step_s"] for c in cells if c["step_s"] is not None]
    fig, ax = plt.subplots(figsize=(1.9 * len(lengths) + 2, 0.9 * len(models) + 1.5))
    cmap = plt.get_cmap("viridis_r")
    low, high = (min(times), max(times)) if times else (0, 1)
    for c in cells:
        x, y = lengths.index(c["seq_len"]), models.index(c["model"])
        if c["oom"] or c["step_s"] is None:
            colour, text = "#dddddd", "OOM" if c["oom"] else c["status"]
        else:
            colour = cmap((c["step_s"] - low) / (high - low) if high > low else 0.5)
            lines = (c["mixture"] or "").split(" + ") + [f"{c['step_s']:.3g} s"]
            text = "\n".join(lines)
        ax.add_patch(plt.Rectangle((x, y), 1, 1, color=colour))
        ax.text(x + 0.5, y + 0.5, text, ha="center", va="center", fontsize=6,
                color="red" if c["oom"] else text_colour(colour))
    ax.set_xlim(0, len(lengths))
    ax.set_ylim(0, len(models))
    ax.set_xticks([i + 0.5 for i in range(len(lengths))], [str(s) for s in lengths])
    ax.set_yticks([i + 0.5 for i in range(len(models))], models)
    ax.set_xlabel("context length (tokens)")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(low, high))
    fig.colorbar(sm, ax=ax, label="seconds per step (grey: out of memory)")
    ax.set_title(title)
    return _save(fig, out, stem)


def readable_log_axes(ax) -> None:
    """Log axes with labelled ticks at 1, 2 and 5 of each decade, so that a range inside one decade
    (MB-scale peaks of tiny models) still has numbers on it."""
    # lazy: matplotlib loads only when a figure is drawn
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis, scale in ((ax.xaxis, ax.set_xscale), (ax.yaxis, ax.set_yscale)):
        scale("log")
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def draw_scatter(data: dict, out: Path, stem: str) -> list[str]:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    factor, mem_unit = _scale([v for p in data["memory"]["points"] for v in (p["measured"], p["predicted"])])
    for ax, what, unit in ((axes[0], "memory", f"peak memory ({mem_unit})"), (axes[1], "time", "seconds per step")):
        d = data[what]
        if what == "memory" and factor != 1.0:
            d = dict(d, points=[dict(p, measured=p["measured"] * factor, predicted=p["predicted"] * factor)
                                for p in d["points"]])
        studies = list(dict.fromkeys(p["study"] for p in d["points"]))
        for study in studies:
            pts = [p for p in d["points"] if p["study"] == study]
            ax.scatter([p["measured"] for p in pts], [p["predicted"] for p in pts], label=study, s=14)
        values = [v for p in d["points"] for v in (p["measured"], p["predicted"])]
        if values:
            lo, hi = min(values), max(values)
            ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
            readable_log_axes(ax)
            ax.legend(fontsize=7)
        if not d["points"]:
            ax.text(0.5, 0.5, f"no {what} measured to compare" + ("\n(step times measured on a CPU are not a GPU's)"
                                                                    if what == "time" else ""),
                    ha="center", va="center", transform=ax.transAxes, fontsize=9, color="grey")
            ax.set_xticks([])
            ax.set_yticks([])
        med = "-" if d["median"] is None else f"{100 * d['median']:.1f}%"
        worst = "-" if d["worst"] is None else f"{100 * d['worst']:.1f}%"
        ax.set_title(f"{what}: median error {med}, worst {worst} (n={d['n']})", fontsize=9)
        ax.set_xlabel(f"measured {unit}")
        ax.set_ylabel(f"predicted {unit}")
    return _save(fig, out, stem)


DRAW = {"mixtures": draw_mixtures, "context": draw_context, "matrix": draw_matrix, "trials": draw_mixtures}


def report(store, out_dir: str | Path, studies: list[str] | None = None) -> dict:
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise FtmixError(f"--out {out} is a file, not a folder")
    if not out.parent.exists():
        raise FtmixError(f"--out {out}: folder {out.parent} does not exist")
    names = studies or store.studies()
    unknown = sorted(set(names) - set(store.studies()))
    if unknown:
        raise FtmixError(f"no study {', '.join(unknown)} in {store.path}; it holds: {', '.join(store.studies()) or 'nothing'}")
    if not names:
        raise FtmixError(f"{store.path} holds no trials yet: `ftmix study run` or `ftmix study import` first")
    out.mkdir(exist_ok=True)
    result = {"db": str(store.path), "figures": [], "studies": {}}
    every: list[dict] = []
    for name in names:
        rows = store.trials(name)
        every += rows
        data = figure_data(name, rows)
        entry = {"trials": len(rows), "by_status": _count(rows)}
        if data is not None:
            stem = f"{name}-{data['kind']}"
            title = name if name == data["kind"] else f"{name}: {data['kind']}"
            files = DRAW[data["kind"]](data, title, out, stem)
            entry["figure"] = {"files": files, **data}
            result["figures"].append({"study": name, "kind": data["kind"], "files": files})
        result["studies"][name] = entry
    scatter = scatter_data(every)
    result["scatter"] = scatter
    if scatter["memory"]["n"] or scatter["time"]["n"]:
        files = draw_scatter(scatter, out, "predicted-vs-measured")
        result["figures"].append({"study": "all", "kind": "scatter", "files": files})
    (out / "report.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "report.md").write_text(markdown(result, {n: store.trials(n) for n in names}))
    result["markdown"] = str(out / "report.md")
    return result


def _count(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


def _f(x, digits=4):
    return "-" if x is None else f"{x:.{digits}g}"


def _pct(x):
    return "-" if x is None else f"{100 * x:+.1f}%"


def markdown(result: dict, rows_by_study: dict) -> str:
    lines = ["# ftmix study report", "", f"Database: `{result['db']}`. Written by `ftmix study report`; every number "
             "below is in `report.json` and in the database.", ""]
    for name, entry in result["studies"].items():
        lines += [f"## {name}", "", "Trials: " + ", ".join(f"{v} {k}" for k, v in entry["by_status"].items()), ""]
        if "figure" in entry:
            png = Path(entry["figure"]["files"][0]).name
            lines += [f"![{name}]({png})", ""]
        if any(r.get("device") == "cpu" and r.get("step_s") for r in rows_by_study[name]):
            lines += ["Step times measured on a CPU are not set against the GPU's predicted ones (\"CPU run\").", ""]
        lines += ["| trial | status | mixture | peak GB | predicted GB | error | step s | predicted s | error | loss |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows_by_study[name]:
            merr = r["predicted_peak_gb"] / r["peak_gb"] - 1 if r.get("peak_gb") and r.get("predicted_peak_gb") else None
            terr = r["predicted_step_s"] / r["step_s"] - 1 if r.get("step_s") and _gpu_time(r) else None
            lines.append(f"| {r.get('trial_key') or r['id']} | {r['status']} | {r.get('label') or '-'} | {_f(r.get('peak_gb'))} "
                         f"| {_f(r.get('predicted_peak_gb'))} | {_pct(merr)} | {_f(r.get('step_s'))} "
                         f"| {_f(r.get('predicted_step_s'))} | {'CPU run' if terr is None and r.get('device') == 'cpu' and r.get('step_s') else _pct(terr)} "
                         f"| {_f(r.get('final_loss'))} |")
        lines.append("")
    s = result["scatter"]
    lines += ["## Predicted against measured", ""]
    if any(f["kind"] == "scatter" for f in result["figures"]):
        lines += ["![predicted vs measured](predicted-vs-measured.png)", ""]
    for what in ("memory", "time"):
        d = s[what]
        lines.append(f"- {what}: median error {_pct(d['median'])}, worst {_pct(d['worst'])} over {d['n']} trials")
    return "\n".join(lines) + "\n"
