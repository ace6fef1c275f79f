"""`brats2d crossval-ensemble`: would averaging the models of several cross-validations help?

nnU-Net's ``find_best_configuration`` asks this of its configurations; here it is asked of finished
``brats2d crossval`` output folders made with the same folds (the same raw folder, fold count and seed,
so fold i holds out the same patients everywhere). Each held-out patient of fold i is predicted on
whole volumes by fold i's run of every folder -- each with its own preprocessing, input modalities and
``checkpoint`` setting (best+latest: both models) -- and the members' probabilities are averaged
(every folder weighs the same). The mean is thresholded and post-processed with the *first* folder's
settings, scored like ``crossval`` scores, and compared, patient by patient, with the first folder's
own score: no model ever predicts a patient it trained on, and nothing is retrained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from .plan import CrossvalError, finished_fold, load_plan
from .summary import paired


def ensemble_json_path(outs: list[str | Path]) -> Path:
    """Where `brats2d crossval-ensemble` writes its result by default: OUT1/ensemble-with-<OUT2>[+<OUT3>...].json."""
    return Path(outs[0]) / f"ensemble-with-{'+'.join(Path(o).name for o in outs[1:])}.json"


def ensemble(raw: str | Path, outs: list[str | Path], *, device: str = "auto",
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score the ensemble of the cross-validations `outs` (>= 2) on their common held-out patients.

    Folds not finished in every folder are skipped and listed (a partial screen can be ensembled).
    Returns {outs, predict, missing_folds, regions: {region: {per_patient: [{patient, fold, dice, hd95,
    first_dice}], dice, first_dice, hd95_median, fold_dice, paired: {mean, se, better, worse}}}}, paired
    being the ensemble minus the first folder.
    """
    from ..evaluate import describe
    from ..inference import load_predictor
    from ..predict import load_case, post_settings, postprocess_regions, score_masks

    dirs = [Path(o) for o in outs]
    if len(dirs) < 2:
        raise CrossvalError("crossval-ensemble: give at least two cross-validation folders")
    plans = [load_plan(d) for d in dirs]
    for d, p in zip(dirs[1:], plans[1:]):
        if [s["test"] for s in p["splits"]] != [s["test"] for s in plans[0]["splits"]]:
            raise CrossvalError(f"{d}: other folds than {dirs[0]} (held-out patients differ); an ensemble needs "
                                "the same --folds, --seed and raw folder")
    own = plans[0]["predict"]
    rows: dict[str, list[dict[str, Any]]] = {}
    missing = []
    for i in range(plans[0]["folds"]):
        done = [finished_fold(d, p, i) for d, p in zip(dirs, plans)]
        if any(m is None for m in done):
            log(f"fold {i}: not finished in {', '.join(str(d) for d, m in zip(dirs, done) if m is None)}; skipped")
            missing.append(i)
            continue
        firsts = done[0]
        assert firsts is not None
        members = [load_predictor(d / f"fold{i}" / "run", p["predict"]["checkpoint"], device)
                   for d, p in zip(dirs, plans)]
        if len({tuple(m.regions) for m in members}) > 1:
            raise CrossvalError(f"fold {i}: the folders' models predict different regions "
                                f"({', '.join('/'.join(m.regions) for m in members)})")
        threshold = members[0].train_cfg.threshold
        first = {r: {p["patient"]: p for p in v["per_patient"]} for r, v in firsts["volume"].items()}
        for case in firsts["patients"]["test"]:
            probs = []
            for m, p in zip(members, plans):
                patient, image, seg, spacing = load_case(m, Path(raw) / case)
                probs.append(m.volume(image, tta=bool(p["predict"]["tta"]))[0])  # (K, X, Y, Z)
            mean = np.mean(probs, axis=0)
            masks = postprocess_regions(mean, members[0].regions, threshold, **post_settings(own))
            for region, s in score_masks(members[0], patient, masks, seg, spacing).items():
                rows.setdefault(region, []).append({"patient": case, "fold": i, "dice": s["dice"], "hd95": s["hd95"],
                                                    "first_dice": first[region][case]["dice"]})
        log(f"fold {i} ({i + 1} of {plans[0]['folds']}): " + "; ".join(
            f"{r} ensemble {np.mean([x['dice'] for x in v if x['fold'] == i]):.4f} vs "
            f"{np.mean([x['first_dice'] for x in v if x['fold'] == i]):.4f}" for r, v in rows.items()))
    if not rows:
        raise CrossvalError(f"no fold is finished in every folder ({', '.join(map(str, dirs))}); "
                            "run their `brats2d crossval` commands first")
    regions = {}
    for region, pp in rows.items():
        delta = np.array([p["dice"] - p["first_dice"] for p in pp])
        folds = sorted({p["fold"] for p in pp})
        regions[region] = {
            "per_patient": pp, "dice": describe([p["dice"] for p in pp]),
            "first_dice": describe([p["first_dice"] for p in pp]),
            "hd95_median": float(np.median([p["hd95"] for p in pp])),
            "fold_dice": describe([float(np.mean([p["dice"] for p in pp if p["fold"] == f])) for f in folds]),
            "paired": paired(delta)}
    return {"outs": [str(d) for d in dirs], "predict": own, "missing_folds": missing, "regions": regions}
