"""What every experiment script over a finished `brats2d crossval` folder shares: its arguments, its plan,
and the end (total time, the printed table, the JSON file). The predictions themselves are the
package's (brats2d.cv.folds), so a script scores exactly what the crossval scored."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable

from brats2d.cv.plan import load_plan
from brats2d.files import write_json


def crossval_args(description: str) -> argparse.ArgumentParser:
    """The arguments every script over a finished `brats2d crossval` folder takes: cv, --raw, --device, --json."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("cv", type=Path, help="a brats2d crossval output folder")
    ap.add_argument("--raw", type=Path, help="the raw BraTS folder it ran on (default: the one its plan names)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="write the results here")
    return ap


def crossval_plan(a: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """(the folder's plan, from brats2d.cv.plan.load_plan; the raw folder: --raw or the plan's)."""
    plan = load_plan(a.cv)
    return plan, a.raw or Path(plan["raw"])


def finish(res: dict[str, Any], t_start: float, report: Callable[[dict[str, Any]], None],
           json_path: Path | None) -> dict[str, Any]:
    """Record total_s, print the report, write `json_path` (atomically, parents created) when given."""
    res["total_s"] = time.perf_counter() - t_start
    report(res)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(json_path, res)
    return res


def paired_cells(p: dict[str, Any] | None) -> tuple[str, str]:
    """The "paired" and "better / worse" cells of a report row from brats2d.cv.summary.paired ("—" without one)."""
    return (f"{p['mean']:+.4f} ± {p['se']:.4f}", f"{p['better']} / {p['worse']}") if p else ("—", "—")


def show(table: Any, total_s: float, width: int = 120) -> None:
    """Print a report's rich table at least `width` columns wide (wide tables stay readable in a log), then
    the script's total time."""
    from rich.console import Console

    con = Console(width=max(width, Console().width))
    con.print(table)
    con.print(f"total {total_s:.0f} s")
