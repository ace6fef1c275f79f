"""`brats2d view` in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

Skips, saying why, when Chromium, Playwright or NiiVue (make install) is missing. Screenshots go to
$BRATS2D_SCREENSHOTS when set, else to the test's temporary folder (the path is printed).
"""

from __future__ import annotations

import io
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from brats2d.view.app import make_server
from brats2d.view.server import NIIVUE, ViewServer

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
if CHROMIUM is None:
    pytest.skip("no chromium binary (apt-get install chromium) for the browser test", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
if not NIIVUE.is_file():
    pytest.skip(f"NiiVue is not installed at {NIIVUE} (make install runs npm ci)", allow_module_level=True)

# SwiftShader gives WebGL2 without a GPU; the sandbox needs privileges a CI container does not have.
ARGS = ["--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--ignore-gpu-blocklist"]


@pytest.fixture(scope="module")
def served(view_run: dict[str, Path]) -> Iterator[ViewServer]:
    s = make_server(view_run["pred"], view_run["raw"], [view_run["run"]], port=0, device="cpu", max_upload_mb=64,
                    tta=False)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    yield s
    s.shutdown()
    s.server_close()
    assert s.jobs is not None
    s.jobs.cleanup()


@pytest.fixture()
def page(served: ViewServer) -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 860})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture()
def shots(tmp_path: Path) -> Path:
    d = Path(os.environ.get("BRATS2D_SCREENSHOTS", tmp_path / "screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {d}")
    return d


def canvas(pg: Any) -> np.ndarray:
    """The rendered volumes as an RGB array (what the user sees in the viewer's canvas)."""
    from PIL import Image

    pg.wait_for_timeout(300)  # NiiVue draws on the next animation frame
    return np.asarray(Image.open(io.BytesIO(pg.locator("#gl").screenshot())).convert("RGB")).astype(np.int16)


def changed(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(a - b).sum(axis=2) > 30).mean())


def test_list_viewer_slider_overlay_and_uploads(page: Any, served: ViewServer, shots: Path,
                                                view_run: dict[str, Path]) -> None:
    pg = page
    pg.goto(served.url)
    rows = pg.locator("#cases tbody tr")
    rows.first.wait_for()
    assert rows.count() == 3
    assert "Not for clinical use" in pg.locator("#banner").inner_text()
    heads = pg.locator("#cases thead th").all_inner_texts()
    assert any(h.startswith("Dice WT") for h in heads) and any(h.startswith("HD95 WT") for h in heads)
    dice = [float(t) for t in pg.locator("#cases tbody .chip").all_inner_texts()]
    assert len(dice) == 2 and dice == sorted(dice), "the patient list must open worst first"
    pg.screenshot(path=str(shots / "1-patients.png"))

    rows.first.click()
    pg.wait_for_selector("body[data-loaded]")
    pg.screenshot(path=str(shots / "2-viewer.png"))
    before = canvas(pg)
    assert before.std() > 5, "the canvas is blank: NiiVue rendered nothing"
    axial = pg.locator("#slice-2")
    z = int(axial.input_value())
    new_z = z - 3 if z >= 3 else z + 3  # a few slices away: a visibly different image
    axial.evaluate("(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", str(new_z))
    after = canvas(pg)
    assert pg.locator("#slice-2-v").inner_text() == str(new_z)
    assert changed(before, after) > 0.01, "moving the axial slider did not change the rendered image"
    pg.screenshot(path=str(shots / "3-slider-moved.png"))

    axial.evaluate("(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", str(z))
    pg.locator("#to-tumour").click()
    shown = canvas(pg)
    pg.locator("#show-explain").uncheck()
    hidden = canvas(pg)
    assert changed(shown, hidden) > 0.002, "switching the explanation overlay off changed nothing on screen"
    pg.locator("#show-pred").uncheck()
    pg.locator("#show-uncertainty").uncheck()
    assert changed(hidden, canvas(pg)) > 0.0005, "switching prediction and uncertainty off changed nothing"
    pg.screenshot(path=str(shots / "4-overlays-off.png"))

    pg.goto(served.url + "#/upload")
    pg.locator("#file-input").set_input_files([{"name": "P7_flair.nii.gz", "mimeType": "application/gzip",
                                                "buffer": b"definitely not a scan" * 50}])
    pg.locator("#send").click()
    err = pg.locator("#upload-error")
    err.wait_for(state="visible")
    assert "P7_flair.nii.gz" in err.inner_text() and "NIfTI" in err.inner_text()
    assert "Traceback" not in pg.content()
    pg.screenshot(path=str(shots / "5-upload-bad-file.png"))

    folder = next(p for p in sorted(view_run["raw"].iterdir()) if list(p.glob("*_seg.nii.gz")))
    pg.locator("#file-input").set_input_files([str(f) for f in sorted(folder.iterdir())])
    pg.locator("#send").click()
    pg.wait_for_function("() => location.hash.startsWith('#/case/') && document.body.dataset.loaded === "
                         "decodeURIComponent(location.hash.slice(7))", timeout=120_000)
    assert folder.name in pg.locator("#case-name").inner_text()
    assert canvas(pg).std() > 5
    pg.screenshot(path=str(shots / "6-uploaded-patient.png"))
