"""Table 3 with its uncertainty, and what each of DCM's parts adds (paper Sec. 4.3, Table 3).

Every ablation setting is sampled on the same prompts and initial noise as full DCM, so the effect of
one part (the setting with it minus the setting without it) is paired: a bootstrap resample draws the
same seeds and, within each, the same videos for both settings. Only runs of these params with the
row's switches count, so older worlds or boundaries in the same MLflow experiment never mix in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dcm.config import Params
from dcm.evaluation.uncertainty import DIMENSIONS, bootstrap_means, interval, totals, with_interval
from dcm.reporting.claims import RESAMPLES, per_video_scores
from dcm.reporting.runs import per_video_tables
from dcm.reporting.tables import ABLATION_ROWS, ablation_table, newest_per_seed, table

#: part -> (the Table 3 row with it, the row without it): each row adds one part to the one before
PARTS = {"OD": ("OD", "none"), "PE": ("OD+PE", "OD"), "TC": ("OD+PE+TC+GF", "OD+PE+GF"),
         "GF": ("OD+PE+TC+GF", "OD+PE+TC")}
#: the dimensions each effect is shown on beside the Total: the detail expert's and the TC loss's
EFFECT_DIMENSIONS = ("detail", "motion_smoothness")


def setting_runs(frame: pd.DataFrame, params: Params) -> dict[str, pd.DataFrame]:
    """The newest run of each seed of every Table 3 row: these params with the row's switches."""
    from dcm.tracking import config_tags

    out = {}
    for label, flags in ABLATION_ROWS:
        switched = params.with_overrides({"ablation": dict(zip(("od", "pe", "tc", "gf"), flags, strict=True))})
        runs = newest_per_seed(frame, config_tags(switched)["dcm.config"])
        if not runs.empty:
            out[label] = runs.sort_values("seed")
    return out


def _scores(runs: pd.DataFrame, steps: tuple[int, ...]) -> dict[str, dict[int, np.ndarray]] | None:
    """``dcm@k -> {seed: score matrix}`` of one Table 3 row, or None without per-video tables."""
    tables = per_video_tables(list(runs.run_id))
    if tables is None:
        return None
    scores = per_video_scores(tables)
    return {f"dcm@{k}": dict(zip(runs.seed, scores[f"dcm@{k}"], strict=True)) for k in steps if f"dcm@{k}" in scores}


def ablation_section(frame: pd.DataFrame, params: Params, steps: tuple[int, ...] = (2, 4, 8)) -> list[str]:
    """The report's Table 3 (mean ± sd over seeds, and each Total's 95% interval over seeds and
    videos) and the paired effect of each part whose two rows both have runs."""
    world = params.world.to_config()
    runs = setting_runs(frame, params)
    if not runs:
        return [ablation_table(frame.iloc[0:0])]
    intervals, scores = {}, {}
    for label, setting in runs.items():
        scores[label] = _scores(setting, steps)
        for key, by_seed in (scores[label] or {}).items():
            lo, hi = interval(totals(bootstrap_means({key: list(by_seed.values())}, RESAMPLES)[key], world))
            intervals[(label, int(key.split("@")[1]))] = f"[{lo:.4f}, {hi:.4f}]"
    lines = [ablation_table(pd.concat(runs.values()), steps=steps, intervals=intervals), ""]
    rows = []
    for part, (with_it, without) in PARTS.items():
        on, off = scores.get(with_it), scores.get(without)
        if on is None or off is None:
            continue
        for key in sorted(set(on) & set(off), key=lambda k: int(k.split("@")[1])):
            seeds = sorted(set(on[key]) & set(off[key]))
            if not seeds:
                continue
            pair = {"on": [on[key][s] for s in seeds], "off": [off[key][s] for s in seeds]}
            boot = bootstrap_means(pair, RESAMPLES)
            mean_on, mean_off = (np.concatenate(pair[side]).mean(0) for side in ("on", "off"))
            cells = [part, f"{with_it} − {without}", key.split("@")[1], ", ".join(map(str, seeds)),
                     with_interval(float(totals(mean_on, world) - totals(mean_off, world)),
                                   totals(boot["on"], world) - totals(boot["off"], world), signed=True)]
            for name in EFFECT_DIMENSIONS:
                i = DIMENSIONS.index(name)
                cells.append(with_interval(float(mean_on[i] - mean_off[i]), boot["on"][:, i] - boot["off"][:, i],
                                           signed=True))
            rows.append(cells)
    if rows:
        lines += ["What each part adds to DCM, paired over the same seeds and videos (its row minus the row "
                  "without it; 95% bootstrap interval):", "",
                  table(rows, ["part", "rows", "steps", "seeds", "Total", *(d.replace("_", " ") for d in
                                                                          EFFECT_DIMENSIONS)]), ""]
    return lines
