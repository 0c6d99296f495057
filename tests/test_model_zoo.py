"""MONAI model-zoo conformance: the zoo's own checks, its code style, and what a zoo user does with the bundle.

- The zoo's ``ci/verify_bundle.py`` (pinned with its metadata schema in ``tests/data/model_zoo/``, see the NOTICE
  there) passes in full mode on a zoo checkout laid out in a temporary folder, offline.
- The code passes black, isort and flake8 with the zoo's settings (``pyproject.toml`` and ``setup.cfg``).
- ``monai.bundle.load(name, bundle_dir=..., workflow_type="inference")`` returns the shipped weights.
- The metadata, as MONAI's ``ConfigParser.read_meta`` leaves it, lists the required and the optional packages.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
import warnings
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export
from monai.bundle.scripts import _get_fake_spatial_shape

ROOT = Path(__file__).resolve().parents[1]
ZOO_FILES = ROOT / "tests" / "data" / "model_zoo"
META = ROOT / "configs" / "metadata.json"
MODEL = ROOT / "models" / "model.pt"

# the bundle's folder name in the zoo's models/ (the zoo names bundles <what>_<modality>_<task>)
BUNDLE_NAME = "segone_hippocampus_mri_segmentation"

# Why the bundle asks the zoo to skip `verify_torchscript` (which exports with torch.jit.script): the network's
# forward is the whole DDIM sampler, and TorchScript compiles none of its pieces: star-unpacked shapes in
# PromptedSegmenter.forward, the per-step-count sampler cache in the module's __dict__ (MaskDiffusion.make_sampler),
# MONAI's DDIMScheduler.step (string-enum comparisons) and the seeded-noise helper (a module-level constant). Making
# it scriptable means a second, TorchScript-only sampler. The bundle's TorchScript export traces the sampler instead
# (`ckpt_export ... --use_trace True`); test_torchscript_export_traces_and_scripting_is_still_unsupported checks that
# this works and that scripting still fails: when scripting starts to work, drop the exclusion.
TORCHSCRIPT_EXCLUSION_REASON = "forward is a DDIM sampler that TorchScript cannot script; the bundle exports by tracing"

STYLE_PATHS = ("bundle", "scripts", "tests")

# what the zoo's verify_bundle.py prints after each of its checks in full mode (the last: the documented exclusion)
VERIFY_STEPS = (
    "directory is verified correctly.",
    "version and changelog are verified correctly.",
    "metadata format is verified correctly.",
    "data shape is verified correctly.",
    f"bundle: {BUNDLE_NAME} does not support torchscript, skip verifying.",
)


def _run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _metadata() -> dict:
    return json.loads(META.read_text())


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    """A model-zoo checkout holding this bundle, as the zoo's CI sees it before `verify_bundle.py` runs.

    ``ci/`` is the pinned zoo code, with this bundle added to ``exclude_verify_torchscript_list`` as a zoo pull request
    would add it (TORCHSCRIPT_EXCLUSION_REASON). ``models/<bundle>/`` holds what the bundle's zip holds: LICENSE,
    configs/, docs/, models/ and the bundle's Python package ``bundle/``, imported from the bundle folder (the zoo's
    verify_bundle.py puts it first on ``sys.path``). The 7 MB ``models/model.pt`` is not in the tree: like every zoo
    bundle it is listed in ``large_files.yml`` with its hash, here with a ``file://`` URL so that the zoo's large-file
    download runs offline. ``eval/schema.json`` is the pinned schema, where the zoo's ``ci/prepare_schema.py`` puts the
    downloaded one; ``models/model_info.json`` lists no published version of this bundle.
    """
    root = tmp_path_factory.mktemp("model_zoo")
    shutil.copytree(ZOO_FILES / "ci", root / "ci")
    with open(root / "ci" / "bundle_custom_data.py", "a") as f:
        f.write(f"\n# {BUNDLE_NAME}: {TORCHSCRIPT_EXCLUSION_REASON}\n")
        f.write(f"exclude_verify_torchscript_list.append({BUNDLE_NAME!r})\n")
    models = root / "models"
    bundle_dir = models / BUNDLE_NAME
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("configs", "docs", "bundle"):
        shutil.copytree(ROOT / name, bundle_dir / name, ignore=ignore)
    shutil.copy2(ROOT / "LICENSE", bundle_dir / "LICENSE")
    (bundle_dir / "models").mkdir()
    for path in (ROOT / "models").iterdir():
        if path.is_file() and path != MODEL:
            shutil.copy2(path, bundle_dir / "models" / path.name)
    (bundle_dir / "large_files.yml").write_text(
        "large_files:\n"
        '- path: "models/model.pt"\n'
        f'  url: "{MODEL.as_uri()}"\n'
        f'  hash_val: "{_sha256(MODEL)}"\n'
        '  hash_type: "sha256"\n'
    )
    (bundle_dir / "eval").mkdir()
    shutil.copy2(ZOO_FILES / "meta_schema_20240725.json", bundle_dir / "eval" / "schema.json")
    (models / "model_info.json").write_text("{}\n")
    return root


@pytest.mark.slow
def test_zoo_verify_bundle_passes_in_full_mode(zoo):
    bundle_dir = zoo / "models" / BUNDLE_NAME
    assert not (bundle_dir / "models" / "model.pt").exists()
    result = _run([sys.executable, "ci/verify_bundle.py", "-b", BUNDLE_NAME, "-p", "models", "-m", "full"], cwd=zoo)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    for step in VERIFY_STEPS:
        assert step in output, f"missing {step!r} in:\n{output[-6000:]}"
    # the weights came through the zoo's large-file download, checked against the declared hash
    assert _sha256(bundle_dir / "models" / "model.pt") == _sha256(MODEL)


# jsonschema 3.2 (pinned by pydicom-seg) predates the schema's draft 2019-09 and validates with draft 7, which reads
# this schema the same way (its only "$ref" siblings are comments)
@pytest.mark.filterwarnings("ignore:The metaschema specified by .schema was not found")
@pytest.mark.filterwarnings("ignore:No hash value provided")
def test_metadata_is_valid_under_the_pinned_zoo_schema(tmp_path):
    from monai.bundle import verify_metadata

    meta = _metadata()
    schema_name = meta["schema"].rsplit("/", 1)[-1]
    assert (ZOO_FILES / schema_name).is_file(), f"the schema {meta['schema']} is not pinned in {ZOO_FILES}"
    schema = tmp_path / "schema.json"
    shutil.copy2(ZOO_FILES / schema_name, schema)  # present, so verify_metadata downloads nothing
    verify_metadata(meta_file=str(META), filepath=str(schema))


def test_versions_and_changelog_agree():
    meta = _metadata()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["version"] == project["version"]
    assert meta["version"] in meta["changelog"]
    assert max(meta["changelog"], key=lambda v: tuple(int(p) for p in v.split("."))) == meta["version"]


def test_data_license_names_the_training_data():
    text = (ROOT / "docs" / "data_license.txt").read_text()
    for fact in ("Medical Segmentation Decathlon", "Task04_Hippocampus", "medicaldecathlon.com", "CC-BY-SA 4.0"):
        assert fact in text, fact
    assert "CC-BY-SA 4.0" in _metadata()["data_source"]


def test_declared_spatial_shape_covers_the_inference_patch():
    """``spatial_shape`` is what the network takes (the zoo's check feeds it the ``n = 1`` size), and the inference
    patch size of ``configs/inference.json`` is one of the sizes it declares."""
    image = _metadata()["network_data_format"]["inputs"]["image"]
    roi_size = json.loads((ROOT / "configs" / "inference.json").read_text())["roi_size"]
    assert len(image["spatial_shape"]) == len(roi_size)
    for pattern, size in zip(image["spatial_shape"], roi_size):
        declared = {_get_fake_spatial_shape([pattern], n=n)[0] for n in range(1, 16)}
        assert size in declared, f"roi_size {size} is not a size of {pattern!r}"


@pytest.mark.slow
def test_torchscript_export_traces_and_scripting_is_still_unsupported(tmp_path):
    """The bundle's TorchScript export (MONAI's ``ckpt_export`` with ``use_trace``, the input shape from the metadata)
    runs the shipped model like PyTorch does on the inference patch size; ``torch.jit.script`` still fails, which is
    why the zoo's ``verify_torchscript`` is skipped for this bundle."""
    ts = tmp_path / "model.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on the sampler's Python-side checks
        ckpt_export(
            net_id="network_def",
            filepath=str(ts),
            ckpt_file=str(MODEL),
            meta_file=str(META),
            config_file=str(ROOT / "configs" / "inference.json"),
            bundle_root=str(ROOT),
            use_trace=True,
        )
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    parser.read_meta(str(META))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(MODEL, map_location="cpu", weights_only=True))
    net.eval()
    roi_size = parser.get_parsed_content("roi_size")
    x = torch.rand(1, 1, *roi_size, generator=torch.Generator().manual_seed(0))
    traced = torch.jit.load(str(ts), map_location="cpu")
    with torch.no_grad():
        torch.testing.assert_close(traced(x), net(x), rtol=1e-4, atol=1e-4)
    with pytest.raises((RuntimeError, torch.jit.frontend.FrontendError)):
        torch.jit.script(net)


@pytest.mark.slow
def test_monai_bundle_load_returns_the_shipped_weights(tmp_path):
    """A user's ``monai.bundle.load`` with default arguments, from another working directory, on this repository as
    ``<bundle_dir>/<name>``: the inference network with every tensor of ``models/model.pt``."""
    bundle_dir = tmp_path / "bundles"
    bundle_dir.mkdir()
    (bundle_dir / BUNDLE_NAME).symlink_to(ROOT, target_is_directory=True)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    script = (
        "import json, sys, torch, monai.bundle\n"
        "net = monai.bundle.load(sys.argv[1], bundle_dir=sys.argv[2], workflow_type='inference')\n"
        "shipped = torch.load(sys.argv[3], map_location='cpu', weights_only=True)\n"
        "loaded = {k: v.detach().cpu() for k, v in net.state_dict().items()}\n"
        "print(json.dumps({'type': type(net).__module__ + '.' + type(net).__qualname__,\n"
        "    'missing': sorted(set(shipped) - set(loaded)), 'unexpected': sorted(set(loaded) - set(shipped)),\n"
        "    'different': sorted(k for k in shipped if k in loaded and not torch.equal(loaded[k], shipped[k]))}))\n"
    )
    result = _run([sys.executable, "-c", script, BUNDLE_NAME, str(bundle_dir), str(MODEL)], cwd=workdir)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "type": "bundle.diffusion.segmenter.PromptedSegmenter",
        "missing": [],
        "unexpected": [],
        "different": [],
    }
    assert not list(workdir.iterdir())  # loading wrote nothing where it ran


def test_read_meta_keeps_required_and_optional_packages():
    """MONAI's ``read_meta`` renames the deprecated ``optional_packages_version`` to ``required_packages_version``
    (overwriting it), so the optional packages are listed under ``optional_packages``, which it keeps as it is."""
    raw = _metadata()
    assert "optional_packages_version" not in raw
    parser = ConfigParser()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parser.read_meta(str(META))
    assert not [w for w in caught if "deprecated name" in str(w.message)]
    meta = parser.get("_meta_")
    required, optional = meta["required_packages_version"], meta["optional_packages"]
    assert required == raw["required_packages_version"] and optional == raw["optional_packages"]
    assert not set(required) & set(optional)
    # what inference needs (NIfTI reading, the text encoder, MONAI's ignite engines) and what only some features need
    assert {"nibabel", "open-clip-torch", "pytorch-ignite"} <= set(required)
    assert {"sam2", "highdicom", "pydicom", "monailabel"} <= set(optional)
    for package, pinned in {**required, **optional}.items():
        assert version(package) == pinned, f"{package}: metadata {pinned}, installed {version(package)}"


@pytest.mark.slow
def test_code_style_is_the_zoos():
    """black, isort and flake8 with the zoo's settings (its runtests.sh --codeformat; pyproject.toml and setup.cfg)."""
    checks = {
        "black": [sys.executable, "-m", "black", "--check", *STYLE_PATHS],
        "isort": [sys.executable, "-m", "isort", "--check-only", *STYLE_PATHS],
        "flake8": [sys.executable, "-m", "flake8", "--count", "--statistics", *STYLE_PATHS],
    }
    failures = {}
    for tool, cmd in checks.items():
        result = _run(cmd, cwd=ROOT)
        if result.returncode != 0:
            failures[tool] = (result.stdout + result.stderr)[-4000:]
    assert not failures, "\n".join(f"--- {tool}:\n{out}" for tool, out in failures.items())
