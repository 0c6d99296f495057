"""Mirroring test-time augmentation: outputs flipped back and averaged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bundle.inference import FlipEnsemble, with_flips
from bundle.utils.config import load_bundle_config


class _Ramp(nn.Module):
    """Not mirror-symmetric: adds a ramp along every spatial axis, and the keyword ``shift``."""

    def forward(self, image: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
        ramps = [
            torch.arange(s, dtype=image.dtype).view(*([1] * (2 + i)), s, *([1] * (image.dim() - 3 - i)))
            for i, s in enumerate(image.shape[2:])
        ]
        return image + sum(ramps) + shift


def test_flips_are_undone_and_averaged():
    net, x = _Ramp(), torch.rand(2, 1, 3, 4, 5)
    assert torch.equal(FlipEnsemble(net, [[]])(x), net(x))
    got = FlipEnsemble(net, [[], [0], [1, 2]])(x, shift=1.0)
    by_hand = (net(x, 1.0) + net(x.flip(2), 1.0).flip(2) + net(x.flip(3, 4), 1.0).flip(3, 4)) / 3
    assert torch.allclose(got, by_hand)
    # the image term comes back in place; the ramp is averaged with its mirror
    assert torch.allclose(FlipEnsemble(net, [[0]])(x) - x, net(torch.zeros_like(x)).flip(2))


def test_bad_flips_are_refused():
    with pytest.raises(ValueError, match="at least one flip"):
        FlipEnsemble(_Ramp(), [])
    with pytest.raises(ValueError, match=r"flip axes \(3,\) outside the 3 spatial axes"):
        FlipEnsemble(_Ramp(), [[3]])(torch.zeros(1, 1, 2, 2, 2))


def test_the_config_wraps_the_network_only_when_asked():
    net = _Ramp()
    assert with_flips(net, []) is net and with_flips(net, None) is net
    assert isinstance(with_flips(net, [[], [0]]), FlipEnsemble)
    parser = load_bundle_config("inference.json", overrides={"tta_flips": [[], [0]], "ckpt_path": "x"})
    assert "with_flips" in parser["network"] and parser.get_parsed_content("tta_flips") == [[], [0]]
    assert load_bundle_config("evaluate.json").get_parsed_content("tta_flips") == []
