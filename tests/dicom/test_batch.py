"""DICOM batch inference to DICOM SEG: output checks, manifest, resume, bad series, a kill, real studies."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle.cli.dicom_batch import main as dicom_batch_main
from bundle.dicom import discover_series, read_series_with_files
from bundle.dicom.batch import Manifest, model_version
from bundle.dicom.seg import TEMP_MARK, check_seg, coded_concepts, dciodvfy_errors, write_seg
from bundle.text import PromptEmbeddingTable
from bundle.utils.checkpoint import save_model
from bundle.utils.config import BUNDLE_ROOT, load_bundle_config
from tests.helpers.bundle_runs import SMALL, TINY_CLIP_DIM
from tests.helpers.dicom_series import write_mr_series, write_sr
from tests.helpers.shared_data import shared_path

# end-to-end runs of the real commands: not part of the fast lane (make test-fast)
pytestmark = pytest.mark.slow

ROOT = BUNDLE_ROOT
# the console entry point (pyproject.toml [project.scripts]), installed next to the interpreter
COMMAND = Path(sys.executable).parent / "segone-dicom-batch"
PROMPTS = ["anterior hippocampus", "posterior hippocampus"]
STUDY = "1.2.826.0.1.3680043.8.498.1"


def _volume(seed: int, shape=(20, 24, 12)) -> np.ndarray:
    from bundle.data.demo import make_phantom

    image, _ = make_phantom(seed, shape=shape)
    return (image * 10).astype(np.float32)  # about 190 to 3750: inside uint16 and the writer's clip to 4000


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A small network with random weights in the shipped model-file format (the pipeline, not accuracy, is tested)."""
    parser = load_bundle_config("inference.json", overrides={**SMALL, "text_dim": TINY_CLIP_DIM})
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    with torch.no_grad():  # FiLM starts at zero (prompt-blind); random conditioning makes the prompts differ
        for name, p in net.named_parameters():
            if "film" in name:
                p.normal_(0, 0.5)
    table = PromptEmbeddingTable(dict(zip(PROMPTS, net.prompt_embeddings)), {"model_name": "test"})
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(net, path, table, {"epoch": 0})
    return path


def _script_args(model_file: Path, input_dir: Path, output_dir: Path, *extra: str) -> list:
    sets = [f"--set={k}={json.dumps(v)}" for k, v in {**SMALL, "text_dim": TINY_CLIP_DIM}.items()]
    return [
        "--input_dir",
        str(input_dir),
        "--output_dir",
        str(output_dir),
        "--ckpt_path",
        str(model_file),
        "--no_progress",
        *sets,
        *extra,
    ]


def _run_script(*args: str) -> int:
    """``segone-dicom-batch ARGS`` in this process (``scripts/dicom_batch_infer.py`` runs the same ``main``)."""
    return dicom_batch_main(list(args))


def _latest_rows(output_dir: Path) -> dict:
    manifest = Manifest(output_dir / "manifest.jsonl")
    return {row["series"]: row for row in manifest.rows}


# --- SEG writing -------------------------------------------------------------------------------------------------


@pytest.fixture()
def clean_series(tmp_path):
    write_mr_series(tmp_path / "in" / "t1", _volume(1), STUDY, STUDY + ".1")
    series, _ = discover_series(tmp_path / "in")
    return read_series_with_files(series[0])


def test_seg_reads_back_with_segments_codes_references_and_pixels(tmp_path, clean_series):
    import highdicom as hd
    import pydicom

    array, _, files = clean_series
    segments = np.zeros(array.shape[::-1], np.uint8)  # [frames, rows, columns]
    segments[2:6, 4:10, 3:9] = 1  # segment 2 stays empty: still described, still read back
    path = write_seg(segments, files, PROMPTS, tmp_path / "out" / "seg.dcm", "9.9.9+test")
    seg = hd.seg.segread(str(path))
    assert [d.SegmentLabel for d in seg.SegmentSequence] == PROMPTS
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "5366008"  # SCT Hippocampus
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("SegOne", "9.9.9+test")
    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    uids = [str(s.SOPInstanceUID) for s in sources]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2], combine_segments=True)
    np.testing.assert_array_equal(pixels, segments)
    errors = dciodvfy_errors(path)
    assert errors in (None, []), errors  # None: dciodvfy (Debian dicom3tools) not installed
    assert [p.name for p in path.parent.iterdir()] == ["seg.dcm"]


def test_a_seg_that_fails_its_check_is_not_left_behind(tmp_path, clean_series, monkeypatch):
    import bundle.dicom.seg as dicom_seg

    array, _, files = clean_series

    def failing_check(path, *args):
        raise dicom_seg.SegCheckError(f"{path}: simulated mismatch")

    monkeypatch.setattr(dicom_seg, "check_seg", failing_check)
    with pytest.raises(dicom_seg.SegCheckError, match="simulated mismatch"):
        write_seg(np.zeros(array.shape[::-1], np.uint8), files, PROMPTS, tmp_path / "out" / "seg.dcm", "1")
    assert list((tmp_path / "out").iterdir()) == []


def test_check_catches_pixels_that_differ(tmp_path, clean_series):
    import pydicom

    array, _, files = clean_series
    segments = np.zeros(array.shape[::-1], np.uint8)
    segments[1:3, 2:5, 2:5] = 2
    path = write_seg(segments, files, PROMPTS, tmp_path / "seg.dcm", "1")
    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    check_seg(path, sources, PROMPTS, segments)
    other = segments.copy()
    other[0, 0, 0] = 1
    with pytest.raises(RuntimeError, match="1 voxel"):
        check_seg(path, sources, PROMPTS, other)


def test_coded_concepts_for_known_and_unknown_prompts():
    assert coded_concepts("posterior hippocampus")[1].value == "5366008"
    category, kind = coded_concepts("peritumoral edema")
    assert (category.meaning, kind.meaning) == ("Morphologically Altered Structure", "Edema")
    assert coded_concepts("something new")[1].meaning == "Tissue"


# every structure of the MRI suite (docs/suite.md) -> the SNOMED CT type its segment gets
SUITE_TYPES = {
    "anterior hippocampus": "5366008",
    "necrosis": "6574001",
    "edema": "79654002",
    "non-enhancing tumour": "108369006",
    "enhancing tumour": "108369006",
    "cerebrospinal fluid": "65216001",
    "grey matter": "389081007",
    "white matter": "389080008",
    "liver": "10200004",
    "right kidney": "9846003",
    "left kidney": "18639004",
    "spleen": "78961009",
    "right ventricle": "53085002",
    "myocardium": "49848007",
    "left ventricle": "87878005",
    "left atrium": "82471001",
}


def test_every_suite_structure_has_its_own_coded_concept():
    from pydicom.sr.codedict import codes

    by_value = {}
    for name in dir(codes.SCT):  # pydicom's SNOMED CT concepts of the DICOM context groups
        try:
            code = getattr(codes.SCT, name)
        except RuntimeError:  # a name with several codes
            continue
        if hasattr(code, "value") and hasattr(code, "meaning"):
            by_value.setdefault(code.value, set()).add(code.meaning)
    for prompt, value in SUITE_TYPES.items():
        category, kind = coded_concepts(prompt)
        assert kind.value == value and kind.scheme_designator == "SCT", prompt
        assert category.meaning != "Tissue" or prompt.endswith("matter"), prompt
        if value in by_value:  # the sided kidneys are not in pydicom's context groups
            assert kind.meaning in by_value[value], prompt
    assert coded_concepts("left kidney")[1].value != coded_concepts("kidney")[1].value


# --- the batch ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """Clean, mixed, gapped, corrupt, non-image and hostile-named inputs in one tree."""
    root = tmp_path_factory.mktemp("dicom") / "in"
    write_mr_series(root / "p1" / "study" / "t1", _volume(1), STUDY, STUDY + ".1", description="T1")
    mixed = root / "p1" / "mixed"  # two series in one folder
    write_mr_series(mixed, _volume(2), STUDY, STUDY + ".2", description="T2", prefix="a")
    write_mr_series(mixed, _volume(3), STUDY, STUDY + ".3", description="FLAIR", prefix="b")
    write_mr_series(root / "p1" / "gap", _volume(4), STUDY, STUDY + ".4", description="gapped", skip_slices=[5])
    (mixed / "broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00" * 7)
    (mixed / "truncated.dcm").write_bytes((mixed / "a000.dcm").read_bytes()[:200])
    write_sr(root / "p1" / "report.dcm", STUDY)
    write_mr_series(root / "evil", _volume(5), "1.2.3/../../../study", "../../escape", description="../../etc")
    return root


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory, studies, model_file):
    out = tmp_path_factory.mktemp("out") / "segs"
    before = _tree_hash(studies)
    status = _run_script(*_script_args(model_file, studies, out, "--nifti", "--workers", "2"))
    return {"out": out, "status": status, "input_unchanged": _tree_hash(studies) == before}


def test_batch_writes_a_checked_seg_per_good_series_and_goes_past_failures(batch_run):
    out = batch_run["out"]
    assert batch_run["status"] == 1  # the gapped series failed; the others went on
    assert batch_run["input_unchanged"]
    rows = _latest_rows(out)
    done = {r["description"]: r for r in rows.values() if r["status"] == "done"}
    assert set(done) == {"T1", "T2", "FLAIR", "../../etc"}
    failed = [r for r in rows.values() if r["status"] == "failed"]
    assert len(failed) == 1 and "missing slice" in failed[0]["reason"] and failed[0]["description"] == "gapped"
    skipped = {Path(r["series"]).name: r["reason"] for r in rows.values() if r["status"] == "skipped"}
    assert "broken.dcm" in skipped and "truncated.dcm" in skipped, skipped
    assert "non-image object: structured report" in " | ".join(skipped.values())
    for row in done.values():
        assert row["model_version"].startswith(json.loads((ROOT / "configs" / "metadata.json").read_text())["version"])
        assert set(row["seconds"]) == {"read", "infer", "write"}
        assert [Path(p).name for p in row["outputs"]] == ["seg.dcm", "seg.nii.gz"]


def test_batch_outputs_stay_inside_the_output_folder(batch_run):
    out = batch_run["out"].resolve()
    written = [p for p in out.parent.rglob("*") if p.is_file()]
    assert written and all(out in p.resolve().parents for p in written)
    evil = [r for r in _latest_rows(out).values() if r.get("description") == "../../etc"][0]
    assert all(".." not in Path(p).relative_to(out).parts for p in evil["outputs"])


def test_seg_pixels_match_the_nifti_label_map(batch_run, studies):
    import highdicom as hd
    import pydicom

    ordered = {}
    for info in discover_series(studies)[0]:
        if "/" not in info.study_uid:
            ordered[info.series_uid] = read_series_with_files(info)[2] if info.description != "gapped" else None
    for row in _latest_rows(batch_run["out"]).values():
        if row["status"] != "done" or row["description"] == "../../etc":
            continue
        seg_path, nii_path = row["outputs"]
        labels = np.asarray(nib.load(nii_path).dataobj)  # [X, Y, Z]; label values 1, 2 are segments 1, 2
        uids = [
            str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID) for f in ordered[row["series_uid"]]
        ]
        pixels = hd.seg.segread(seg_path).get_pixels_by_source_instance(
            uids, segment_numbers=[1, 2], combine_segments=True
        )
        np.testing.assert_array_equal(pixels, labels.transpose(2, 1, 0))  # frame k = slice k, rows Y, columns X
        assert labels.max() <= 2


def test_rerun_skips_series_done_with_the_same_model(batch_run, studies, model_file):
    out = batch_run["out"]
    done_before = {k: r["outputs"] for k, r in _latest_rows(out).items() if r["status"] == "done"}
    lines_before = len(Manifest(out / "manifest.jsonl").rows)
    status = _run_script(*_script_args(model_file, studies, out, "--nifti"))
    assert status == 1  # the gapped series is tried again and fails again
    rows = Manifest(out / "manifest.jsonl").rows[lines_before:]
    assert [r["status"] for r in rows] == ["failed"]  # nothing repeated, skips not re-recorded
    assert {k: r["outputs"] for k, r in _latest_rows(out).items() if r["status"] == "done"} == done_before


def test_manifest_reads_past_a_cut_line_and_versions_decide_resume(tmp_path, model_file):
    path = tmp_path / "manifest.jsonl"
    out = tmp_path / "seg.dcm"
    out.write_bytes(b"x")
    path.write_text(
        json.dumps({"series": "a/b", "status": "done", "model_version": "1+x", "outputs": [str(out)]})
        + "\n"
        + '{"series": "a/c", "sta'
    )
    manifest = Manifest(path)
    assert manifest.is_done("a/b", "1+x") and not manifest.is_done("a/b", "1+y") and not manifest.is_done("a/c", "1+x")
    manifest.append({"series": "a/c", "status": "failed", "reason": "r"})
    assert Manifest(path).latest("a/c")["status"] == "failed"
    out.unlink()
    assert not Manifest(path).is_done("a/b", "1+x")  # an output gone missing is redone
    assert model_version("0.3.0", model_file).startswith("0.3.0+") and len(model_version("0", model_file)) == 14


def test_output_inside_input_is_refused(tmp_path, studies, model_file):
    with pytest.raises(ValueError, match="inside the input folder"):
        _run_script(*_script_args(model_file, studies, studies / "segs"))


def test_bundle_config_route_raises_after_the_batch_when_a_series_failed(tmp_path, studies, model_file):
    out = tmp_path / "bundle_out"
    parser = load_bundle_config(
        "inference.json",
        "dicom_batch.json",
        overrides={
            **SMALL,
            "text_dim": TINY_CLIP_DIM,
            "ckpt_path": str(model_file),
            "input_dir": str(studies),
            "output_dir": str(out),
            "series_description": "^(T1|gapped)$",
            "progress": False,
        },
    )
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("run")
    chain, exc = [], info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any("1 series failed" in c for c in chain)
    assert [r["status"] for r in _latest_rows(out).values() if r.get("description") == "T1"] == ["done"]


def test_killed_batch_resumes_with_nothing_lost(tmp_path, model_file):
    root = tmp_path / "in"
    for i in range(6):
        write_mr_series(
            root / f"s{i}", _volume(10 + i, shape=(24, 32, 16)), STUDY, f"{STUDY}.9{i}", description=f"S{i}"
        )
    out = tmp_path / "out"
    assert COMMAND.is_file(), f"{COMMAND} missing: reinstall the package (bash scripts/setup_env.sh)"
    cmd = [str(COMMAND), *_script_args(model_file, root, out)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed package, from any folder
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "manifest.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if manifest.is_file() and '"done"' in manifest.read_text():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = [r for r in Manifest(manifest).rows if r["status"] == "done"]
    assert 1 <= len(first) < 6, "the kill should land mid-batch"
    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["already_done"] == len(first) and summary["done"] == 6 - len(first)
    rows = _latest_rows(out)
    assert sorted(r["description"] for r in rows.values() if r["status"] == "done") == [f"S{i}" for i in range(6)]
    assert not list(out.rglob(f"*{TEMP_MARK}*"))
    import highdicom as hd

    for row in rows.values():
        assert hd.seg.segread(row["outputs"][0]).SegmentSequence[1].SegmentLabel == PROMPTS[1]


# --- real studies ------------------------------------------------------------------------------------------------


def test_shipped_model_segments_the_real_hippocampus_crops_to_valid_segs(tmp_path):
    import highdicom as hd

    studies = shared_path("dicom_mr")
    out = tmp_path / "out"
    status = _run_script(
        "--input_dir",
        str(studies),
        "--output_dir",
        str(out),
        "--series_description",
        "HippoCrop",
        "--no_progress",
        "--nifti",
    )
    assert status == 0
    rows = [r for r in _latest_rows(out).values() if r["status"] == "done"]
    assert len(rows) == 2
    for row in rows:
        seg = hd.seg.segread(row["outputs"][0])
        assert [d.SegmentLabel for d in seg.SegmentSequence] == PROMPTS
        labels = np.asarray(nib.load(row["outputs"][1]).dataobj)
        for value in (1, 2):  # a hippocampus part is 1-3 mL at 1 mm: plausible volumes, not an empty or full mask
            assert 500 < int((labels == value).sum()) < 4000, (row["series"], value, int((labels == value).sum()))
        errors = dciodvfy_errors(row["outputs"][0])
        assert errors in (None, []), errors


def test_thick_slice_series_are_segmented_in_windows_planned_from_their_spacing(tmp_path, model_file, planned_windows):
    """``thick_slice_ratio``: the DICOM batch takes inference.json's inferer, so a stack of thick slices is read with
    its spacing and segmented in the flat, wide window its spacing plans."""
    write_mr_series(tmp_path / "in" / "cine", _volume(6, shape=(32, 40, 10)), STUDY, STUDY + ".6", spacing=(1, 1, 4))
    extra = ["--set=thick_slice_ratio=3.0", "--set=max_anisotropy=8.0"]
    assert _run_script(*_script_args(model_file, tmp_path / "in", tmp_path / "out", *extra)) == 0
    # SMALL's windows are multiples of 8 within 16^3 voxels: 8 slices x 16 x 16
    assert planned_windows == {(16, 16, 8)}
    (row,) = _latest_rows(tmp_path / "out").values()
    assert row["status"] == "done" and [Path(p).name for p in row["outputs"]] == ["seg.dcm"]
