"""Behaviour fingerprint of a short seeded synthetic run, to prove a refactor changes no result.

    python tests/fingerprint.py            # print the fingerprint of this checkout (JSON)
    python tests/fingerprint.py --update   # record it as the expected one in tests/data/fingerprint.json

Two pipelines on 6 synthetic phantoms (48x48x24 voxels, 32x32 slices): the seed protocol and
``--recipe brats2d``, each through the CLI as a user runs it: preprocess, train 2 epochs (tiny U-Net,
fp32, 1 thread), eval on the test split with whole volumes, and predict the test patients. Recorded:

* ``cache``: sha256 over every split's image/mask/patient/slice data (not the HDF5 file: it carries a
  creation time and the source files' mtimes);
* ``weights``: sha256 over best_model.pth's state dict, tensors in sorted key order (name, dtype,
  shape, bytes);
* ``metrics``: the eval JSON's numbers (paths dropped) and predict's metrics.csv rows (seconds dropped);
* ``predictions``: sha256 of the predicted label volumes;
* ``platform``: torch version and the CPU's vector ISA flags, on which fp32 conv results depend.

tests/test_fingerprint.py compares a fresh fingerprint with the recorded one (and says when it can
only compare within a tolerance).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

EXPECTED = Path(__file__).resolve().parent / "data" / "fingerprint.json"
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
TINY = ["--base-channels", "8", "--depth", "2", "--batch-size", "4", "--checkpoint-every", "3", "--threads", "1",
        "--precision", "fp32", "--epochs", "3", "--lr", "0.003", "--device", "cpu"]
PIPELINES: dict[str, list[str]] = {"seed": [], "brats2d": ["--recipe", "brats2d"]}


def platform() -> dict[str, Any]:
    """torch version, its CPU kernel capability and the CPU's vector ISA flags (Linux /proc/cpuinfo)."""
    import torch

    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "isa": sorted(f for f in ISA_FLAGS if f in flags)}


def cache_digest(path: Path) -> str:
    """sha256 of a cache's data (every split's images, masks, patient names and slice indices)."""
    from brats2d import cache

    h = hashlib.sha256()
    for split in cache.SPLITS:
        images, masks = cache.open_arrays(path, split)
        patients, slices = cache.read_index(path, split)
        for a in (np.asarray(images), np.asarray(masks), np.asarray(slices)):
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        h.update("\n".join(str(p) for p in patients).encode())
    return h.hexdigest()


def weights_digest(path: Path) -> str:
    """sha256 of a checkpoint's model state dict (sorted keys; name, dtype, shape and bytes of each)."""
    from brats2d import checkpoint

    sd = checkpoint.load(path)["model"]
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _numbers(d: Any) -> Any:
    """The JSON with file paths dropped (they depend on the temp folder)."""
    if isinstance(d, dict):
        return {k: _numbers(v) for k, v in d.items() if k not in ("run_dir", "cache")}
    if isinstance(d, list):
        return [_numbers(v) for v in d]
    return d


def _cli(args: list[str]) -> None:
    from click.testing import CliRunner

    from brats2d.cli.main import cli

    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if r.exit_code != 0:
        raise RuntimeError(f"brats2d {' '.join(map(str, args))} failed ({r.exit_code}):\n{r.output}")


def compute(work: Path) -> dict[str, Any]:
    """Run both pipelines under `work` and return their fingerprint."""
    import torch

    from brats2d.synth import write_cohort

    torch.set_num_threads(1)
    raw = work / "raw"
    write_cohort(raw, 10, seed=3, shape=(48, 48, 24))
    out: dict[str, Any] = {"platform": platform()}
    for name, recipe in PIPELINES.items():
        c, run, pred = work / f"{name}.h5", work / f"run-{name}", work / f"pred-{name}"
        _cli(["preprocess", raw, "--out", c, "--size", "32", "--workers", "1", *recipe])
        _cli(["train", "--cache", c, "--run-dir", run, *TINY, *recipe])
        _cli(["eval", "--run-dir", run, "--raw", raw, "--device", "cpu", "--json", work / f"{name}.json", *recipe])
        from brats2d import cache

        test = cache.read_meta(c).splits["test"]
        _cli(["predict", *[raw / t for t in test], "--run-dir", run, "--out", pred, "--device", "cpu", *recipe])
        with open(pred / "metrics.csv", newline="") as f:
            rows = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
        labels = hashlib.sha256()
        import nibabel as nib

        for p in sorted(pred.glob("*.nii.gz")):
            labels.update(p.name.encode())
            labels.update(np.ascontiguousarray(np.asarray(nib.load(str(p)).dataobj)).tobytes())
        out[name] = {"cache": cache_digest(c), "weights": weights_digest(run / "best_model.pth"),
                     "predictions": labels.hexdigest(),
                     "metrics": {"eval": _numbers(json.loads((work / f"{name}.json").read_text())),
                                 "predict": rows}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--update", action="store_true", help=f"write the fingerprint to {EXPECTED}")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as d:
        fp = compute(Path(d))
    text = json.dumps(fp, indent=1, sort_keys=True, default=float) + "\n"
    if args.update:
        EXPECTED.parent.mkdir(parents=True, exist_ok=True)
        EXPECTED.write_text(text)
        print(f"wrote {EXPECTED}", file=sys.stderr)
    print(text, end="")


if __name__ == "__main__":
    main()
