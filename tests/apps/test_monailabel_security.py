"""Security of the MONAI Label app, as a hostile client would try it against a real server subprocess (issue #14):
config expressions in training options, paths out of the studies folder, oversized uploads, CORS, unsafe model
loading, and client mistakes that must be 4xx with a message. The threat model is docs/security.md."""

from __future__ import annotations

import json
import os
import pickle
import time

import nibabel as nib
import numpy as np
import pytest

from bundle.apps.monailabel.launch import start_server, stop_server
from bundle.apps.monailabel.main import check_bind_address
from bundle.apps.monailabel.security import (
    RequestError,
    check_plain_data,
    validate_id,
    validate_image_request,
    validate_infer_params,
    validate_tag,
    validate_train_params,
)

VIEWER = "http://viewer.example:3000"
MAX_UPLOAD_MB = 2


# --- the checks themselves (no server) -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../../victim", "/abs/path.nii.gz", "a/b", ".hidden", "", "x" * 201, 5, None, "a\\b"])
def test_ids_are_names_never_paths(bad):
    with pytest.raises(RequestError) as e:
        validate_id(bad)
    assert e.value.status_code == 400 and "never paths" in e.value.detail


def test_valid_ids_and_tags_pass():
    assert validate_id("hippocampus_088") == "hippocampus_088"
    assert validate_id("1.2.826.0.1.3680043.8.498.77.1") == "1.2.826.0.1.3680043.8.498.77.1"
    assert validate_tag("final") == "final"
    for bad in ("../x", "final/../../x", "", "a.b"):
        with pytest.raises(RequestError, match="invalid label tag"):
            validate_tag(bad)


@pytest.mark.parametrize(
    "params,message",
    [
        ({"max_epochs": "$__import__('os').system('id')"}, "would evaluate"),
        ({"max_epochs": "@network_def"}, "would evaluate"),
        ({"device": "%configs/inference.json#x"}, "would evaluate"),
        ({"max_epochs": 0}, "integer from 1 to 1000"),
        ({"max_epochs": True}, "integer from 1 to 1000"),
        ({"max_epochs": 1.5}, "integer from 1 to 1000"),
        ({"val_split": 2}, "number from 0.0 to 0.9"),
        ({"device": "cpu; rm -rf /"}, "'cpu', 'cuda' or 'cuda:N'"),
        ({"tracking_uri": "http://attacker"}, "tracking is not available"),
        ({"model_filename": "../../etc/passwd"}, "model file name"),
        ({"bundle_path": "/tmp"}, "set by the server"),
        ({"dataset": "CacheDataset"}, "unknown train parameter 'dataset'"),
        ({"max_epochs": [1, {"x": ["$1"]}]}, "would evaluate"),
    ],
)
def test_train_options_are_typed_data(params, message):
    with pytest.raises(RequestError, match=message) as e:
        validate_train_params(params, ["segone"])
    assert e.value.status_code == 422


def test_train_options_monai_label_clients_send_pass():
    options = {
        "device": "cpu",
        "pretrained": True,
        "max_epochs": 5,
        "val_split": 0.2,
        "multi_gpu": False,
        "gpus": "all",
        "tracking": ["None", "mlflow"],
        "tracking_uri": "",
        "tracking_experiment_name": "",
        "run_id": "",
        "model_filename": ["model.pt"],
    }
    assert validate_train_params({**options, "model": "segone"}, ["segone"]) == options
    assert validate_train_params({"segone": {"max_epochs": 2}}, ["segone"]) == {"segone": {"max_epochs": 2}}
    with pytest.raises(RequestError, match="unknown model") as e:
        validate_train_params({"model": "other"}, ["segone"])
    assert e.value.status_code == 404


@pytest.mark.parametrize(
    "params,message",
    [
        ({"image": "/etc/passwd"}, "set by the server"),
        ({"session": {}}, "set by the server"),
        ({"save_label": True}, "set by the server"),
        ({"label_tag": "../x"}, "set by the server"),
        ({"prompts": "$open('/etc/passwd').read()"}, "would evaluate"),
        ({"prompts": ["x" * 300]}, "up to 200"),
        ({"prompts": 3}, "list of up to 32 texts"),
        ({"cache_transforms": True}, "unknown infer parameter"),
        ({"result_dtype": "object"}, "expected one of"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_infer_params_are_typed_data(params, message):
    with pytest.raises(RequestError, match=message):
        validate_infer_params(params)


def test_infer_params_clients_send_pass():
    params = {"prompts": ["posterior hippocampus"], "device": "cuda:0", "label_info": [{"name": "a"}]}
    assert validate_infer_params(params) == params
    assert validate_infer_params({"prompts": "anterior hippocampus, posterior hippocampus"})


def test_infer_images_are_ids_uploads_or_sessions(tmp_path):
    import tempfile

    validate_image_request("case_a", lambda i: i == "case_a")
    validate_image_request(f"{tempfile.gettempdir()}/tmpab_d1234.nii.gz", lambda i: False)  # the endpoint's upload
    validate_image_request(
        str(tmp_path / "sessions" / "s1" / "image.nii.gz"), lambda i: False, str(tmp_path / "sessions")
    )
    for image in (str(tmp_path / "x.nii.gz"), f"{tempfile.gettempdir()}/victim.nii.gz", "../x", "a/b"):
        with pytest.raises(RequestError) as e:
            validate_image_request(image, lambda i: True, str(tmp_path / "sessions"))
        assert e.value.status_code == 400
    with pytest.raises(RequestError, match="not in the studies") as e:
        validate_image_request("case_b", lambda i: i == "case_a")
    assert e.value.status_code == 404


def test_plain_data_limits():
    with pytest.raises(RequestError, match="nested too deeply"):
        check_plain_data([[[[[[[["x"]]]]]]]])
    with pytest.raises(RequestError, match="finite"):
        check_plain_data({"a": float("nan")})
    check_plain_data({"a": [1, 2.5, "text with a $ inside", None, True]})


def test_bind_address_equals_form_is_understood():
    check_bind_address(["monailabel", "start_server", "--app", "a", "--studies", "s", "--host=127.0.0.1"])
    check_bind_address(["monailabel", "start_server", "--app", "a", "--studies", "s", "-i", "::1"])
    with pytest.raises(SystemExit, match="--host 127.0.0.1"):
        check_bind_address(["monailabel", "start_server", "--app", "a", "--studies", "s", "--port", "8000"])


# --- against a real server -------------------------------------------------------------------------------------------


def _nifti(path, seed: int = 0) -> None:
    from bundle.data.demo import make_phantom

    image, _ = make_phantom(seed, shape=(36, 50, 36))
    nib.save(nib.Nifti1Image(image, np.diag([1.1, 1.0, 1.2, 1.0])), str(path))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("attack")
    studies = root / "site" / "studies"
    studies.mkdir(parents=True)
    _nifti(studies / "case_a.nii.gz", 1)
    (studies / "corrupt.nii.gz").write_bytes(os.urandom(4000))  # a study that is not an image
    victim = root / "victim.txt"
    victim.write_text("precious")
    _nifti(root / "outside.nii.gz", 2)  # an image outside the studies folder
    proc, url = start_server(
        str(studies),
        root / "models",
        root / "server.log",
        "--conf",
        "max_upload_mb",
        str(MAX_UPLOAD_MB),
        "--conf",
        "cors_origins",
        VIEWER,
    )
    yield {"url": url, "root": root, "studies": studies, "victim": victim, "log": root / "server.log"}
    if proc.poll() is None:
        stop_server(proc)


def _files_outside(root, studies) -> set:
    return {p for p in root.rglob("*") if studies not in p.parents and p != studies and "models" not in p.parts}


def _post_train(url, path="/train/segone", body=None, **kw):
    import requests

    return requests.post(f"{url}{path}", data=json.dumps(body), headers={"content-type": "application/json"}, **kw)


def _no_training(url) -> bool:
    import requests

    return requests.get(f"{url}/train/", timeout=30).status_code == 404  # MONAI Label: no training task ever ran


def test_config_expression_in_training_options_is_refused_and_never_runs(server):
    marker = server["root"] / "pwned"
    expression = f"$__import__('pathlib').Path('{marker}').write_text('x') or 1"
    for path, body in [
        ("/train/segone", {"max_epochs": expression}),
        ("/train/segone", {"val_split": 0.0, "device": f"$print({expression!r})"}),
        ("/train/", {"segone": {"max_epochs": expression}}),
        ("/train/", {"max_epochs": expression}),
    ]:
        response = _post_train(server["url"], path, body, timeout=30)
        assert response.status_code == 422, (path, response.text)
        assert "would evaluate" in response.json()["detail"] and "never config expressions" in response.json()["detail"]
    time.sleep(2)
    assert not marker.exists()
    assert _no_training(server["url"])


@pytest.mark.parametrize(
    "body,query,status,message",
    [
        ({"max_epochs": 100000}, "", 422, "integer from 1 to 1000"),
        ({"max_epochs": "5"}, "", 422, "integer from 1 to 1000"),
        ({"epochs": 5}, "", 422, "unknown train parameter 'epochs'"),
        ({"tracking_uri": "http://attacker.example"}, "", 422, "tracking is not available"),
        ({"max_epochs": 1}, "?run_sync=true", 422, "run_sync is not supported"),
        ([1], "", 400, "must be a JSON object"),
    ],
)
def test_training_options_are_checked_before_training(server, body, query, status, message):
    response = _post_train(server["url"], "/train/segone" + query, body, timeout=30)
    assert response.status_code == status and message in response.json()["detail"], response.text
    assert _no_training(server["url"])


def test_training_request_that_is_not_json_is_a_400(server):
    import requests

    response = requests.post(
        f"{server['url']}/train/segone", data="{max_epochs: 1", headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["detail"]


def test_datastore_paths_stay_inside_the_studies(server):
    import requests

    url, victim = server["url"], server["victim"]
    before = _files_outside(server["root"], server["studies"])
    payload = ("x.nii.gz", (server["root"] / "outside.nii.gz").read_bytes())
    for image in ("../../victim", "../victim", "/tmp/victim", "..", "a/b"):
        r = requests.put(f"{url}/datastore/image", params={"image": image}, files={"file": payload}, timeout=30)
        assert r.status_code == 400 and "never paths" in r.json()["detail"], (image, r.text)
        r = requests.delete(f"{url}/datastore/image", params={"id": image}, timeout=30)
        assert r.status_code == 400, (image, r.text)
        assert requests.get(f"{url}/datastore/image", params={"image": image}, timeout=30).status_code == 400
    # an upload named like a path keeps only its name (MONAI Label takes the id from the file's base name)
    for tag in ("../../x", "../final", "a/b", "."):
        r = requests.put(
            f"{url}/datastore/label", params={"image": "case_a", "tag": tag}, files={"label": payload}, timeout=30
        )
        assert r.status_code == 400 and "invalid label tag" in r.json()["detail"], (tag, r.text)
        assert (
            requests.delete(f"{url}/datastore/label", params={"id": "case_a", "tag": tag}, timeout=30).status_code
            == 400
        )
    assert victim.read_text() == "precious"
    assert _files_outside(server["root"], server["studies"]) == before


def test_datastore_client_mistakes_are_4xx_with_a_message(server):
    import requests

    url = server["url"]
    junk = ("scan.nii.gz", os.urandom(3000))
    r = requests.put(f"{url}/datastore/image", params={"image": "junk"}, files={"file": junk}, timeout=30)
    assert r.status_code == 422 and "not a readable NIfTI image" in r.json()["detail"]
    assert str(server["root"]) not in r.text  # no server paths in answers
    r = requests.put(
        f"{url}/datastore/image", params={"image": "notes"}, files={"file": ("notes.txt", b"hi")}, timeout=30
    )
    assert r.status_code == 422 and "only NIfTI files" in r.json()["detail"]
    r = requests.delete(f"{url}/datastore/image", params={"id": "no_such_case"}, timeout=30)
    assert r.status_code == 404 and "not in the studies" in r.json()["detail"]
    label = ("l.nii.gz", (server["studies"] / "case_a.nii.gz").read_bytes())
    r = requests.put(f"{url}/datastore/label", params={"image": "no_such_case", "tag": "final"}, files={"label": label})
    assert r.status_code == 404
    r = requests.put(f"{url}/datastore/image/info", params={"image": "case_a"}, files={"info": (None, "{bad")})
    assert r.status_code == 400 and "form field 'info' is not valid JSON" in r.json()["detail"]
    r = requests.put(f"{url}/datastore/image", params={"image": "x"}, files={"file": label, "params": (None, "[1]")})
    assert r.status_code == 400 and "must be a JSON object" in r.json()["detail"]


def test_annotator_round_trip_still_works(server):
    import requests

    url, studies = server["url"], server["studies"]
    image = ("new_case.nii.gz", (server["root"] / "outside.nii.gz").read_bytes())
    r = requests.put(f"{url}/datastore/image", params={"image": "new_case"}, files={"file": image}, timeout=30)
    assert r.status_code == 200 and r.json() == {"image": "new_case"}
    assert (studies / "new_case.nii.gz").is_file()
    r = requests.put(
        f"{url}/datastore/label", params={"image": "new_case", "tag": "final"}, files={"label": image}, timeout=30
    )
    assert r.status_code == 200, r.text
    assert (studies / "labels" / "final" / "new_case.nii.gz").is_file()
    assert requests.get(f"{url}/datastore/label", params={"label": "new_case", "tag": "final"}).status_code == 200
    assert requests.delete(f"{url}/datastore/label", params={"id": "new_case", "tag": "final"}).status_code == 200
    assert requests.delete(f"{url}/datastore/image", params={"id": "new_case"}).status_code == 200
    assert not (studies / "new_case.nii.gz").exists()


def _infer(url, image=None, params=None, files=None, **query):
    import requests

    fields = {"params": (None, params if isinstance(params, str) else json.dumps(params or {}))}
    q = {"output": "json", **({"image": image} if image is not None else {}), **query}
    return requests.post(f"{url}/infer/segone", params=q, files={**fields, **(files or {})}, timeout=300)


def test_infer_never_reads_a_path_outside_the_studies(server):
    url, root = server["url"], server["root"]
    existing, missing = _infer(url, str(root / "outside.nii.gz")), _infer(url, str(root / "missing.nii.gz"))
    # the same answer for an existing and a missing file: the path is refused before the file system is looked at
    assert existing.status_code == missing.status_code == 400
    assert existing.json()["detail"].replace("outside", "missing") == missing.json()["detail"]
    for image in ("../outside", "../../etc/passwd", "file:///etc/passwd"):
        assert _infer(url, image).status_code == 400
    # nor through the parameters, which MONAI Label merges over the request
    r = _infer(url, "case_a", {"image": str(root / "outside.nii.gz")})
    assert r.status_code == 422 and "'image' is set by the server" in r.json()["detail"]
    r = _infer(url, "case_a", session_id="../../x")
    assert r.status_code == 400


def test_infer_client_mistakes_are_4xx_with_a_message(server):
    url = server["url"]
    r = _infer(url, "no_such_case")
    assert r.status_code == 404 and "'no_such_case' is not in the studies" in r.json()["detail"]
    r = _infer(url, "case_a", "{not json")
    assert r.status_code == 400 and "form field 'params' is not valid JSON" in r.json()["detail"]
    r = _infer(url, "case_a", {"prompts": 3})
    assert r.status_code == 422 and "'prompts'" in r.json()["detail"]
    r = _infer(url, "case_a", {"device": "$torch.cuda"})
    assert r.status_code == 422 and "would evaluate" in r.json()["detail"]
    r = _infer(url, "corrupt")
    assert r.status_code == 422 and "could not be read" in r.json()["detail"], r.text
    assert str(server["studies"]) not in r.text
    r = _infer(url, files={"file": ("scan.nii.gz", os.urandom(2000))})
    assert r.status_code == 422 and "could not be read" in r.json()["detail"]
    import requests

    r = requests.post(f"{url}/infer/no_model", params={"image": "case_a"}, timeout=60)
    assert r.status_code == 404 and "unknown model" in r.json()["detail"]


def test_infer_on_a_study_and_on_an_upload_still_work(server):
    r = _infer(server["url"], "case_a", {"prompts": ["posterior hippocampus"]})
    assert r.status_code == 200 and r.json()["prompt_labels"] == {"posterior hippocampus": 2}, r.text
    upload = ("scan.nii.gz", (server["root"] / "outside.nii.gz").read_bytes())
    r = _infer(server["url"], files={"file": upload})
    assert r.status_code == 200 and "prompt_labels" in r.json(), r.text


def _chunks(total: int, size: int = 1 << 20):
    sent = 0
    while sent < total:
        yield b"\0" * min(size, total - sent)
        sent += size


def test_uploads_are_size_limited_and_the_server_stays_responsive(server):
    import requests

    url, big = server["url"], (MAX_UPLOAD_MB + 1) * 2**20
    r = requests.put(
        f"{url}/datastore/image", params={"image": "big"}, files={"file": ("big.nii.gz", b"\0" * big)}, timeout=60
    )
    assert r.status_code == 413 and f"limit is {MAX_UPLOAD_MB} MiB" in r.json()["detail"]
    # no Content-Length (chunked): refused while it streams in
    r = requests.post(f"{url}/infer/segone", params={"image": "case_a"}, data=_chunks(big), timeout=60)
    assert r.status_code == 413
    assert not (server["studies"] / "big.nii.gz").exists()
    start = time.time()
    assert requests.get(f"{url}/info/", timeout=30).ok
    assert time.time() - start < 5


def test_cors_only_for_the_configured_origin(server):
    import requests

    url = server["url"]
    preflight = {"Access-Control-Request-Method": "POST"}
    ok = requests.options(f"{url}/infer/segone", headers={"Origin": VIEWER, **preflight}, timeout=30)
    assert ok.status_code == 200 and ok.headers.get("access-control-allow-origin") == VIEWER
    evil = requests.options(f"{url}/infer/segone", headers={"Origin": "http://evil.example", **preflight}, timeout=30)
    assert evil.status_code == 400 and "access-control-allow-origin" not in evil.headers
    # without Access-Control-Allow-Origin a browser keeps the answer from the other origin's page
    r = requests.get(f"{url}/info/", headers={"Origin": "http://evil.example", "Cookie": "a=b"}, timeout=30)
    assert r.ok and "access-control-allow-origin" not in r.headers
    r = requests.get(f"{url}/info/", headers={"Origin": VIEWER}, timeout=30)
    assert r.headers.get("access-control-allow-origin") == VIEWER


class _Payload:
    """Unpickling this runs code: what ``torch.load`` without ``weights_only`` would do with a hostile model file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_model_files_are_read_with_weights_only(server):
    marker = server["root"] / "pickle_ran"
    model = server["root"] / "models" / "model.pt"  # the served fine-tuned weights: preferred over the shipped ones
    with open(model, "wb") as f:
        pickle.dump({"model": _Payload(str(marker))}, f)
    try:
        r = _infer(server["url"], "case_a")
        assert r.status_code == 500
        assert not marker.exists()
        deadline = time.time() + 20  # the server logs the traceback after it has answered
        while "not a readable PyTorch checkpoint" not in server["log"].read_text() and time.time() < deadline:
            time.sleep(0.5)
        assert f"{model}: not a readable PyTorch checkpoint (UnpicklingError" in server["log"].read_text()
    finally:
        model.unlink()
    r = _infer(server["url"], "case_a")  # back to the shipped weights
    assert r.status_code == 200, r.text
