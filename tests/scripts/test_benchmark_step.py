"""scripts/benchmarks/benchmark_step.py: training steps and inference calls under two settings (malloc, the bias
before instance norms, where the noisy mask enters, any config overrides), in worker processes that take turns."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from bundle.utils.config import BUNDLE_ROOT

SCRIPT = BUNDLE_ROOT / "scripts" / "benchmarks" / "benchmark_step.py"
SEGONE_CASES = ("SegOne training", "SegOne inference, 4 windows x 3 prompts", "SegOne inference, 1 window x 12 prompts")


def _rows(*args: str) -> list[list[str]]:
    # run as a user runs it: its spawned workers import the script as __main__'s module
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--threads", "1", "--repeats", "1", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return [line.split(" | ") for line in out.stdout.splitlines() if line.startswith("| 1 |")]


def _script():
    """The script as a module, imported the way it imports itself (from its folder)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import benchmark_step
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return benchmark_step


def _denoiser(compare: str, setting: str, overrides: dict | None = None):
    """inference.json's denoiser in ``setting`` of ``compare``."""
    from bundle.utils.config import load_bundle_config

    config = _script()._network_overrides(compare, setting, overrides)
    return load_bundle_config("inference.json", overrides=config).get_parsed_content("denoiser_def")


def _check(rows: list[list[str]], cases, settings) -> None:
    assert [(r[1], r[2]) for r in rows] == [(case, setting) for case in cases for setting in settings]
    assert all(r[-1] == "x1.00 |" for r in rows if r[2] == settings[0])
    assert all(float(r[3].split()[0]) > 0 and float(r[4].split()[0]) > 0 for r in rows)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings: Linux only")
def test_malloc_table_has_both_settings_with_ratios_to_stock():
    # one case per table: each worker process costs an import of the bundle, and chosen_cases is tested apart
    _check(_rows("--compare", "malloc", "--cases", "UNet training"), ("UNet training",), ("stock", "kept"))


def test_every_case_that_a_comparison_applies_to_is_timed_by_default():
    chosen_cases = _script().chosen_cases
    assert chosen_cases("malloc") == chosen_cases("compile") == list(_script().CASES)
    for compare in ("bias", "mask_input", "config", "tree"):
        assert chosen_cases(compare) == list(SEGONE_CASES)
    assert chosen_cases("metadata") == ["SegOne training", "UNet training"]
    assert chosen_cases("bias", [SEGONE_CASES[2]]) == [SEGONE_CASES[2]]  # as given
    with pytest.raises(ValueError, match="training steps"):
        chosen_cases("metadata", [SEGONE_CASES[1]])
    for compare in ("bias", "mask_input", "config", "tree"):  # nothing of the UNet's step changes between settings
        with pytest.raises(ValueError, match="not the UNet"):
            chosen_cases(compare, ["UNet training", SEGONE_CASES[0]])
    with pytest.raises(SystemExit):
        _script().main(["--compare", "bias", "--cases", "UNet training"])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings: Linux only")
def test_bias_table_compares_a_segone_case_with_ratios_to_the_added_bias():
    _check(_rows("--compare", "bias", "--cases", SEGONE_CASES[1]), SEGONE_CASES[1:2], ("added", "skipped"))


def test_the_added_bias_setting_undoes_every_skip():
    benchmark_step = _script()
    from bundle.utils.config import load_bundle_config

    denoiser = load_bundle_config("inference.json").get_parsed_content("denoiser_def")
    skipped = [m for m in denoiser.modules() if getattr(m, "skip_bias", False)]
    assert skipped  # the shipped network has convolutions before instance norms
    benchmark_step._add_skipped_biases(denoiser)
    assert not any(getattr(m, "skip_bias", False) for m in denoiser.modules())
    assert all(m.bias.requires_grad for m in skipped)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings: Linux only")
def test_mask_input_table_compares_where_the_noisy_mask_enters():
    rows = _rows("--compare", "mask_input", "--cases", "SegOne training")
    _check(rows, ("SegOne training",), ("encoder", "decoder"))


def test_the_mask_input_settings_put_the_noisy_mask_at_the_encoder_or_the_decoder():
    for setting, decoder_inputs in (("encoder", []), ("decoder", [0])):
        assert _denoiser("mask_input", setting).decoder_inputs == decoder_inputs
    assert _script()._network_overrides("bias", "added") == {}


@pytest.mark.parametrize("overrides", [None, {"coordinate_channels": True}])
def test_the_inference_case_builds_its_input_from_the_parsed_config(overrides):
    # in_channels is an expression of inference.json (the positions add channels); the case must parse it
    call = _script()._inference_function(1, 2, overrides=overrides)
    call()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings: Linux only")
def test_config_table_compares_the_configs_with_their_set_overrides():
    rows = _rows(
        "--compare", "config", "--set", "decoder_blocks=[2,1,1]", "--cases", "SegOne inference, 1 window x 12 prompts"
    )
    _check(rows, ("SegOne inference, 1 window x 12 prompts",), ("inference.json", "--set"))


def test_the_config_settings_apply_the_set_overrides_to_the_second_only():
    from bundle.utils.config import load_bundle_config

    overrides = {"decoder_blocks": [2, 1, 1], "features": [16, 64, 128, 256]}
    blocks, features = {}, {}
    for setting in ("inference.json", "--set"):
        denoiser = _denoiser("config", setting, overrides)
        blocks[setting] = len(denoiser.decoder[-1].blocks)  # the finest decoder stage's shift-and-mix blocks
        features[setting] = denoiser.features
    shipped = load_bundle_config("inference.json")["decoder_blocks"][0]
    assert blocks == {"inference.json": shipped, "--set": 2}
    assert features == {
        "inference.json": tuple(load_bundle_config("inference.json")["features"]),
        "--set": (16, 64, 128, 256),
    }
    for argv in (
        ["--compare", "config"],
        ["--compare", "bias", "--set", "decoder_blocks=[2,1,1]"],
        ["--compare", "config", "--set", "decoder_blocks"],
    ):
        with pytest.raises(SystemExit):
            _script().main(argv)


def test_the_tree_baseline_worker_imports_bundle_from_the_other_checkout(tmp_path):
    """``--compare tree``'s baseline worker loads ``bundle`` (code and configs) from ``--baseline``, not from the
    installed package; checked in a fresh process, where nothing has imported ``bundle`` yet."""
    for package in ("bundle", "bundle/utils"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "bundle" / "utils" / "config.py").write_text("MARK = 'baseline checkout'\n")
    code = (
        "import sys; sys.argv = ['x']\n"
        f"import runpy; ns = runpy.run_path({str(SCRIPT)!r}, run_name='benchmark_step')\n"
        f"ns['_import_bundle_from']({str(tmp_path)!r})\n"
        "import bundle, bundle.utils.config as c\n"
        "print(bundle.__file__); print(c.MARK)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == [str(tmp_path / "bundle" / "__init__.py"), "baseline checkout"]


def test_the_tree_comparison_needs_a_checkout_as_baseline(tmp_path):
    benchmark_step = _script()
    for argv in (
        ["--compare", "tree"],
        ["--compare", "bias", "--baseline", str(tmp_path)],
        ["--compare", "tree", "--baseline", str(tmp_path)],  # no bundle/ there
    ):
        with pytest.raises(SystemExit):
            benchmark_step.main(argv)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings: Linux only")
def test_tree_table_times_this_checkout_against_a_baseline_checkout():
    rows = _rows("--compare", "tree", "--baseline", str(BUNDLE_ROOT), "--cases", SEGONE_CASES[2])
    _check(rows, (SEGONE_CASES[2],), ("baseline", "this tree"))


def test_the_metadata_settings_hand_the_step_metatensors_or_plain_tensors(monkeypatch):
    """The ``MetaTensor`` setting wraps the step's inputs as the data loader collates them; ``plain`` does not.
    Checked on the UNet's step (cheap), through the inputs its loss sees."""
    from monai.data import MetaTensor
    from monai.losses import DiceCELoss

    seen = []
    original = DiceCELoss.forward
    monkeypatch.setattr(DiceCELoss, "forward", lambda self, x, y: seen.append(type(y)) or original(self, x, y))
    for setting in ("MetaTensor", "plain"):
        _script()._step_function("UNet training", "metadata", setting)()
    assert seen == [MetaTensor, torch.Tensor]
    with pytest.raises(SystemExit):
        _script().main(["--compare", "metadata", "--cases", "SegOne inference, 1 window x 12 prompts"])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings: Linux only")
def test_metadata_table_times_the_training_steps_with_and_without_metatensors():
    rows = _rows("--compare", "metadata", "--cases", "SegOne training")
    _check(rows, ("SegOne training",), ("MetaTensor", "plain"))
