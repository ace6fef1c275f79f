"""`brats2d view`'s server: only files under its folders, read-only; uploads checked before anything parses them."""

from __future__ import annotations

import http.client
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from brats2d.view.app import make_server
from brats2d.view.files import Refused, nifti_problem, resolve, split_request_path
from brats2d.view.server import NIIVUE, ViewServer


@pytest.fixture()
def fake_niivue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server refuses to start without NiiVue; these tests do not render, so a stand-in file will do."""
    if not NIIVUE.is_file():
        stub = tmp_path / "niivue.js"
        stub.write_text("export class Niivue {}\n")
        monkeypatch.setattr("brats2d.view.server.NIIVUE", stub)


@pytest.fixture()
def server(view_run: dict[str, Path], fake_niivue: None) -> Iterator[ViewServer]:
    s = make_server(view_run["pred"], view_run["raw"], [view_run["run"]], port=0, device="cpu", max_upload_mb=2,
                    tta=False)
    t = threading.Thread(target=s.serve_forever, daemon=True)
    t.start()
    yield s
    s.shutdown()
    s.server_close()
    assert s.jobs is not None
    s.jobs.cleanup()


def get(s: ViewServer, path: str, method: str = "GET", body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", s.server_address[1], timeout=30)
    c.putrequest(method, path, skip_host=True, skip_accept_encoding=True)  # the path goes out byte for byte
    hdrs = {"Host": f"127.0.0.1:{s.server_address[1]}", **(headers or {})}
    if body is not None:
        hdrs.setdefault("Content-Length", str(len(body)))
    for k, v in hdrs.items():
        c.putheader(k, v)
    c.endheaders(body)
    r = c.getresponse()
    return r.status, r.read()


def test_catalog_lists_patients_with_metrics_and_layers(server: ViewServer) -> None:
    status, body = get(server, "/api/cases")
    assert status == 200
    cases = json.loads(body)["cases"]
    assert len(cases) == 3
    scored = [c for c in cases if c["metrics"]]
    assert len(scored) == 2 and all(0 <= c["metrics"]["wt"]["dice"] <= 1 for c in scored)
    for c in cases:
        assert {"flair", "pred", "uncertainty", "explain"} <= set(c["layers"])
        status, data = get(server, c["layers"]["pred"])
        assert status == 200 and data[:2] == b"\x1f\x8b"


@pytest.mark.parametrize("path", [
    "/files/raw/../../../etc/passwd",
    "/files/raw/%2e%2e/%2e%2e/etc/passwd",
    "/files/raw/..%2f..%2fetc%2fpasswd",
    "/files/raw/%2fetc%2fpasswd",
    "/files/raw//etc/passwd",
    "/files//etc/passwd",
    "/files/raw/Synth_000/%00.nii.gz",
    "/files/raw/Synth_000/..%5c..%5cx.nii.gz",
    "/static/../server.py",
    "/static/%2e%2e/server.py",
])
def test_traversal_is_refused(server: ViewServer, path: str) -> None:
    status, body = get(server, path)
    assert status in (400, 403, 404), path
    assert b"root:" not in body and b"import" not in body


def test_symlink_out_of_the_root_is_refused(server: ViewServer, view_run: dict[str, Path], tmp_path: Path) -> None:
    secret = tmp_path / "secret.nii.gz"
    secret.write_bytes(b"\x1f\x8bSECRET")
    link = view_run["pred"] / "leak_pred.nii.gz"
    os.symlink(secret, link)
    inside = view_run["pred"] / "alias.csv"
    os.symlink(view_run["pred"] / "metrics.csv", inside)
    try:
        status, body = get(server, "/files/pred/leak_pred.nii.gz")
        assert status == 403 and b"SECRET" not in body
        assert get(server, "/files/pred/alias.csv")[0] == 200  # a link that stays inside is fine
        from brats2d.view.catalog import Catalog

        assert "leak" not in {c.id for c in Catalog(view_run["pred"], view_run["raw"]).cases()}
    finally:
        link.unlink()
        inside.unlink()


def test_resolve_refuses_what_the_routes_would_not_reach(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.nii.gz").write_bytes(b"x")
    assert resolve(tmp_path, split_request_path("a/x.nii.gz")) == (tmp_path / "a" / "x.nii.gz").resolve()
    for bad in ("/etc/passwd", "a/../a/x.nii.gz", "a/.hidden.nii.gz", "", "a//x.nii.gz", "a\\x.nii.gz"):
        with pytest.raises(Refused):
            resolve(tmp_path, split_request_path(bad))
    with pytest.raises(Refused):  # a type the viewer never needs
        resolve(tmp_path, ["a", "x.py"])


def test_read_only_and_localhost_only(server: ViewServer) -> None:
    assert get(server, "/api/cases", "PUT", b"")[0] == 501
    assert get(server, "/api/cases", "DELETE")[0] == 501
    assert get(server, "/files/pred/metrics.csv", "POST", b"")[0] == 404
    status, body = get(server, "/api/cases", headers={"Host": "evil.example:80"})  # DNS rebinding
    assert status == 421


def multipart(files: dict[str, bytes]) -> tuple[bytes, dict[str, str]]:
    b = "brats2dtestboundary"
    body = b"".join(f'--{b}\r\nContent-Disposition: form-data; name="files"; filename="{n}"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for n, data in files.items())
    body += f"--{b}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={b}"}


def upload(server: ViewServer, files: dict[str, bytes]) -> tuple[int, dict[str, Any]]:
    body, headers = multipart(files)
    status, out = get(server, "/api/upload", "POST", body, headers)
    return status, json.loads(out)


def test_a_non_nifti_upload_gets_a_clear_error(server: ViewServer) -> None:
    status, out = upload(server, {"P1_flair.nii.gz": b"this is not an image" * 20})
    assert status == 400
    assert out["error"].startswith("P1_flair.nii.gz: ") and "NIfTI" in out["error"]
    status, out = upload(server, {"notes.txt": b"hello"})
    assert status == 400 and "not a NIfTI file name" in out["error"]
    status, out = upload(server, {"../../evil_flair.nii.gz": b"x"})  # the name is reduced to its last part
    assert status == 400 and "evil_flair.nii.gz" in out["error"] and "Traceback" not in out["error"]


def test_an_oversize_upload_is_refused_before_it_is_read(server: ViewServer) -> None:
    c = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    c.putrequest("POST", "/api/upload")
    c.putheader("Content-Type", "multipart/form-data; boundary=x")
    c.putheader("Content-Length", str(3 * 2**20))  # over the 2 MB limit; no body is sent at all
    c.endheaders()
    r = c.getresponse()
    assert r.status == 413 and "limit" in json.loads(r.read())["error"]


def test_nifti_signature(view_run: dict[str, Path], tmp_path: Path) -> None:
    good = next((view_run["raw"]).glob("*/*_flair.nii.gz"))
    assert nifti_problem(good) is None
    import gzip
    raw = gzip.decompress(good.read_bytes())
    (tmp_path / "plain.nii").write_bytes(raw)
    assert nifti_problem(tmp_path / "plain.nii") is None
    (tmp_path / "pair.nii").write_bytes(raw[:344] + b"ni1\x00" + raw[348:])
    assert "pair" in (nifti_problem(tmp_path / "pair.nii") or "")
    (tmp_path / "cut.nii.gz").write_bytes(good.read_bytes()[:30])
    assert nifti_problem(tmp_path / "cut.nii.gz") is not None


def test_uploaded_patient_is_predicted_and_listed(server: ViewServer, view_run: dict[str, Path]) -> None:
    import time

    folder = next(p for p in sorted(view_run["raw"].iterdir()) if list(p.glob("*_seg.nii.gz")))
    status, out = upload(server, {f.name: f.read_bytes() for f in sorted(folder.iterdir())})
    assert status == 202, out
    for _ in range(600):
        job = json.loads(get(server, f"/api/jobs/{out['job']}")[1])
        if job["state"] in ("done", "error"):
            break
        time.sleep(0.1)
    assert job["state"] == "done", job
    case = next(c for c in json.loads(get(server, "/api/cases")[1])["cases"] if c["id"] == job["case_id"])
    assert case["source"] == "upload" and case["metrics"]["wt"]["dice"] >= 0
    for kind in ("flair", "seg", "pred", "explain"):
        assert get(server, case["layers"][kind])[0] == 200


def test_cli_view_needs_something_to_show_and_predict_explain_writes_maps(view_run: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    from click.testing import CliRunner

    from brats2d.cli.main import cli

    r = CliRunner().invoke(cli, ["view"])
    assert r.exit_code == 2 and "PRED_DIR" in r.output
    case = sorted(view_run["raw"].iterdir())[0]
    r = CliRunner().invoke(cli, ["predict", str(case), "--run-dir", str(view_run["run"]), "--out", str(tmp_path),
                                 "--explain", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    import nibabel as nib

    ex = nib.load(str(tmp_path / f"{case.name}_explain.nii.gz"))
    flair = nib.load(str(next(case.glob("*_flair.nii.gz"))))
    assert ex.shape == flair.shape and abs(ex.affine - flair.affine).max() < 1e-5
    data = ex.get_fdata()
    assert data.min() >= 0 and data.max() <= 1 + 1e-6


def test_cli_view_prints_the_url_and_warns_off_localhost(view_run: dict[str, Path], fake_niivue: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from brats2d.cli.main import cli

    served: list[ViewServer] = []
    monkeypatch.setattr("brats2d.view.app.serve_forever", lambda s: (served.append(s), s.server_close()))
    r = CliRunner().invoke(cli, ["view", str(view_run["pred"]), "--raw", str(view_run["raw"]), "--port", "0"])
    assert r.exit_code == 0, r.output
    assert "Not for clinical use" in r.output and f"http://127.0.0.1:{served[0].server_address[1]}/" in r.output
    assert "warning" not in r.output
    r = CliRunner().invoke(cli, ["view", str(view_run["pred"]), "--host", "0.0.0.0", "--port", "0"])
    assert r.exit_code == 0 and "warning: serving on 0.0.0.0" in r.output
