"""What every benchmark script shares: torch's thread count for a block, and the end (total time, the
printed table, the JSON file)."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """torch.set_num_threads(n) inside the block (n = 0: leave torch's setting), restored afterwards."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def finish(res: dict[str, Any], t_start: float, report: Callable[[dict[str, Any]], None],
           json_path: Path | None) -> dict[str, Any]:
    """Record total_s, print the report, write `json_path` (parents created) when given; returns `res`."""
    res["total_s"] = time.perf_counter() - t_start
    report(res)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(res, indent=2))
    return res
