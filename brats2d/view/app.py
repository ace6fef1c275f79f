"""Wiring for `brats2d view`: the catalog, the optional upload jobs (predict with a run) and the server."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from .catalog import Catalog, scan_predictions
from .server import ViewServer
from .upload import Job, Jobs


class UploadPredictor:
    """Runs `brats2d predict` (mask, TTA uncertainty, explanation) on an uploaded patient
    with one run, and adds the result to the catalog. The model is loaded on the first upload."""

    def __init__(self, catalog: Catalog, run_dirs: list[Path], device: str = "auto", tta: bool = True) -> None:
        self.catalog, self.run_dirs, self.device, self.tta = catalog, run_dirs, device, tta
        self._pred: Any = None
        self._lock = threading.Lock()

    def _predictor(self) -> Any:
        from ..inference import load_predictor

        with self._lock:
            if self._pred is None:
                self._pred = load_predictor([str(r) for r in self.run_dirs], "best", self.device)
            return self._pred

    def __call__(self, job: Job, folder: Path, out: Path) -> None:
        from ..predict import explain_case, predict

        job.stage, job.progress = "loading the model", 0.05
        pred = self._predictor()
        th = pred.train_cfg.threshold
        job.stage, job.progress = "predicting the tumour" + (" (8 flips/rotations for the uncertainty)" if self.tta else ""), 0.15
        rows, errors = predict(pred, [folder], out, threshold=th, tta=self.tta)
        if errors or not rows:
            raise ValueError(errors[0] if errors else f"{folder.name}: nothing was predicted")
        job.stage, job.progress = "explaining the prediction (integrated gradients)", 0.6
        explain_case(pred, folder, out, th)
        job.stage, job.progress = "opening the viewer", 0.95
        raw = self.catalog.add_root(f"{job.id}-in", folder.parent)
        res = self.catalog.add_root(f"{job.id}-out", out)
        cases = scan_predictions(res, raw, source="upload", prefix=f"{job.id[:6]}:")
        self.catalog.add_cases(cases)
        job.case_id = cases[0].id


def make_server(pred_dir: Path | None, raw_dir: Path | None, run_dirs: list[Path], host: str = "127.0.0.1",
                port: int = 8765, device: str = "auto", max_upload_mb: int = 400, tta: bool = True,
                quiet: bool = True) -> ViewServer:
    """A ready server (not yet serving); with `run_dirs`, uploads are predicted into a temporary folder."""
    catalog = Catalog(pred_dir, raw_dir)
    jobs = None
    if run_dirs:
        jobs = Jobs.in_tempdir(UploadPredictor(catalog, run_dirs, device, tta))
    return ViewServer((host, port), catalog, jobs, max_upload=max_upload_mb * 2**20,
                      max_file=min(max_upload_mb, 128) * 2**20, quiet=quiet)


def serve_forever(server: ViewServer) -> None:
    """Serve until Ctrl-C, then remove the uploads' temporary folder."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if server.jobs is not None:
            server.jobs.cleanup()
