"""The scripts and console entry points: all start from any folder on the installed package, with one flag spelling."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import distribution
from pathlib import Path

import pytest

from bundle.utils.config import BUNDLE_ROOT

SCRIPTS = sorted(p.relative_to(BUNDLE_ROOT).as_posix() for p in (BUNDLE_ROOT / "scripts").rglob("*.py"))
ENTRY_POINTS = {
    "segone-dicom-batch": "bundle.cli.dicom_batch:main",
    "segone-demo-data": "bundle.cli.demo_data:main",
    "segone-fill-teacher-cache": "bundle.cli.fill_teacher_cache:main",
    "segone-export-edge": "bundle.cli.export_edge:main",
    "segone-convert-hdf5": "bundle.cli.convert_hdf5:main",
}
# spellings replaced by --dataset_dir, --ckpt_path, --output_dir (or --output_file), --repeats, --input_dir,
# --sam2_checkpoint, --sam2_config, --student_checkpoint, --image_dir
OLD_FLAGS = {
    "--data",
    "--input",
    "--output",
    "--out",
    "--ckpt",
    "--checkpoint",
    "--reps",
    "--json",
    "--config",
    "--student",
    "--images",
}


# Runs every script's ``--help`` in one interpreter (each would import MONAI on its own, about 15 s), as
# ``python SCRIPT --help`` does: the script as ``__main__``, from an unrelated folder, without PYTHONPATH.
HELP_DRIVER = """
import contextlib, io, json, runpy, sys
results = {}
for path in sys.argv[1:]:
    out = io.StringIO()
    sys.argv = [path, "--help"]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except Exception as e:  # an import error: the script does not start
        code, out = 1, io.StringIO(f"{type(e).__name__}: {e}")
    results[path] = {"returncode": code, "stdout": out.getvalue()}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def helps(tmp_path_factory) -> dict[str, dict]:
    """``{script or entry point: {"returncode", "stdout"}}`` of ``--help``."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = dict(cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    commands = {
        name: subprocess.Popen([str(Path(sys.executable).parent / name), "--help"], **run) for name in ENTRY_POINTS
    }
    scripts = subprocess.run(
        [sys.executable, "-c", HELP_DRIVER, *(str(BUNDLE_ROOT / s) for s in SCRIPTS)], timeout=600, **run
    )
    assert scripts.returncode == 0, scripts.stderr[-2000:]
    results = {str(Path(path).relative_to(BUNDLE_ROOT)): r for path, r in json.loads(scripts.stdout).items()}
    for name, proc in commands.items():
        out, err = proc.communicate(timeout=300)
        results[name] = {"returncode": proc.returncode, "stdout": out or err}
    return results


def test_the_scripts_are_where_the_issue_puts_them():
    assert {s for s in SCRIPTS if s.count("/") == 1} == {
        "scripts/convert_hdf5.py",
        "scripts/dicom_batch_infer.py",
        "scripts/export_edge.py",
        "scripts/fill_teacher_cache.py",
        "scripts/make_demo_data.py",
    }
    assert {Path(s).parent.name for s in SCRIPTS if s.count("/") == 2} == {"benchmarks", "experiments"}
    assert "scripts/benchmarks/benchmark_network.py" in SCRIPTS  # `make benchmark`
    assert "scripts/benchmarks/benchmark_network.py" in (BUNDLE_ROOT / "Makefile").read_text()


@pytest.mark.parametrize("name", [*SCRIPTS, *ENTRY_POINTS])
def test_help_runs_from_any_folder(helps, name):
    result = helps[name]
    assert result["returncode"] == 0, result["stdout"][-2000:]
    assert result["stdout"].startswith("usage:")


@pytest.mark.parametrize("name", [*SCRIPTS, *ENTRY_POINTS])
def test_one_flag_spelling(helps, name):
    flags = set(re.findall(r"--[A-Za-z][A-Za-z0-9_-]*", helps[name]["stdout"]))
    assert not {f for f in flags if "-" in f[2:]}, "options are spelt with underscores (--dataset_dir)"
    assert not flags & OLD_FLAGS


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_sys_path_edits(script):
    text = (BUNDLE_ROOT / script).read_text()
    assert "sys.path" not in text and "PYTHONPATH" not in text


def test_entry_points_are_declared_and_installed():
    declared = tomllib.loads((BUNDLE_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert declared == ENTRY_POINTS
    installed = {ep.name: ep.value for ep in distribution("segone").entry_points if ep.group == "console_scripts"}
    assert installed == ENTRY_POINTS, "the installed package is stale: bash scripts/setup_env.sh"
    for name, target in ENTRY_POINTS.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))
        assert (Path(sys.executable).parent / name).is_file()


@pytest.mark.parametrize(
    "script, module",
    [
        ("scripts/dicom_batch_infer.py", "bundle.cli.dicom_batch"),
        ("scripts/make_demo_data.py", "bundle.cli.demo_data"),
        ("scripts/fill_teacher_cache.py", "bundle.cli.fill_teacher_cache"),
        ("scripts/convert_hdf5.py", "bundle.cli.convert_hdf5"),
    ],
)
def test_user_tool_scripts_run_the_entry_points_main(helps, script, module):
    name = next(n for n, target in ENTRY_POINTS.items() if target.startswith(module + ":"))
    assert f"from {module} import main" in (BUNDLE_ROOT / script).read_text()
    assert helps[script]["stdout"].split("\n\n", 1)[1] == helps[name]["stdout"].split("\n\n", 1)[1]  # same text
