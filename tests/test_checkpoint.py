"""Checkpoint files: atomic writes, and errors that name the file and the problem."""

from __future__ import annotations

import pytest
import torch

from bundle.checkpoint import CheckpointError, load_checkpoint, load_prompt_table, load_weights, save_atomic


def _net(width: int = 4) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv3d(1, width, 1), torch.nn.Conv3d(width, 2, 1))


def test_save_atomic_round_trip_leaves_no_temporary_files(tmp_path):
    net = _net()
    path = save_atomic({"model": net.state_dict()}, tmp_path / "sub" / "model.pt")
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]
    other = _net()
    load_weights(other, path)
    for a, b in zip(net.parameters(), other.parameters()):
        assert torch.equal(a, b)


def test_truncated_and_missing_files_name_the_file(tmp_path):
    path = save_atomic({"model": _net().state_dict()}, tmp_path / "model.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="absent.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_checkpoint_of_another_architecture_is_explained(tmp_path):
    path = save_atomic({"model": _net(4).state_dict()}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"model.pt: checkpoint does not fit Sequential.*shape mismatch"):
        load_weights(_net(8), path)
    extra = torch.nn.Sequential(_net(4), torch.nn.Conv3d(2, 2, 1))
    with pytest.raises(CheckpointError, match="missing key"):
        load_weights(extra, path)
    with pytest.raises(CheckpointError, match="no 'prompt_table' entry"):
        load_prompt_table(path)


def test_a_bare_state_dict_also_loads(tmp_path):
    net = _net()
    path = save_atomic(net.state_dict(), tmp_path / "bare.pt")
    load_weights(_net(), path)
