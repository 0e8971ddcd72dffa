"""The MONAI Label app against a real ``monailabel start_server`` on 127.0.0.1: tasks listed, every task answered
through ``MONAILabelClient`` and over plain HTTP, bad requests answered with the reason, the server alive after
each, and nothing listening beyond the loopback address."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from helpers.bundle_helpers import BRAIN_PROG, CXR_PROG, TAU

from monai_pie.data import load_2d_image
from monai_pie.serving.server import start_local_server

pytest.importorskip("monailabel")
requests = pytest.importorskip("requests")
psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.slow
FAST = {"num_inference_steps": 3, "num_rounds": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("label")
    studies = root / "studies"
    studies.mkdir()
    shutil.copy(BRAIN_PROG / "docs" / "example_t1.nii.gz", studies / "t1.nii.gz")
    shutil.copy(CXR_PROG / "docs" / "example_cxr.png", studies / "cxr.png")
    shutil.copy(TAU / "docs" / "example_tau_suvr.nii.gz", studies / "tau.nii.gz")
    app = subprocess.run([sys.executable, "-m", "monai_pie.apps.cli", "label", "app", "--output_dir",
                          str(root / "app")], capture_output=True, text=True, check=True).stdout.strip()
    running = start_local_server(app, studies, env={"MONAI_LABEL_SESSION_PATH": str(root / "sessions")})
    print(f"server up in {running.startup_s:.1f} s")
    try:
        yield {"url": running.url, "proc": running.process, "studies": studies}
    finally:
        running.stop()


def _alive(server) -> None:
    assert requests.get(f"{server['url']}/info/", timeout=10).status_code == 200


def test_info_lists_every_task_with_its_parameters(server):
    info = requests.get(f"{server['url']}/info/", timeout=10).json()
    models = info["models"]
    assert sorted(models) == ["brain_generation", "brain_progression", "cxr_progression", "cxr_text_to_image",
                              "tau_anomaly"]
    assert models["brain_progression"]["type"] == "others" and models["brain_progression"]["dimension"] == 3
    assert models["brain_progression"]["config"]["target_diagnosis"] == "AD"
    assert models["cxr_progression"]["parameters"]["num_rounds"]["range"] == [1, 50]


def test_listens_on_loopback_only(server):
    listening = [c for p in [psutil.Process(server["proc"].pid), *psutil.Process(server["proc"].pid).children(True)]
                 for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)


def test_every_task_through_the_client(server, tmp_path):
    from monailabel.client import MONAILabelClient

    client = MONAILabelClient(server["url"], tmpdir=str(tmp_path))
    path, params = client.infer("brain_progression", "t1", {**FAST, "target_diagnosis": "AD"})
    x = nib.load(server["studies"] / "t1.nii.gz")
    out = nib.load(path)
    assert out.shape == x.shape and np.allclose(out.affine, x.affine) and np.isfinite(out.get_fdata()).all()
    assert np.abs(out.get_fdata() - x.get_fdata()).max() > 0 and params["params"]["num_rounds"] == 1
    path, _ = client.infer("brain_progression", "t1", {**FAST, "frames": "all"})
    assert nib.load(path).shape == (*x.shape, 2)
    path, params = client.infer("cxr_progression", "cxr", {**FAST, "prompt": "A chest X-ray image, pleural effusion"})
    xc, edited = load_2d_image(server["studies"] / "cxr.png"), load_2d_image(path)
    assert edited.shape == xc.shape and np.abs(edited - xc).max() > 0
    path, params = client.infer("brain_generation", "t1", {"num_inference_steps": 3, "age": 75})
    assert nib.load(path).shape == (64, 80, 64) and params["summary"]["covariates"]["age"] == 75.0
    path, _ = client.infer("cxr_text_to_image", "cxr", {"num_inference_steps": 3,
                                                         "prompt": "A chest X-ray image, cardiomegaly"})
    assert load_2d_image(path).shape == (64, 64)
    path, params = client.infer("tau_anomaly", "tau", {"num_inference_steps": 5, "t0": 0.4})
    pet, amap = nib.load(server["studies"] / "tau.nii.gz"), nib.load(path)
    assert amap.shape == pet.shape and np.allclose(amap.affine, pet.affine) and amap.get_fdata().min() >= 0
    assert len(params["summary"]["regional"]) == 6


def test_plain_http_with_an_uploaded_file(server, tmp_path):
    with open(CXR_PROG / "docs" / "example_cxr.png", "rb") as f:
        r = requests.post(f"{server['url']}/infer/cxr_progression", params={"output": "image"},
                          files={"file": ("upload.png", f, "image/png")}, data={"params": json.dumps(FAST)},
                          timeout=120)
    assert r.status_code == 200, r.text
    (tmp_path / "result.png").write_bytes(r.content)
    assert load_2d_image(tmp_path / "result.png").shape == (128, 128)
    r = requests.post(f"{server['url']}/infer/cxr_progression", params={"image": "cxr", "output": "json"},
                      data={"params": json.dumps(FAST)}, timeout=120)
    assert r.status_code == 200 and r.json()["task"] == "cxr_progression"


@pytest.mark.parametrize("task, image, params, status, words", [
    ("brain_regression", "t1", {}, 404, "no task 'brain_regression'"),
    ("brain_progression", "t2", {}, 404, "image 't2' is neither a studies image id"),
    ("brain_progression", "t1", {"num_rounds": 500}, 422, "`num_rounds` must be in [1, 50]"),
    ("brain_progression", "t1", {"strenght": 0.5}, 422, "did you mean 'strength'"),
    ("brain_progression", "t1", {"age": "old"}, 422, "`age` must be a number"),
    ("cxr_progression", "cxr", {"prompt": "A chest X-ray image, fracture"}, 400, "unknown finding 'fracture'"),
    ("brain_progression", "cxr", FAST, 400, "3D"),  # a 2D image to a 3D task
])
def test_bad_requests_get_the_reason_and_the_server_keeps_serving(server, task, image, params, status, words):
    r = requests.post(f"{server['url']}/infer/{task}", params={"image": image},
                      data={"params": json.dumps(params)}, timeout=120)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    _alive(server)
