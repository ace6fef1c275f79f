"""What every benchmark script does at the end: total time, the printed table, the JSON file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable


def finish(res: dict[str, Any], t_start: float, report: Callable[[dict[str, Any]], None],
           json_path: Path | None) -> dict[str, Any]:
    """Record total_s, print the report, write `json_path` (parents created) when given; returns `res`."""
    res["total_s"] = time.perf_counter() - t_start
    report(res)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(res, indent=2))
    return res
