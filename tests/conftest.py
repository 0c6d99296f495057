"""Shared fixtures: a tiny open_clip architecture registered for the tests."""

from __future__ import annotations

import json

import pytest

TINY_CLIP = "segone-test-tiny-clip"


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """Registers a small open_clip architecture (CLIP BPE tokenizer, 1-layer towers) and returns its name."""
    import open_clip

    if open_clip.get_model_config(TINY_CLIP) is None:
        config = {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        }
        path = tmp_path_factory.mktemp("open_clip") / f"{TINY_CLIP}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)
    return TINY_CLIP

