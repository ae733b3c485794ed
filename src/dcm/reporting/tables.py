"""The report's tables, as Markdown: the paper's Table 1 and Table 3 analogs and its claims.

Table 3 is built once, by :func:`ablation_table`, from the runs frame of :mod:`dcm.reporting.runs`.
"""

from __future__ import annotations

import pandas as pd

ABLATION_ROWS = [  # Table 3 of the paper, in order
    ("none", (False, False, False, False)),
    ("OD", (True, False, False, False)),
    ("OD+PE", (True, True, False, False)),
    ("OD+PE+TC", (True, True, True, False)),
    ("OD+PE+GF", (True, True, False, True)),
    ("OD+PE+TC+GF", (True, True, True, True)),
]


def table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def fmt(value, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "–" if value is None else str(value)


def mean_sd(values: list[float], digits: int = 4) -> str:
    """``mean ± sd (n)`` over seeds; one value is shown alone, with ``(n=1)``."""
    values = [v for v in values if v is not None and not pd.isna(v)]
    if not values:
        return "–"
    series = pd.Series(values, dtype=float)
    if len(series) == 1:
        return f"{series.iloc[0]:.{digits}f} (n=1)"
    return f"{series.mean():.{digits}f} ± {series.std(ddof=1):.{digits}f} (n={len(series)})"


def methods_table(metrics: dict[str, dict], teacher_key: str) -> str:
    """Table 1 analog: every sampled method and step count with latency and scores (the Total with
    its 95% bootstrap interval over videos), and the two dimensions the experts are for: detail
    (the detail expert's, low noise) and motion smoothness (the semantic expert's TC loss, high noise)."""
    header = ["method", "steps", "latency (s/video)", "speedup", "Total [95% interval]", "Quality", "Semantic",
              "detail", "motion smoothness", "PSNR vs teacher", "SSIM vs teacher", "VBench flicker"]
    rows = []
    for key, m in metrics.items():
        method, steps = key.split("@")
        total = fmt(m.get("total"))
        if "total_interval" in m:
            total += " [{:.4f}, {:.4f}]".format(*m["total_interval"])
        rows.append([method, steps, fmt(m.get("latency_s")), fmt(m.get("speedup_vs_teacher"), 1),
                     total, fmt(m.get("quality")), fmt(m.get("semantic")), fmt(m.get("detail")),
                     fmt(m.get("motion_smoothness")), "–" if key == teacher_key else fmt(m.get("psnr_vs_teacher"), 2),
                     "–" if key == teacher_key else fmt(m.get("ssim_vs_teacher")),
                     fmt(m.get("vbench_temporal_flickering"))])
    return table(rows, header)


def few_step_failure_table(metrics: dict[str, dict], teacher_key: str) -> str | None:
    """What the world leaves for a student to fix (paper Sec. 1, Fig. 2): the teacher's own k-step Euler
    samples (``undistilled``) against its full schedule, on detail, motion smoothness and Total; None
    without the undistilled control or the toy world's scores."""
    full = metrics.get(teacher_key, {})
    keys = sorted((k for k in metrics if k.startswith("undistilled@")), key=lambda k: int(k.split("@")[1]))
    if not keys or "detail" not in full:
        return None
    rows = []
    for key in [*keys, teacher_key]:
        m = metrics[key]
        total = fmt(m.get("total"))
        if "total_interval" in m:
            total += " [{:.4f}, {:.4f}]".format(*m["total_interval"])
        rows.append([key.split("@")[1], fmt(m.get("detail")), fmt(m.get("detail") / full["detail"], 3),
                     fmt(m.get("motion_smoothness")), fmt(m.get("quality")), total])
    return table(rows, ["teacher's steps", "detail", "detail / full schedule's", "motion smoothness", "Quality",
                        "Total [95% interval]"])


def evaluated(frame: pd.DataFrame) -> pd.DataFrame:
    """The runs whose evaluation finished: one still going, failed or killed has partial metrics."""
    return frame[frame.evaluated] if "evaluated" in frame else frame


def newest_per_seed(frame: pd.DataFrame, config: str) -> pd.DataFrame:
    """The newest evaluated run of each seed of this configuration (``dcm.config``: the params but the seed)."""
    if frame.empty:
        return frame
    frame = evaluated(frame)
    return frame[frame.config == config].drop_duplicates("seed", keep="first")


def methods_over_seeds(frame: pd.DataFrame, config: str, intervals: dict[str, str] | None = None) -> str:
    """Table 1 analog over every run of this configuration: mean ± sd over the newest run of each seed,
    and, where given (``method@steps -> text``), the Total's bootstrap interval over seeds and videos."""
    runs = newest_per_seed(frame, config)
    if runs.empty:
        return "No runs of this configuration in MLflow."
    keys = sorted({c.split("/")[0] for c in runs.columns if "/" in c},
                  key=lambda k: (k.split("_")[0] != "teacher", k.split("_")[0], int(k.split("_")[1])))
    rows = []
    for key in keys:
        method, steps = key.split("_")
        cells = [method, steps]
        for name in ("total", "quality", "semantic", "latency_s"):
            column = f"{key}/{name}"
            cells.append(mean_sd(list(runs[column].dropna()) if column in runs else []))
        if intervals is not None:
            cells.insert(3, intervals.get(f"{method}@{steps}", "–"))
        rows.append(cells)
    seeds = ", ".join(str(s) for s in sorted(runs.seed))
    note = f"Mean ± sd over {len(runs)} seed(s) of `distill.seed` ({seeds}), the newest run of each."
    header = ["method", "steps", "Total", "Quality", "Semantic", "latency (s/video)"]
    if intervals is not None:
        header.insert(3, "Total, 95% interval (seeds x videos)")
        note += " The interval resamples seeds and, within each, the same videos for every method."
    return note + "\n\n" + table(rows, header)


def sources_table(frame: pd.DataFrame, calls: dict[str, tuple[int, int]], boundary: int,
                  steps: tuple[int, ...] = (4, 8)) -> str | None:
    """Which training source distils better (``distill.source``): full DCM (OD+PE+TC+GF) at ``boundary``
    from each, mean ± sd over the newest run of each seed, with the teacher calls each costs (``calls``:
    :func:`dcm.distill.batches.teacher_calls`). None unless both sources have runs."""
    if frame.empty or "source" not in frame:
        return None
    frame = evaluated(frame)
    full = frame[frame.od & frame.pe & frame.tc & frame.gf & (frame.boundary == boundary)]
    if set(full.source) < {"trajectories", "data"}:
        return None
    rows = []
    for source in ("trajectories", "data"):
        newest = full[full.source == source].drop_duplicates("seed", keep="first")
        upfront, online = calls[source]
        rows.append([source, ", ".join(str(s) for s in sorted(newest.seed)),
                     *(mean_sd(list(newest[f"dcm_{k}/total"].dropna())) if f"dcm_{k}/total" in newest else "–"
                       for k in steps), f"{upfront:,} + {online:,} online"])
    return table(rows, ["distill.source", "seeds", *[f"DCM@{k} Total" for k in steps], "teacher calls"])


def ablation_table(frame: pd.DataFrame, steps: tuple[int, ...] = (4, 8), boundary: int | None = None,
                   intervals: dict[tuple[str, int], str] | None = None) -> str:
    """Table 3 analog: per ablation setting, DCM's Total over the newest run of each seed (mean ±
    sd over the seeds present). ``boundary``: only runs at that boundary; else each setting's most
    common boundary. ``intervals``: ``(setting, steps) -> text`` put after a Total.
    ``frame`` comes from :mod:`dcm.reporting.runs` (newest first)."""
    header = ["setting", "boundary", "seeds", "experiments", *[f"DCM@{k} Total" for k in steps]]
    rows = []
    frame = evaluated(frame)
    for label, (od, pe, tc, gf) in ABLATION_ROWS:
        if frame.empty:
            break
        match = frame[(frame.od == od) & (frame.pe == pe) & (frame.tc == tc) & (frame.gf == gf)]
        if boundary is not None:
            match = match[match.boundary == boundary]
        if match.empty:
            continue
        at = boundary if boundary is not None else int(match.boundary.mode().iloc[0])
        newest = match[match.boundary == at].drop_duplicates("seed", keep="first")
        cells = [label, str(at), ", ".join(str(s) for s in sorted(newest.seed)), ", ".join(newest.experiment.astype(str))]
        for k in steps:
            column = f"dcm_{k}/total"
            cells.append(mean_sd(list(newest[column])) if column in newest else "–")
            if intervals and (label, k) in intervals:
                cells[-1] += f" {intervals[(label, k)]}"
        rows.append(cells)
    if not rows:
        return "No ablation experiments found: run them with `dcm grid ablations` (or `dvc exp run -S ablation.od=false ...`)."
    return table(rows, header)
