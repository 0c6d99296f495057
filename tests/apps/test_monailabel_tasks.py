"""The MONAI Label tasks' hooks (no server needed): what a fine-tuning request turns into for train.json, and the
served network."""

from __future__ import annotations

from bundle.utils.config import BUNDLE_ROOT


def _overrides(task) -> dict:
    return task._update_overrides({"train#trainer#max_epochs": 2, "train#dataset#data": [{"image": "a", "label": "b"}]})


def test_fine_tuning_starts_from_the_served_weights_through_train_json(tmp_path):
    from bundle.apps.monailabel.tasks import SegOneTrain

    task = SegOneTrain(BUNDLE_ROOT, start_weights=lambda: "/served/model.pt", output_dir=tmp_path)
    handlers: list = []
    task._load_checkpoint(str(BUNDLE_ROOT / "models" / "model.pt"), True, handlers)
    assert handlers == []  # no CheckpointLoader: train.json's own switch loads the weights
    overrides = _overrides(task)
    assert overrides["finetune"] is True and overrides["finetune_model_path"] == "/served/model.pt"
    assert overrides["max_epochs"] == 2 and overrides["resume"] is False
    # no held-out pairs: validation on the training pairs
    assert overrides["validate#dataset#data"] == overrides["train#dataset#data"]


def test_a_request_without_pretrained_weights_starts_from_random_ones(tmp_path):
    from bundle.apps.monailabel.tasks import SegOneTrain

    task = SegOneTrain(BUNDLE_ROOT, start_weights=lambda: "/served/model.pt", output_dir=tmp_path)
    task._load_checkpoint(str(BUNDLE_ROOT / "models" / "model.pt"), False, [])
    assert _overrides(task)["finetune"] is False


def test_the_served_network_runs_through_torch_compile_only_when_asked():
    from bundle.apps.monailabel.tasks import SegOneInfer
    from bundle.diffusion import PromptedSegmenter
    from bundle.inference import CompiledNetwork

    shipped = BUNDLE_ROOT / "models" / "model.pt"
    served = SegOneInfer(BUNDLE_ROOT, [shipped])._get_network("cpu", None)
    assert isinstance(served, PromptedSegmenter) and not served.training
    compiled = SegOneInfer(BUNDLE_ROOT, [shipped], overrides={"compile": True})._get_network("cpu", None)
    assert isinstance(compiled, CompiledNetwork) and isinstance(compiled.network, PromptedSegmenter)
    assert not compiled.training and not compiled.network.training


def test_the_thick_slice_ratio_setting_plans_the_served_windows_from_each_volumes_spacing():
    import torch
    from monai.data import MetaTensor

    from bundle.apps.monailabel.main import infer_conf_overrides
    from bundle.apps.monailabel.tasks import SegOneInfer

    overrides = infer_conf_overrides({"thick_slice_ratio": "3", "keep_largest": "true", "skip_trainers": "true"})
    assert overrides == {"thick_slice_ratio": 3.0, "keep_largest": True}
    # keep_largest: a switch, or the structures' names (a choice per structure)
    for text, value in (("off", False), ("1", True), ("right ventricle, liver", ["right ventricle", "liver"])):
        assert infer_conf_overrides({"keep_largest": text}) == {"keep_largest": value}
    shipped = BUNDLE_ROOT / "models" / "model.pt"
    cine = MetaTensor(torch.zeros(1, 1, 10, 256, 216), affine=torch.diag(torch.tensor([10.0, 1.5, 1.5, 1.0])))
    assert SegOneInfer(BUNDLE_ROOT, [shipped], overrides=overrides)._inferer.window_for(cine) == (16, 96, 96)
    assert SegOneInfer(BUNDLE_ROOT, [shipped])._inferer.window_for(cine) == (48, 64, 48)


def test_a_model_trained_with_coordinate_channels_is_served_and_fine_tuned_with_them(tmp_path):
    """``--conf coordinate_channels true``: the served preprocessing appends the voxels' positions and fine-tuning
    trains the same network inputs."""
    from bundle.apps.monailabel.main import infer_conf_overrides
    from bundle.apps.monailabel.tasks import SegOneInfer, SegOneTrain
    from bundle.transforms import AddCoordinatesd

    overrides = infer_conf_overrides({"coordinate_channels": "true"})
    assert overrides == {"coordinate_channels": True}
    shipped = BUNDLE_ROOT / "models" / "model.pt"
    served = SegOneInfer(BUNDLE_ROOT, [shipped], overrides=overrides).pre_transforms()
    assert sum(isinstance(t, AddCoordinatesd) for t in served) == 1
    assert not any(isinstance(t, AddCoordinatesd) for t in SegOneInfer(BUNDLE_ROOT, [shipped]).pre_transforms())
    task = SegOneTrain(BUNDLE_ROOT, start_weights=lambda: str(shipped), output_dir=tmp_path, overrides=overrides)
    assert _overrides(task)["coordinate_channels"] is True
