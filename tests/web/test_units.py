"""The browser page's JavaScript modules (bundle/web/src) against the bundle's Python, and its package files.

The JavaScript tests (``tests/web/js/*.test.mjs``, run with ``node --test``) compare the NIfTI reader, the
orientation and normalisation, and the sliding windows with fixtures that nibabel and MONAI produce here
(``tests/web/fixtures.py``); the label maps the JavaScript writes are read back with nibabel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.web.fixtures import expected_labels, write_fixtures

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "bundle" / "web"
JS_TESTS = Path(__file__).resolve().parent / "js"


@pytest.fixture(scope="module")
def node_run(tmp_path_factory):
    """Writes the fixtures, runs the JavaScript tests on them; returns (fixture folder, cases, completed process)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs node (Node.js 20 or newer) to run the page's JavaScript tests")
    folder = tmp_path_factory.mktemp("web_fixtures")
    cases = json.loads(write_fixtures(folder).read_text())
    tests = sorted(str(p) for p in JS_TESTS.glob("*.test.mjs"))
    proc = subprocess.run(
        [node, "--test", *tests],
        cwd=ROOT,
        env={**os.environ, "SEGONE_WEB_FIXTURES": str(folder)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return folder, cases, proc


def test_javascript_matches_the_bundle(node_run):
    """NIfTI reading, RAS orientation, z-scoring and MONAI's sliding windows: every node test passes."""
    _, _, proc = node_run
    summary = [line for line in proc.stdout.splitlines() if line.startswith(("# pass", "# fail", "not ok"))]
    assert proc.returncode == 0, f"node --test failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    assert any(line.startswith("# pass") and int(line.split()[-1]) >= 30 for line in summary), summary
    assert "# fail 0" in summary, summary


def test_label_maps_keep_the_input_geometry(node_run):
    """The label maps the page's writer produced read back in nibabel with the input's shape, affine and codes."""
    folder, cases, proc = node_run
    assert proc.returncode == 0, proc.stdout[-3000:]
    for case in cases["nifti"]:
        source = nib.load(str(folder / case["file"]))
        written = nib.load(str(folder / case["labels_out"]))
        assert written.shape == source.shape, case["name"]
        assert written.get_data_dtype() == np.uint8, case["name"]
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-6, err_msg=case["name"])
        for field in ("qform_code", "sform_code", "pixdim", "xyzt_units"):
            np.testing.assert_array_equal(written.header[field], source.header[field], err_msg=field)
        np.testing.assert_allclose(written.get_qform(), source.get_qform(), atol=1e-6)
        data = np.asarray(written.dataobj).reshape(case["dims"])
        np.testing.assert_array_equal(data, expected_labels(case["dims"]), err_msg=case["name"])


def test_package_pins_onnxruntime_web_from_the_registry():
    """package.json pins onnxruntime-web exactly; the lock file holds it and downloads from the npm registry only."""
    package = json.loads((WEB / "package.json").read_text())
    version = package["dependencies"]["onnxruntime-web"]
    assert version[0].isdigit() and all(part.isdigit() for part in version.split(".")), version
    lock = json.loads((WEB / "package-lock.json").read_text())
    assert lock["packages"][""]["dependencies"]["onnxruntime-web"] == version
    assert lock["packages"]["node_modules/onnxruntime-web"]["version"] == version
    for name, entry in lock["packages"].items():
        if not name:
            continue
        resolved = entry.get("resolved")
        assert resolved is None or resolved.startswith("https://registry.npmjs.org/"), (name, resolved)
        assert entry.get("integrity", "").startswith("sha512-"), name
