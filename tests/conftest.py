"""Shared fixtures: a tiny open_clip architecture registered for the tests, and a small synthetic MSD folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.bundle_runs import TINY_CLIP, TINY_CLIP_DIM, write_msd


@pytest.fixture(scope="session")
def tiny_clip_config(tmp_path_factory) -> str:
    """Path of a small open_clip architecture config (CLIP BPE tokenizer, 1-layer towers, 32-dim embeddings)."""
    config = {
        "embed_dim": TINY_CLIP_DIM,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    path = tmp_path_factory.mktemp("open_clip") / f"{TINY_CLIP}.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_config) -> str:
    """Registers the small open_clip architecture in this process and returns its name."""
    import open_clip

    if open_clip.get_model_config(TINY_CLIP) is None:
        open_clip.add_model_config(tiny_clip_config)
    return TINY_CLIP


@pytest.fixture(scope="module")
def msd_dir(tmp_path_factory) -> Path:
    """A synthetic MSD-layout folder of six phantoms (``tests.helpers.bundle_runs.write_msd``)."""
    return write_msd(tmp_path_factory.mktemp("msd") / "Task")


@pytest.fixture()
def planned_windows(monkeypatch) -> set:
    """Every window ``bundle.inference.SpacingWindowInferer`` plans during the test, recorded as it returns them."""
    import bundle.inference

    seen: set[tuple[int, ...]] = set()
    window_for = bundle.inference.SpacingWindowInferer.window_for

    def recording(self, inputs):
        window = window_for(self, inputs)
        seen.add(window)
        return window

    monkeypatch.setattr(bundle.inference.SpacingWindowInferer, "window_for", recording)
    return seen
