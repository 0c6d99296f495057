"""Bundle configs: metadata keys and versions, and MONAI's own checks on network_def."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

import monai
import numpy
import pytest
import torch

from bundle.utils.config import BUNDLE_ROOT, load_bundle_config

ROOT = BUNDLE_ROOT
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


def test_inference_network_matches_metadata_channels():
    meta = _metadata()["network_data_format"]
    net = load_bundle_config("inference.json").get_parsed_content("network_def")
    # the denoiser sees [noisy mask, image]; the segmenter answers background + one channel per class prompt
    assert net.denoiser.in_channels == 1 + meta["inputs"]["image"]["num_channels"]
    assert 1 + net.prompt_embeddings.shape[0] == meta["outputs"]["pred"]["num_channels"]


def test_the_network_is_defined_once():
    """train.json and evaluate.json take the denoiser from inference.json (the file monai.bundle.load reads)."""
    for name in ("train.json", "evaluate.json"):
        config = json.loads((CONFIGS / name).read_text())
        assert config["denoiser_def"] == "%configs/inference.json#denoiser_def", name
    train = load_bundle_config("train.json").get_parsed_content("network_def")
    infer = load_bundle_config("inference.json").get_parsed_content("network_def")
    assert set(train.state_dict()) == set(infer.state_dict())
    assert all(a.shape == b.shape for a, b in zip(train.state_dict().values(), infer.state_dict().values()))


def test_configs_are_pretty_printed_with_indent_4():
    for path in sorted(CONFIGS.glob("*.json")):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", f"{path.name}: not formatted with indent 4"


def test_monai_verify_net_in_out():
    cmd = [
        sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def",
        "--meta_file", str(CONFIGS / "metadata.json"), "--config_file", str(CONFIGS / "inference.json"),
        "--n", "3",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "data shape of network is verified with no error" in (proc.stdout + proc.stderr)


def test_one_anisotropy_limit_reaches_every_input_check():
    """``max_anisotropy`` (inference.json, shared by train.json and evaluate.json) is what each CheckInputd applies:
    4 for the shipped near-isotropic model; a suite of 7-10 mm slice stacks raises it on the command line."""
    from bundle.data import CheckInputd

    for name, key in (
        ("inference.json", "preprocessing"),
        ("evaluate.json", "preprocessing"),
        ("train.json", "load_transforms"),
    ):
        for limit in (None, 8.0):
            parser = load_bundle_config(name)
            if limit is not None:
                parser["max_anisotropy"] = limit
            transforms = parser.get_parsed_content(key)
            transforms = transforms.transforms if hasattr(transforms, "transforms") else transforms
            checks = [t for t in transforms if isinstance(t, CheckInputd)]
            assert len(checks) == 1 and checks[0].max_anisotropy == (limit or 4.0), name


def test_the_absent_rule_is_two_keys_in_inference_and_evaluation():
    from bundle.transforms import DropSmallAnswersd

    for name in ("inference.json", "evaluate.json"):
        # the shipped model records no training volumes: only min_answer_ml counts, for each of its two classes
        for value in (None, 1.5):
            parser = load_bundle_config(name)
            if value is not None:
                parser["min_answer_ml"] = value
            rules = [
                t for t in parser.get_parsed_content("postprocessing").transforms if isinstance(t, DropSmallAnswersd)
            ]
            assert len(rules) == 1 and rules[0].min_volume_ml == [value or 0.0] * 2, name
        # a model that records them: answer_volume_fraction of each structure's, at least min_answer_ml
        parser = load_bundle_config(name)
        parser["structure_volumes_ml"] = {"anterior hippocampus": 20.0, "posterior hippocampus": 2.0}
        parser["min_answer_ml"], parser["answer_volume_fraction"] = 1.0, 0.25
        (rule,) = [
            t for t in parser.get_parsed_content("postprocessing").transforms if isinstance(t, DropSmallAnswersd)
        ]
        assert rule.min_volume_ml == [5.0, 1.0], name


def test_keep_largest_is_a_switch_or_a_choice_per_structure_in_inference_and_evaluation():
    from monai.transforms import KeepLargestConnectedComponentd

    for name in ("inference.json", "evaluate.json"):
        for value, labels in ((False, None), (True, (1, 2)), (["posterior hippocampus"], (2,))):
            parser = load_bundle_config(name)
            parser["keep_largest"] = value
            kept = [
                t
                for t in parser.get_parsed_content("postprocessing").transforms
                if isinstance(t, KeepLargestConnectedComponentd)
            ]
            assert len(kept) == int(labels is not None), name
            if labels:  # each chosen label on its own, 26-connected
                converter = kept[0].converter
                assert converter.independent and converter.connectivity == 3 and converter.applied_labels == labels
        for key in ("run", "inference" if name == "inference.json" else "evaluating"):
            # checked before anything is built or written
            assert load_bundle_config(name)[key][:2] == ["$@check_flags", "$@largest_component_labels"], (name, key)
        for value, problem in (("false", "True, False or a list"), (["livr"], "'livr', which this model does not")):
            parser = load_bundle_config(name)
            parser["keep_largest"] = value
            with pytest.raises(RuntimeError) as raised:  # MONAI wraps what a config expression raises
                parser.get_parsed_content("largest_component_labels")
            assert problem in str(raised.value.__cause__), (name, value)


def test_every_entry_point_refuses_switches_given_as_text_first():
    import pytest

    from bundle.utils import check_flags

    check_flags(resume=True, compile=False)
    with pytest.raises(ValueError, match=r"--compile 'false', --nifti 'True'.*write True or False"):
        check_flags(compile="false", nifti="True", progress=True)
    entry_points = {
        ("train.json",): ("center_prompts", ["run", "training"]),
        ("train.json", "multi_gpu_train.json"): ("augment_spatial", ["run", "training"]),
        ("inference.json",): ("compile", ["run"]),
        ("evaluate.json",): ("save_predictions", ["run", "evaluating"]),
        ("inference.json", "dicom_batch.json"): ("nifti", ["run"]),
    }
    for names, (flag, lists) in entry_points.items():
        parser = load_bundle_config(*names)
        for key in lists:  # the check runs before anything else is built
            assert parser[key][0] == "$@check_flags", (names, key)
        parser[flag] = "false"
        with pytest.raises(RuntimeError) as raised:  # MONAI wraps what a config expression raises
            parser.get_parsed_content("check_flags")
        assert isinstance(raised.value.__cause__, ValueError) and f"--{flag} 'false'" in str(raised.value.__cause__)


def _flip_axes_in_training(overrides: dict) -> list[int]:
    parser = load_bundle_config("train.json", overrides=overrides)
    transforms = parser.get_parsed_content("train#random_transforms")
    return sorted(int(t.flipper.spatial_axis) for t in transforms if isinstance(t, monai.transforms.RandFlipd))


def test_flip_axes_chooses_the_mirrored_axes_of_spatial_augmentation():
    """All three axes by default, as nnU-Net; ``flip_axes`` keeps only those named (the hippocampus's front-back
    mirror turns its anterior part into the posterior one), and nothing is mirrored without ``augment_spatial``."""
    assert _flip_axes_in_training({"augment_spatial": True}) == [0, 1, 2]
    assert _flip_axes_in_training({"augment_spatial": True, "flip_axes": [0]}) == [0]
    assert _flip_axes_in_training({"augment_spatial": True, "flip_axes": []}) == []
    assert _flip_axes_in_training({"augment_spatial": False, "flip_axes": [0]}) == []
    assert _flip_axes_in_training({"augment_spatial": True, "spatial_dims": 2}) == [0, 1]


def test_coordinate_channels_reach_every_pipeline_and_the_network_s_input():
    """``coordinate_channels`` (inference.json, shared by train.json and evaluate.json) adds the voxels' positions
    to the image in inference and evaluation, after normalisation; in training it keeps them apart through the
    intensity augmentation and joins them before the prompt sampling and in validation; the network's input grows
    by one channel per spatial axis."""
    from monai.transforms import ConcatItemsd, NormalizeIntensityd

    from bundle.transforms import AddCoordinatesd

    def coordinate_steps(transforms) -> list:
        transforms = transforms.transforms if hasattr(transforms, "transforms") else transforms
        return [type(t).__name__ for t in transforms if isinstance(t, (AddCoordinatesd, NormalizeIntensityd))]

    for name in ("inference.json", "evaluate.json", "train.json"):
        for on in (False, True):
            parser = load_bundle_config(name)
            parser["coordinate_channels"] = on
            assert parser.get_parsed_content("denoiser_def#in_channels") == (5 if on else 2), name
            key = "load_transforms" if name == "train.json" else "preprocessing"
            expected = ["NormalizeIntensityd"] + (["AddCoordinatesd"] if on else [])
            assert coordinate_steps(parser.get_parsed_content(key)) == expected, name
    parser = load_bundle_config("train.json")
    parser["coordinate_channels"] = True
    (add,) = [t for t in parser.get_parsed_content("load_transforms") if isinstance(t, AddCoordinatesd)]
    assert add.coords_key == "coords"
    # MONAI writes references' "#" as "::" once parsed
    items = parser["train"]["random_transforms"]
    names = [str(t.get("_target_")) if isinstance(t, dict) else t.replace("::", "#") for t in items]
    assert names.index("@join_coordinates#0") == names.index("bundle.transforms.RandPromptd") - 2
    assert names.index("@join_coordinates#0") > names.index("RandSimulateLowResolutiond")
    validation = parser.get_parsed_content("validate#preprocessing").transforms
    assert isinstance(validation[-2], ConcatItemsd) and validation[-2].name == "image"
    # off (the shipped recipe): the training and validation pipelines hold no join at all, nothing copied per step
    parser = load_bundle_config("train.json")
    for key in ("train#preprocessing", "validate#preprocessing"):
        transforms = parser.get_parsed_content(key).transforms
        assert transforms and not any(t is None or isinstance(t, ConcatItemsd) for t in transforms), key
