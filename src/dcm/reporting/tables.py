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
    """Table 1 analog: every sampled method and step count with latency and scores."""
    header = ["method", "steps", "latency (s/video)", "speedup", "Total", "Quality", "Semantic",
              "PSNR vs teacher", "SSIM vs teacher", "VBench flicker"]
    rows = []
    for key, m in metrics.items():
        method, steps = key.split("@")
        rows.append([method, steps, fmt(m.get("latency_s")), fmt(m.get("speedup_vs_teacher"), 1),
                     fmt(m.get("total")), fmt(m.get("quality")), fmt(m.get("semantic")),
                     "–" if key == teacher_key else fmt(m.get("psnr_vs_teacher"), 2),
                     "–" if key == teacher_key else fmt(m.get("ssim_vs_teacher")),
                     fmt(m.get("vbench_temporal_flickering"))])
    return table(rows, header)


def methods_over_seeds(frame: pd.DataFrame, config: str) -> tuple[str, dict[str, dict[str, float]]]:
    """Table 1 analog over every run of this configuration (``dcm.config``: the params but the seed):
    mean ± sd over the newest run of each seed. Also returns the means, for the claims table."""
    runs = frame[frame.config == config].drop_duplicates("seed", keep="first") if not frame.empty else frame
    if runs.empty:
        return "No runs of this configuration in MLflow.", {}
    keys = sorted({c.split("/")[0] for c in runs.columns if "/" in c},
                  key=lambda k: (k.split("_")[0] != "teacher", k.split("_")[0], int(k.split("_")[1])))
    rows, means = [], {}
    for key in keys:
        method, steps = key.split("_")
        cells = [method, steps]
        for name in ("total", "quality", "semantic", "latency_s"):
            column = f"{key}/{name}"
            values = list(runs[column].dropna()) if column in runs else []
            cells.append(mean_sd(values))
            if values:
                means.setdefault(f"{method}@{steps}", {})[name] = float(pd.Series(values).mean())
        rows.append(cells)
    teacher = next((m.get("latency_s") for k, m in means.items() if k.startswith("teacher@")), None)
    for key, m in means.items():
        if "latency_s" in m:
            m["per_step_s"] = m["latency_s"] / int(key.split("@")[1])
            if teacher:
                m["speedup_vs_teacher"] = teacher / m["latency_s"]
    seeds = ", ".join(str(s) for s in sorted(runs.seed))
    note = f"Mean ± sd over {len(runs)} seed(s) of `distill.seed` ({seeds}), the newest run of each."
    return note + "\n\n" + table(rows, ["method", "steps", "Total", "Quality", "Semantic", "latency (s/video)"]), means


def ablation_table(frame: pd.DataFrame, steps: tuple[int, ...] = (4, 8), boundary: int | None = None) -> str:
    """Table 3 analog: per ablation setting, DCM's Total over the newest run of each seed (mean ±
    sd over the seeds present). ``boundary``: only runs at that boundary; else each setting's most
    common boundary. ``frame`` comes from :mod:`dcm.reporting.runs` (newest first)."""
    header = ["setting", "boundary", "seeds", "experiments", *[f"DCM@{k} Total" for k in steps]]
    rows = []
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
        rows.append(cells)
    if not rows:
        return "No ablation experiments found: run them with `dcm grid ablations` (or `dvc exp run -S ablation.od=false ...`)."
    return table(rows, header)


def research_bar(metrics: dict[str, dict], teacher_key: str) -> list[list[str]]:
    """The paper's claims as checks on this run: (claim, measured, holds?). Totals are on a 0-1
    scale, so the paper's "1 point" is 0.01; a claim whose methods were not sampled is skipped."""
    rows = []

    def total(key: str) -> float | None:
        return metrics.get(key, {}).get("total")

    for k in (4, 8):
        dcm, pcm, lcm = total(f"dcm@{k}"), total(f"pcm@{k}"), total(f"lcm@{k}")
        if None not in (dcm, pcm, lcm):
            rows.append([f"{k} steps: Total DCM >= PCM >= LCM", f"{dcm:.4f} / {pcm:.4f} / {lcm:.4f}",
                         _holds(dcm >= pcm >= lcm)])
    teacher = total(teacher_key)
    for k, gap in ((4, 0.02), (2, 0.05)):  # the paper's 4-step parity and its stated 2-step limitation
        dcm = total(f"dcm@{k}")
        if None not in (dcm, teacher):
            rows.append([f"DCM@{k} Total within {gap} of the teacher's ({teacher_key})",
                         f"{dcm:.4f} vs {teacher:.4f} (gap {teacher - dcm:+.4f})", _holds(teacher - dcm <= gap + 1e-9)])
    for k in (4, 8):
        dcm, undistilled = total(f"dcm@{k}"), total(f"undistilled@{k}")
        if None not in (dcm, undistilled):
            rows.append([f"{k} steps: DCM beats the teacher's own {k}-step samples (distillation adds "
                         "something)", f"{dcm:.4f} vs {undistilled:.4f}", _holds(dcm > undistilled)])
    # the paper's speed-ups (HunyuanVideo 12.4x, one call per step; CogVideoX 23x, CFG) are its cut in
    # transformer calls, less the sampler's overhead
    dcm4, teacher_entry = metrics.get("dcm@4", {}), metrics.get(teacher_key, {})
    speedup, calls, teacher_calls = (dcm4.get("speedup_vs_teacher"), dcm4.get("forward_passes"),
                                     teacher_entry.get("forward_passes"))
    if None not in (speedup, calls, teacher_calls):
        ideal = teacher_calls / calls
        rows.append([f"DCM@4 speed-up at least 90% of its cut in transformer calls ({teacher_calls} -> {calls}: "
                     f"{ideal:.1f}x)", f"{speedup:.1f}x", _holds(speedup >= 0.9 * ideal)])
    for k in (4, 8):
        dcm, lcm = metrics.get(f"dcm@{k}", {}).get("per_step_s"), metrics.get(f"lcm@{k}", {}).get("per_step_s")
        if None not in (dcm, lcm):
            rows.append([f"{k} steps: DCM per-step cost within 2% of LCM's", f"{dcm / lcm:.3f}x",
                         _holds(dcm / lcm <= 1.02)])
    return rows


def _holds(ok: bool) -> str:
    return "yes" if ok else "**no**"
