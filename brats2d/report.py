"""Pictures: training curves and test-slice overlays (ground truth vs prediction contours)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    with atomic_write(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> None:
    """curves.png: train/val loss and val Dice per epoch."""
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    # A run without validation patients records None for the val metrics: those points are left out.
    val_loss = np.array([np.nan if h["val_loss"] is None else h["val_loss"] for h in history], float)
    val_dice = np.array([np.nan if h["val_dice"] is None else h["val_dice"] for h in history], float)
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, val_loss, "s-", label="validation")
    a.set(xlabel="epoch", ylabel="loss", title="Loss")
    a.legend()
    b.plot(ep, val_dice, "o-", color="tab:green")
    has_val = bool(np.isfinite(val_dice).any())
    best = int(np.nanargmax(val_dice)) if has_val else 0
    if has_val:
        b.annotate(f"best {history[best]['val_dice']:.3f}", (ep[best], history[best]["val_dice"]),
                   textcoords="offset points", xytext=(0, -14), ha="center")
    b.set(xlabel="epoch", ylabel="Dice", title="Validation Dice (pooled)", ylim=(0, 1))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    _save(fig, Path(path))
    plt.close(fig)


def plot_overlays(images: np.ndarray, truth: np.ndarray, pred: np.ndarray, patients: np.ndarray,
                  slices: np.ndarray, dice: dict[str, float], path: str | Path, per_patient: int = 4,
                  uncertainty: np.ndarray | None = None) -> list[str]:
    """overlays.png: rows = best, median and worst patient by Dice; columns = their slices with the
    most tumour (image in grey, ground truth contour green, prediction contour red).

    images (N, S, S) float, truth/pred (N, S, S) bool, patients (N,) str, slices (N,) z.
    Returns the patients shown (best, median, worst; each once). With `uncertainty` (N, S, S), adds its map.
    """
    plt = _plt()
    order = sorted(dice, key=lambda c: dice[c])
    picks, seen = [], set()
    for label, case in (("best", order[-1]), ("median", order[len(order) // 2]), ("worst", order[0])):
        if case not in seen:  # fewer than 3 patients: show each once
            picks.append((label, case))
            seen.add(case)
    cols = per_patient + (1 if uncertainty is not None else 0)
    fig, axes = plt.subplots(len(picks), cols, figsize=(2.3 * cols, 2.5 * len(picks)), squeeze=False)
    for r, (label, case) in enumerate(picks):
        sel = np.flatnonzero(patients == case)
        area = truth[sel].reshape(len(sel), -1).sum(1)
        top = sel[np.argsort(-area, kind="stable")[:per_patient]]
        top = top[np.argsort(slices[top])]
        for c in range(cols):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(top) and not (uncertainty is not None and c == cols - 1):
                continue
            i = top[min(c, len(top) - 1)]
            if uncertainty is not None and c == cols - 1:
                ax.imshow(uncertainty[i].T, cmap="magma", origin="lower")
                ax.set_title(f"uncertainty z={slices[i]}", fontsize=8)
                continue
            ax.imshow(images[i].T, cmap="gray", origin="lower")
            if truth[i].any():
                ax.contour(truth[i].T.astype(float), levels=[0.5], colors="lime", linewidths=1.0)
            if pred[i].any():
                ax.contour(pred[i].T.astype(float), levels=[0.5], colors="red", linewidths=1.0)
            ax.set_title(f"z={slices[i]}", fontsize=8)
        axes[r, 0].text(-0.08, 0.5, f"{label}\n{case}\nDice {dice[case]:.3f}", transform=axes[r, 0].transAxes,
                        ha="right", va="center", fontsize=8)
    fig.suptitle("Test slices: ground truth (green) vs prediction (red). Research output, not for clinical use.",
                 fontsize=10)
    fig.tight_layout()
    _save(fig, Path(path))
    plt.close(fig)
    return [c for _, c in picks]


def report(run_dir: str | Path, split: str = "test", which: str = "best", device: str = "auto",
           threshold: float | None = None, uncertainty: bool = False) -> dict[str, str]:
    """Write curves.png and overlays.png for a run; returns {name: path}."""
    import json

    from .dataset import SliceCache
    from .inference import load_predictor
    from .metrics import confusion, dice as dice_of

    run_dir = Path(run_dir)
    out = {}
    hist = run_dir / "latest_checkpoint.pth"
    if hist.exists():
        from .checkpoint import load

        plot_curves(json.loads(load(hist)["history"]), run_dir / "curves.png")
        out["curves"] = str(run_dir / "curves.png")
    pred = load_predictor(run_dir, which, device)
    th = pred.train_cfg.threshold if threshold is None else threshold
    data = SliceCache(pred.cache_path, split)
    if len(data) == 0:
        return out
    images, masks = (np.asarray(a) for a in data.arrays())
    patients, slices = data.index()
    prob, var = pred.slices(images.astype(np.float32), tta=uncertainty)
    p, t = prob[:, 0] > th, masks[:, 0] > 0
    dice = {c: float(dice_of(confusion(p[patients == c], t[patients == c]))) for c in sorted(set(patients))}
    # Channel `context` is the first modality's own slice (with 2.5D input, the middle of its stack).
    plot_overlays(images[:, pred.prep_cfg.context], t, p, patients, slices, dice, run_dir / "overlays.png",
                  uncertainty=None if var is None else var[:, 0])
    out["overlays"] = str(run_dir / "overlays.png")
    return out
