"""scripts/benchmarks/benchmark_inference.py: interleaved whole-volume timing of SegOne against the UNet baseline."""

from __future__ import annotations

import pytest
import torch

from bundle.utils.config import BUNDLE_ROOT
from tests.helpers.scripts import load_script

SCRIPT = BUNDLE_ROOT / "scripts" / "benchmarks" / "benchmark_inference.py"


def _module():
    return load_script(SCRIPT)


def test_rounds_are_interleaved_with_a_rotating_order():
    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = _module().interleaved_seconds(runs, repeats=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}


@pytest.mark.slow
def test_table_has_every_network_and_thread_count_with_ratios(capsys):
    argv = ["--steps", "1", "--threads", "1", "2", "--repeats", "2", "--shape", "16", "16", "16"]
    assert _module().main(argv + ["--set", "encoder_blocks=[1,1,2,2]"]) == 0
    rows = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| SegOne") or line.startswith("| MONAI")
    ]
    assert len(rows) == 4
    assert all("encoder_blocks=[1, 1, 2, 2]" in r for r in rows if r.startswith("| SegOne"))
    assert [r.split(" | ")[2] for r in rows] == ["1", "1", "2", "2"]
    assert all(r.endswith("x1.00 |") for r in rows if "UNet (baseline)" in r)


@pytest.mark.slow
def test_the_number_of_structures_sets_prompts_and_unet_channels(capsys):
    argv = ["--steps", "1", "--threads", "1", "--repeats", "1", "--shape", "16", "16", "16", "--num_classes", "4"]
    assert _module().main(argv) == 0
    out = capsys.readouterr().out
    assert "| SegOne, 1 DDIM step(s), 4 prompts |" in out
    assert "UNet (baseline)" in out
    assert _module().baseline_unet(4)(torch.zeros(1, 1, 32, 32, 32)).shape[1] == 5


def test_encoder_per_prompt_row_gives_the_shared_encoders_probabilities():
    from bundle.utils.config import load_bundle_config
    from tests.helpers.bundle_runs import SMALL

    torch.manual_seed(0)
    seg = load_bundle_config("inference.json", overrides=SMALL).get_parsed_content("network_def").eval()
    prompts = torch.randn(3, seg.prompt_embeddings.shape[1])
    image = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        per_prompt = _module().EncoderPerPrompt(seg)(image, prompts)
        shared = seg.sample(image, prompts.repeat(2, 1), seg.num_inference_steps, seg.seed, prompts_per_image=3)[0]
    torch.testing.assert_close(per_prompt, shared.reshape(2, 3, 16, 16, 16), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_encoder_per_prompt_adds_a_row_per_segone(capsys):
    argv = ["--steps", "1", "--threads", "1", "--repeats", "1", "--shape", "16", "16", "16", "--encoder_per_prompt"]
    assert _module().main(argv + ["--num_classes", "3"]) == 0
    out = capsys.readouterr().out
    assert "| SegOne, 1 DDIM step(s), 3 prompts, encoder per prompt (bundle <= 0.9) |" in out


@pytest.mark.slow
def test_several_window_batch_sizes_time_every_network_at_each_against_the_fastest_unet(capsys):
    argv = [
        "--steps",
        "1",
        "--threads",
        "1",
        "--repeats",
        "1",
        "--shape",
        "16",
        "80",
        "16",
        "--sw_batch_size",
        "1",
        "2",
    ]
    assert _module().main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.startswith("| SegOne") or line.startswith("| MONAI")]
    assert [r.split(" | ")[0].rsplit(", ", 1)[1] for r in rows] == ["1 window(s) per call", "2 window(s) per call"] * 2
    unet = [float(r.rstrip(" |").rsplit("x", 1)[1]) for r in rows if "UNet" in r]
    assert min(unet) == 1.0  # the ratio's reference is the UNet's faster row


@pytest.mark.slow
def test_each_variant_adds_segone_rows_with_its_overrides_on_top_of_set(capsys):
    argv = ["--steps", "1", "--threads", "1", "--repeats", "1", "--shape", "16", "16", "16", "--num_classes", "3"]
    variants = ["--variant", "shared_decoder=True", "--variant", "shared_decoder=True;features=[16,32,64,128]"]
    assert _module().main(argv + ["--set", "encoder_blocks=[1,1,1,1]"] + variants) == 0
    rows = [line.split(" | ")[:2] for line in capsys.readouterr().out.splitlines() if line.startswith("| SegOne")]
    assert [r[0] for r in rows] == [
        "| SegOne, 1 DDIM step(s), 3 prompts (encoder_blocks=[1, 1, 1, 1])",
        "| SegOne, 1 DDIM step(s), 3 prompts (encoder_blocks=[1, 1, 1, 1], shared_decoder=True)",
        "| SegOne, 1 DDIM step(s), 3 prompts (encoder_blocks=[1, 1, 1, 1], shared_decoder=True, features=[16, 32, 64, 128])",
    ]
    assert len({r[1] for r in rows}) == 3  # three networks: three parameter counts
    with pytest.raises(SystemExit):
        _module().main(argv + ["--variant", "shared_decoder"])


def test_head_in_order_gives_the_folded_heads_probabilities():
    from bundle.utils.config import load_bundle_config
    from tests.helpers.bundle_runs import SMALL

    torch.manual_seed(0)
    seg = load_bundle_config("inference.json", overrides=SMALL).get_parsed_content("network_def").eval()
    for p in seg.denoiser.head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    reference = _module().with_head_in_order(seg)
    assert seg.denoiser.head is not reference.denoiser.head.head  # a copy: the timed model is untouched
    prompts = torch.randn(3, seg.prompt_embeddings.shape[1])
    image = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(reference(image, prompts), seg(image, prompts), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_head_in_order_adds_a_row_per_segone(capsys):
    argv = ["--steps", "1", "--threads", "1", "--repeats", "1", "--shape", "16", "16", "16", "--head_in_order"]
    assert _module().main(argv + ["--num_classes", "3"]) == 0
    assert "| SegOne, 1 DDIM step(s), 3 prompts, head in order (bundle <= 0.17) |" in capsys.readouterr().out


@pytest.mark.slow
def test_spacing_and_thick_slice_ratio_plan_every_networks_window(capsys):
    argv = ["--steps", "1", "--threads", "1", "--repeats", "1", "--shape", "10", "40", "40", "--num_classes", "1"]
    assert _module().main(argv + ["--spacing", "10", "1.5", "1.5", "--thick_slice_ratio", "3"]) == 0
    assert "volume 10x40x40, ROI 16x96x96," in capsys.readouterr().out
    assert _module().main(argv + ["--spacing", "10", "1.5", "1.5"]) == 0
    assert "volume 10x40x40, ROI 48x64x48," in capsys.readouterr().out


def test_thick_slice_ratio_without_spacing_is_refused():
    with pytest.raises(SystemExit):
        _module().main(["--thick_slice_ratio", "3"])


@pytest.mark.slow
def test_a_coordinate_channels_variant_runs_on_the_volume_with_its_positions(capsys):
    """``--variant coordinate_channels=True``: that network takes the volume with its voxels' positions (four
    channels), in the spacing-planned window as the others, and gets its own row."""
    argv = ["--steps", "1", "--threads", "1", "--repeats", "1", "--shape", "10", "40", "40", "--num_classes", "2"]
    spacing = ["--spacing", "10", "1.5", "1.5", "--thick_slice_ratio", "3"]
    assert _module().main(argv + spacing + ["--variant", "coordinate_channels=True", "--encoder_per_prompt"]) == 0
    rows = [line.split(" | ")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("| SegOne")]
    assert rows == [
        "| SegOne, 1 DDIM step(s), 2 prompts",
        "| SegOne, 1 DDIM step(s), 2 prompts (coordinate_channels=True)",
        "| SegOne, 1 DDIM step(s), 2 prompts, encoder per prompt (bundle <= 0.9)",
        "| SegOne, 1 DDIM step(s), 2 prompts (coordinate_channels=True), encoder per prompt (bundle <= 0.9)",
    ]  # a row derived from the network of positions runs on them too (it would fail on the image alone)
