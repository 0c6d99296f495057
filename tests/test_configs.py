"""Bundle configs: metadata keys and versions, and MONAI's own checks on network_def."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import monai
import numpy
import torch
from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
MANDATORY = [
    "version", "changelog", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
    "task", "description", "authors", "copyright", "network_data_format",
]  # fmt: skip


def _metadata() -> dict:
    return json.loads((CONFIGS / "metadata.json").read_text())


def test_metadata_has_the_bundle_spec_keys():
    meta = _metadata()
    missing = [k for k in MANDATORY if k not in meta]
    assert not missing, f"metadata.json lacks {missing}"
    assert meta["version"] in meta["changelog"], "the current version needs a changelog entry"
    assert set(meta["network_data_format"]) == {"inputs", "outputs"}


def test_metadata_versions_are_the_installed_ones():
    meta = _metadata()
    assert meta["monai_version"] == monai.__version__
    assert torch.__version__.startswith(meta["pytorch_version"])
    assert meta["numpy_version"] == numpy.__version__
    for group in ("required_packages_version", "optional_packages_version"):
        for package, pinned in meta.get(group, {}).items():
            assert version(package) == pinned, f"{group}: {package} {pinned} != installed {version(package)}"


def test_network_config_matches_metadata_channels():
    meta = _metadata()["network_data_format"]
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "network.json"))
    net = parser.get_parsed_content("network_def")
    assert net.in_channels == meta["inputs"]["image"]["num_channels"]
    assert net.out_channels == meta["outputs"]["pred"]["num_channels"]
    assert net.size_divisor == 16  # "16*n" in spatial_shape


def test_monai_verify_net_in_out():
    cmd = [
        sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def",
        "--meta_file", str(CONFIGS / "metadata.json"), "--config_file", str(CONFIGS / "network.json"),
        "--n", "3",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "data shape of network is verified with no error" in (proc.stdout + proc.stderr)
