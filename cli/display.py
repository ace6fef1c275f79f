"""Rich progress bars and tables for the CLI (presentation only; no pipeline logic)."""

from __future__ import annotations

import contextlib
import math
import os
from functools import lru_cache
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


@lru_cache(maxsize=1)
def console() -> Console:
    c = Console()
    # Piped into a log, rich falls back to 80 columns and wraps every table cell in two; a log is read wide.
    return c if c.is_terminal or "COLUMNS" in os.environ else Console(width=120)


@contextlib.contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[str], None]]:
    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console(), transient=False) as prog:
        task = prog.add_task("", total=total)
        yield lambda case: prog.update(task, advance=1, description=case)


def preprocess_summary(s: Any) -> None:
    c = console()
    if s.up_to_date:
        c.print(f"[green]cache {s.out} is up to date[/] (same settings, unchanged input; --force rebuilds)")
        return
    t = Table(title=f"cache {s.out}  ({s.seconds:.1f} s)")
    for col in ("split", "patients", "slices", "tumour pixels"):
        t.add_column(col, justify="right" if col != "split" else "left")
    for split, v in s.per_split.items():
        t.add_row(split, str(v["patients"]), str(v["slices"]), f"{100 * v['tumour_fraction']:.2f} %")
    c.print(t)
    if s.skipped:
        c.print(f"[yellow]skipped {len(s.skipped)} patient(s):[/]")
        for case, why in s.skipped:
            c.print(f"  {case}: {why}", markup=False, highlight=False)


@contextlib.contextmanager
def train_progress() -> Iterator[tuple[Callable[[str], None], Callable[..., None]]]:
    c = console()
    with Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.1f} img/s"), TimeRemainingColumn(),
                  console=c, transient=True) as prog:
        state: dict[str, Any] = {"task": None, "epoch": -1}

        def progress(epoch: int, step: int, total: int, loss: float, batch_size: int = 1) -> None:
            if state["epoch"] != epoch:
                if state["task"] is not None:
                    prog.remove_task(state["task"])
                state.update(epoch=epoch, task=prog.add_task("", total=total, epoch=epoch + 1, loss=loss, ips=0.0),
                             t0=prog.get_time(), s0=step)
            dt = prog.get_time() - state["t0"]
            ips = (step - state["s0"]) / dt if dt > 0 else 0.0
            prog.update(state["task"], completed=step, loss=loss, ips=ips * batch_size)

        yield (lambda msg: prog.console.print(msg, highlight=False)), progress


def _fmt(v: float) -> str:
    return "inf" if math.isinf(v) else "nan" if math.isnan(v) else f"{v:.4f}"


def eval_tables(result: dict[str, Any]) -> None:
    c = console()
    for region, r in result["regions"].items():
        t = Table(title=f"{result['split']} split, region {region} (cached slices, threshold {result['threshold']})")
        t.add_column("metric")
        t.add_column("pooled", justify="right")
        t.add_column("mean per slice", justify="right")
        for m, v in r["pooled"].items():
            t.add_row(m, _fmt(v), _fmt(r["per_slice_mean"][m]))
        d, h = r["per_patient_dice"], r["per_patient_hd95"]
        t.add_row("3D Dice per patient", f"mean {_fmt(d['mean'])}", f"median {_fmt(d['median'])}  worst {_fmt(d['min'])}")
        t.add_row("HD95 per patient (mm)", f"mean {_fmt(h['mean'])}", f"median {_fmt(h['median'])}")
        c.print(t)
    for region, r in result.get("volume", {}).items():
        d, h = r["per_patient_dice"], r["per_patient_hd95"]
        c.print(f"[bold]whole volumes[/], region {region}: 3D Dice mean {_fmt(d['mean'])} ± {_fmt(d['sd'])}, "
                f"median {_fmt(d['median'])}, worst {_fmt(d['min'])}; HD95 median {_fmt(h['median'])} mm")


def predict_table(rows: list[dict[str, Any]], errors: list[str], out: str) -> None:
    c = console()
    t = Table(title=f"predictions in {out} (research software, not for clinical use)")
    for col in ("patient", "region", "Dice", "HD95 mm", "pred voxels", "seconds"):
        t.add_column(col, justify="left" if col in ("patient", "region") else "right")
    for r in rows:
        for region, v in r["regions"].items():
            t.add_row(r["patient"], region, _fmt(v["dice"]) if "dice" in v else "-",
                      _fmt(v["hd95"]) if "hd95" in v else "-", str(v["pred_voxels"]), f"{r['seconds']:.2f}")
    c.print(t)
    for r in rows:
        if r.get("blank"):
            c.print(f"note: {r['patient']} has no {', '.join(r['blank'])} file; predicted with that input blank, as "
                    "the model was trained with modality dropout (docs/pipeline.md)", highlight=False)
        if r.get("ood"):
            c.print(f"[yellow]warning:[/] {r['patient']} looks unlike the run's training scans: "
                    + "; ".join(r["ood"]) + " (check its mask; docs/inputs.md)", highlight=False)
    for e in errors:
        c.print(f"[red]skipped:[/] {e}", highlight=False)


def crossval_table(summary: dict[str, Any]) -> None:
    """Per-fold and overall table of a cross-validation summary (brats2d.cv.summary.summarize)."""
    c = console()
    for region, r in summary["regions"].items():
        t = Table(title=f"{summary['folds']}-fold cross-validation, recipe {summary['recipe']}, region {region} "
                        f"(3D Dice/HD95 per patient on whole volumes; pooled Dice on tumour slices)")
        for col in ("fold", "patients", "Dice mean", "Dice median", "Dice min", "HD95 median mm",
                    "pooled slice Dice", "train min"):
            t.add_column(col, justify="left" if col == "fold" else "right")
        for f in r["per_fold"]:
            t.add_row(str(f["fold"]), str(f["patients"]), _fmt(f["dice_mean"]), _fmt(f["dice_median"]),
                      _fmt(f["dice_min"]), _fmt(f["hd95_median"]), _fmt(f["pooled_slice_dice"]), f"{f['train_minutes']:.1f}",
                      end_section=f is r["per_fold"][-1])
        d, fd, h, ps = r["dice"], r["fold_dice"], r["hd95"], r["pooled_slice_dice"]
        t.add_row("all", str(len(r["per_patient"])), f"{_fmt(d['mean'])} ± {_fmt(d['sd'])}", _fmt(d["median"]),
                  _fmt(d["min"]), _fmt(h["median"]), f"{_fmt(ps['mean'])} ± {_fmt(ps['sd'])}",
                  f"{sum(f['train_minutes'] for f in r['per_fold']):.1f}")
        c.print(t)
        w = r["worst"]
        c.print(f"per-patient 3D Dice {_fmt(d['mean'])} ± {_fmt(d['sd'])} over {len(r['per_patient'])} held-out "
                f"patients; fold means {_fmt(fd['mean'])} ± {_fmt(fd['sd'])}; worst {w['patient']} "
                f"(fold {w['fold']}) {_fmt(w['dice'])}" + (f"; {h['infinite']} empty prediction(s) (HD95 inf)"
                                                            if h["infinite"] else ""), highlight=False)
    for region in summary["regions"]:
        if "postprocessing" not in summary:
            break
        t = Table(title=f"post-processing and model selection on the same training runs, region {region} "
                        "(paired: variant - recipe's own setting per patient, mean ± standard error)")
        for col in ("variant", "3D Dice mean ± sd", "median", "worst", "HD95 median mm", "paired", "better / worse"):
            t.add_column(col, justify="left" if col == "variant" else "right")
        for name, v in summary["postprocessing"].items():
            r = v["regions"][region]
            d, pr = r["dice"], r["paired"]
            t.add_row(name, f"{_fmt(d['mean'])} ± {_fmt(d['sd'])}", _fmt(d["median"]), _fmt(d["min"]),
                      _fmt(r["hd95_median"]), f"{pr['mean']:+.3f} ± {pr['se']:.3f}", f"{pr['better']} / {pr['worse']}")
        c.print(t)
    if len(summary["regions"]) > 1:  # the BraTS summary: one row per region
        t = Table(title="per region: 3D Dice and HD95 per held-out patient (BraTS rule for empty masks: "
                        "docs/pipeline.md)")
        for col in ("region", "patients", "Dice mean ± sd", "median", "worst", "HD95 mean mm", "HD95 median mm"):
            t.add_column(col, justify="left" if col == "region" else "right")
        for region, r in summary["regions"].items():
            d, h = r["dice"], r["hd95"]
            t.add_row(region.upper(), str(len(r["per_patient"])), f"{_fmt(d['mean'])} ± {_fmt(d['sd'])}",
                      _fmt(d["median"]), _fmt(d["min"]), _fmt(h["mean"]), _fmt(h["median"]))
        c.print(t)
    if summary["excluded"]:
        c.print(f"seed test patients excluded from CV ({len(summary['excluded'])}): {', '.join(summary['excluded'])}",
                highlight=False)
    if summary["missing"]:
        c.print(f"[yellow]folds not finished yet: {', '.join(map(str, summary['missing']))}[/] "
                "(run the same command, or --fold N, to finish them)")
    c.print(f"wrote {summary['out']}/cv_summary.json")


def ensemble_table(res: dict[str, Any]) -> None:
    """The cross-run ensemble against the first cross-validation alone (brats2d.cv.ensemble.ensemble)."""
    c = console()
    for region, r in res["regions"].items():
        t = Table(title=f"ensemble of {' + '.join(res['outs'])}, region {region} (whole-volume 3D Dice per "
                        f"held-out patient; paired: ensemble - {res['outs'][0]}, mean ± standard error)")
        for col in ("", "patients", "3D Dice mean ± sd", "median", "worst", "paired", "better / worse"):
            t.add_column(col, justify="left" if col == "" else "right")
        n, d, f, pr = len(r["per_patient"]), r["dice"], r["first_dice"], r["paired"]
        t.add_row(res["outs"][0], str(n), f"{_fmt(f['mean'])} ± {_fmt(f['sd'])}", _fmt(f["median"]), _fmt(f["min"]), "", "")
        t.add_row("ensemble", str(n), f"{_fmt(d['mean'])} ± {_fmt(d['sd'])}", _fmt(d["median"]), _fmt(d["min"]),
                  f"{pr['mean']:+.3f} ± {pr['se']:.3f}", f"{pr['better']} / {pr['worse']}")
        c.print(t)
        fd = r["fold_dice"]
        c.print(f"ensemble fold means {_fmt(fd['mean'])} ± {_fmt(fd['sd'])}; HD95 median {_fmt(r['hd95_median'])} mm",
                highlight=False)
    if res["missing_folds"]:
        c.print(f"[yellow]folds skipped (not finished in every folder): {', '.join(map(str, res['missing_folds']))}[/]")
