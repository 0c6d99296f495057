"""torch.compile for inference: the compiled segmenter gives eager mode's probabilities, and the configs' switch."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from bundle.inference import CompiledNetwork, compile_network, prompted_inference, with_flips
from bundle.utils.config import load_bundle_config
from tests.helpers.bundle_runs import SMALL, TINY_CLIP_DIM, error_chain

OVERRIDES = {**SMALL, "text_dim": TINY_CLIP_DIM, "num_inference_steps": 1}


@pytest.mark.slow  # inductor compiles the network: half a minute or more on a cold cache
def test_compiled_segmenter_matches_eager_through_sliding_windows():
    from bundle.networks.receptive_field import activate_zero_init

    torch.manual_seed(0)
    parser = load_bundle_config("inference.json", overrides=OVERRIDES)
    net = parser.get_parsed_content("network_def").eval()
    activate_zero_init(net, std=0.3)  # weights in every branch, so a wrong fusion would show
    inferer = parser.get_parsed_content("inferer")
    affine = torch.diag(torch.tensor([1.5, 1.0, 2.0, 1.0]))
    image = MetaTensor(torch.randn(1, 1, 20, 35, 16), affine=affine)  # padded and tiled into 16^3 windows
    compiled = compile_network(net, True)
    assert isinstance(compiled, CompiledNetwork) and compiled.network is net
    # one copy of the weights: the compiled forward is not a second registered module
    assert list(compiled.state_dict()) == [f"network.{k}" for k in net.state_dict()]
    with torch.no_grad():
        expected = prompted_inference(inferer, net, image)
        got = prompted_inference(inferer, compiled, image)
        # the prompt route: embeddings in as keyword arguments
        chosen = torch.randn(2, TINY_CLIP_DIM)
        got_chosen = prompted_inference(inferer, compiled, image, chosen)
        expected_chosen = prompted_inference(inferer, net, image, chosen)
    torch.testing.assert_close(got.as_tensor(), expected.as_tensor(), rtol=0, atol=1e-4)
    torch.testing.assert_close(got_chosen.as_tensor(), expected_chosen.as_tensor(), rtol=0, atol=1e-4)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert not torch.equal(got_chosen, got)  # the chosen prompts were used, not the network's own
    # the inferer puts the image's geometry back on the stitched output, as without compile
    assert isinstance(got, MetaTensor) and torch.equal(got.affine, expected.affine)


def test_compile_switch_wraps_only_when_asked():
    net = torch.nn.Identity()
    assert compile_network(net, False) is net
    flipped = with_flips(net, [[], [0]])
    compiled = compile_network(flipped, True)
    assert isinstance(compiled, CompiledNetwork) and compiled.network is flipped
    for config in ("inference.json", "evaluate.json"):
        assert load_bundle_config(config).get_parsed_content("compile") is False
        parser = load_bundle_config(config, overrides={"compile": True})
        assert isinstance(parser.get_parsed_content("network"), CompiledNetwork)  # the shipped model, compiled
        # "true" from the command line is text: refused before anything runs, as every switch
        parser = load_bundle_config(config, overrides={"compile": "true"})
        with pytest.raises(RuntimeError) as info:  # MONAI's config resolution wraps the ValueError
            parser.get_parsed_content("check_flags")
        assert "ValueError: switches must be True or False, got --compile 'true'" in error_chain(info.value)
