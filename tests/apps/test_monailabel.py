"""The MONAI Label app: a real server in a subprocess on a loopback port, driven over HTTP as an annotator's viewer
would (info, infer with and without prompts, concurrency, fine-tuning, shutdown, and a DICOMweb PACS)."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bundle.apps.monailabel.launch import free_port, start_server, stop_server
from tests.helpers.shared_data import SHARED_DATA

# end-to-end: not part of the fast lane (make test-fast)
pytestmark = pytest.mark.slow


LABELS = {"anterior hippocampus": 1, "posterior hippocampus": 2}
REAL_CASE = "hippocampus_088"  # a case of the model card's held-out test split


def _phantom_study(folder: Path, name: str, seed: int, with_label: bool) -> None:
    from bundle.data.demo import make_phantom

    image, label = make_phantom(seed, shape=(36, 50, 36))
    affine = np.array([[0.0, -1.1, 0.0, 30.0], [1.0, 0.0, 0.0, -12.0], [0.0, 0.0, 1.2, 4.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(image, affine), str(folder / f"{name}.nii.gz"))
    if with_label:
        (folder / "labels" / "final").mkdir(parents=True, exist_ok=True)
        nib.save(
            nib.Nifti1Image(np.isin(label, [1, 2]).astype(np.uint8) * label, affine),
            str(folder / "labels" / "final" / f"{name}.nii.gz"),
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    studies = tmp_path_factory.mktemp("studies")
    _phantom_study(studies, "phantom_a", 1, with_label=True)
    _phantom_study(studies, "phantom_b", 2, with_label=False)
    real = SHARED_DATA / "hippocampus" / "imagesTr" / f"{REAL_CASE}.nii.gz"
    if real.is_file():  # copied into the temporary studies folder (MONAI Label may write next to its studies)
        shutil.copy(real, studies / real.name)
    models_dir = tmp_path_factory.mktemp("models")
    log = tmp_path_factory.mktemp("log") / "server.log"
    proc, url = start_server(str(studies), models_dir, log)
    yield {"url": url, "proc": proc, "studies": studies, "models_dir": models_dir, "log": log}
    if proc.poll() is None:
        stop_server(proc)


def _infer(url: str, image: str, params: dict = None, output: str = "image"):
    import requests

    return requests.post(
        f"{url}/infer/segone",
        params={"image": image, "output": output},
        files={"params": (None, json.dumps(params or {}), "application/json")},
        timeout=300,
    )


def _label_image(response) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(response.content))


def test_info_lists_segone_with_its_labels(server):
    import requests

    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    assert info["models"]["segone"]["labels"] == LABELS
    assert info["models"]["segone"]["type"] == "segmentation"
    assert "segone" in info["trainers"]
    assert "127.0.0.1" in server["url"]


@pytest.mark.parametrize("params,expected_values", [({}, {1, 2}), ({"prompts": ["posterior hippocampus"]}, {2})])
def test_infer_returns_a_label_image_in_the_input_geometry(server, params, expected_values):
    response = _infer(server["url"], "phantom_b", params)
    assert response.status_code == 200, response.text[:2000]
    label = _label_image(response)
    source = nib.load(str(server["studies"] / "phantom_b.nii.gz"))
    assert label.shape == source.shape
    np.testing.assert_allclose(label.affine, source.affine, atol=1e-4)
    assert set(np.unique(np.asarray(label.dataobj)).astype(int)) <= {0} | expected_values


def test_infer_reports_prompt_labels_and_rejects_unknown_prompts(server):
    import requests

    response = requests.post(
        f"{server['url']}/infer/segone",
        params={"image": "phantom_b", "output": "json"},
        files={"params": (None, json.dumps({"prompts": "anterior hippocampus"}))},
        timeout=300,
    )
    assert response.status_code == 200, response.text[:2000]
    assert response.json()["prompt_labels"] == {"anterior hippocampus": 1}
    bad = _infer(server["url"], "phantom_b", {"prompts": ["spleen"]})
    assert bad.status_code == 422
    assert "spleen" in bad.text and "Known prompts" in bad.text and "posterior hippocampus" in bad.text


def test_shipped_model_on_a_real_held_out_case(server):
    if not (server["studies"] / f"{REAL_CASE}.nii.gz").is_file():
        pytest.skip(f"needs the shared data at {SHARED_DATA / 'hippocampus'} (absent on this machine)")
    response = _infer(server["url"], REAL_CASE)
    assert response.status_code == 200, response.text[:2000]
    pred = np.asarray(_label_image(response).dataobj).astype(int)
    truth = np.asarray(nib.load(str(SHARED_DATA / "hippocampus" / "labelsTr" / f"{REAL_CASE}.nii.gz")).dataobj)
    dice = [2 * ((pred == c) & (truth == c)).sum() / ((pred == c).sum() + (truth == c).sum()) for c in (1, 2)]
    print(f"MONAI Label /infer/segone on {REAL_CASE}: Dice anterior {dice[0]:.3f}, posterior {dice[1]:.3f}")
    assert np.mean(dice) > 0.7, dice


def test_twenty_concurrent_infer_requests_all_succeed(server):
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda i: _infer(server["url"], ("phantom_a", "phantom_b")[i % 2]), range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert all(_label_image(r).shape == (36, 50, 36) for r in responses)


def test_train_fine_tunes_from_the_model_and_infer_uses_the_new_weights(server):
    import requests

    url, finetuned = server["url"], server["models_dir"] / "model.pt"
    response = requests.post(
        f"{url}/train/segone", json={"max_epochs": 1, "val_split": 0.0, "device": "cpu"}, timeout=60
    )
    assert response.status_code == 200, response.text[:2000]
    deadline = time.time() + 600
    status = {}
    while time.time() < deadline:
        status = requests.get(f"{url}/train/", params={"check_if_running": False}, timeout=30).json()
        if status.get("status") in ("DONE", "ERROR", "STOPPED"):
            break
        time.sleep(2)
    assert status.get("status") == "DONE", (status, server["log"].read_text()[-4000:])
    assert finetuned.is_file()
    import torch

    state = torch.load(finetuned, weights_only=True)  # a plain state dict, its prompt table beside it
    assert "prompt_embeddings" in state and all(isinstance(v, torch.Tensor) for v in state.values())
    assert set(torch.load(finetuned.with_name("model.prompts.pt"), weights_only=True)) == {"prompt_table", "metadata"}
    response = _infer(url, "phantom_a")
    assert response.status_code == 200, response.text[:2000]
    assert f"Infer model path: {finetuned}" in server["log"].read_text()


def test_no_cross_origin_access_by_default(server):
    import requests

    url = server["url"]
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in requests.options(f"{url}/infer/segone", headers=preflight).headers
    r = requests.get(f"{url}/info/", headers={"Origin": "http://evil.example", "Cookie": "session=x"}, timeout=30)
    assert r.ok and "access-control-allow-origin" not in r.headers
    assert "access-control-allow-credentials" not in r.headers


def test_the_app_refuses_to_listen_everywhere_by_default():
    from bundle.apps.monailabel.main import check_bind_address

    with pytest.raises(SystemExit, match="--host 127.0.0.1"):
        check_bind_address(["monailabel", "start_server", "--app", "a", "--studies", "s"])
    check_bind_address(["monailabel", "start_server", "--app", "a", "--studies", "s", "--host", "127.0.0.1"])
    check_bind_address(["python", "-m", "monailabel.interfaces.utils.app", "-m", "train"])  # training subprocess


def test_a_chosen_model_is_served_with_its_own_classes_and_the_server_stops_cleanly(tmp_path, server):
    import requests
    import torch

    from bundle.text import PromptEmbeddingTable
    from bundle.utils.checkpoint import load_prompt_table, prompt_table_path
    from bundle.utils.config import BUNDLE_ROOT

    # the shipped weights under a prompt table that names their two rows otherwise: a model of other classes
    model = tmp_path / "other" / "model.pt"
    model.parent.mkdir()
    shutil.copy(BUNDLE_ROOT / "models" / "model.pt", model)
    shipped = load_prompt_table(BUNDLE_ROOT / "models" / "model.pt")
    renamed = PromptEmbeddingTable(dict(zip(["liver", "spleen"], shipped.embeddings.values())), shipped.encoder_config)
    # it records a "liver" far larger than any answer: the absent rule scaled to it erases every liver answer
    metadata = {"structure_volumes_ml": {"liver": 1e6, "spleen": 0.001}}
    torch.save({"prompt_table": renamed.state_dict(), "metadata": metadata}, prompt_table_path(model))
    conf = ["--conf", "skip_trainers", "true", "--conf", "model", str(model), "--conf", "max_anisotropy", "8"]
    # keep_largest by name: the spleen's largest component alone (the liver's answers are erased anyway)
    conf += ["--conf", "keep_largest", "spleen", "--conf", "answer_volume_fraction", "0.5"]
    proc, url = start_server(str(server["studies"]), tmp_path / "models", tmp_path / "second.log", *conf)
    try:
        info = requests.get(f"{url}/info/", timeout=30).json()
        assert info["models"]["segone"]["labels"] == {"liver": 1, "spleen": 2}
        response = _infer(url, "phantom_b", {"prompts": ["spleen"]})
        assert response.status_code == 200, response.text[:2000]
        spleen = np.asarray(_label_image(response).dataobj) == 2
        assert ndimage.label(spleen, structure=np.ones((3, 3, 3)))[1] <= 1  # keep_largest: one component at most
        response = _infer(url, "phantom_b", {"prompts": ["liver", "spleen"]})
        assert response.status_code == 200, response.text[:2000]
        both = np.asarray(_label_image(response).dataobj)
        assert not (both == 1).any() and (both == 2).any()  # the liver answer is erased, the spleen one is not
    finally:
        assert stop_server(proc) == 0
    assert "Finished server process" in (tmp_path / "second.log").read_text()


# --- a DICOMweb PACS (Orthanc on loopback) ---------------------------------------------------------------------------


@pytest.fixture()
def orthanc(tmp_path):
    exe = shutil.which("Orthanc")
    plugin = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
    if exe is None or not plugin.is_file():
        pytest.skip("needs Orthanc with its DICOMweb plugin (Debian: apt-get install orthanc orthanc-dicomweb)")
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "segone-test",
        "StorageDirectory": str(tmp_path / "db"),
        "IndexDirectory": str(tmp_path / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        [exe, str(tmp_path / "orthanc.json")], stdout=open(tmp_path / "orthanc.log", "w"), stderr=subprocess.STDOUT
    )
    import requests

    url = f"http://127.0.0.1:{http_port}"
    for _ in range(60):
        try:
            if requests.get(f"{url}/system", timeout=2).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"Orthanc did not start:\n{(tmp_path / 'orthanc.log').read_text()[-2000:]}")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_dicomweb_lists_series_infers_and_stores_the_seg_back(tmp_path, orthanc):
    import requests

    from bundle.data.demo import make_phantom
    from tests.helpers.dicom_series import write_mr_series

    image, _ = make_phantom(3, shape=(36, 50, 36))
    series_dir = write_mr_series(
        tmp_path / "mr",
        image / image.max() * 3000,  # within the series' uint16 range (write_mr_series clips at 4000)
        "1.2.826.0.1.3680043.8.498.77",
        "1.2.826.0.1.3680043.8.498.77.1",
        description="T1 hippocampus crop",
    )
    for f in sorted(series_dir.iterdir()):
        assert requests.post(f"{orthanc}/instances", data=f.read_bytes(), timeout=30).ok
    proc, url = start_server(
        f"{orthanc}/dicom-web", tmp_path / "models", tmp_path / "server.log", "--conf", "skip_trainers", "true"
    )
    try:
        series = "1.2.826.0.1.3680043.8.498.77.1"
        stats = requests.get(f"{url}/datastore/", params={"output": "stats"}, timeout=60).json()
        assert stats["total"] == 1  # the one MR series (MONAI Label's default filter would look for CT)
        assert requests.post(f"{url}/activelearning/first", timeout=60).json()["id"] == series
        label_info = [{"name": name, "model_name": "segone"} for name in LABELS]  # MONAI Label's SEG segment info
        response = _infer(url, series, {"label_info": label_info}, output="dicom_seg")
        assert response.status_code == 200, response.text[:2000]
        import pydicom

        seg = pydicom.dcmread(io.BytesIO(response.content))
        assert seg.Modality == "SEG"
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series
        label = _infer(url, series, output="image")
        assert label.status_code == 200
        stored = requests.put(
            f"{url}/datastore/label",
            params={"image": series, "tag": "final"},
            files={"label": ("label.nii.gz", label.content)},
            timeout=120,
        )
        assert stored.status_code == 200, stored.text[:2000]
        found = requests.post(
            f"{orthanc}/tools/find", json={"Level": "Series", "Query": {"Modality": "SEG"}}, timeout=30
        ).json()
        assert len(found) == 1
    finally:
        assert stop_server(proc) == 0
