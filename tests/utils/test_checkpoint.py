"""Model and checkpoint files: the plain-state-dict format with its prompt table, legacy files, clear errors."""

from __future__ import annotations

import pytest
import torch

from bundle.text import PromptEmbeddingTable
from bundle.utils.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_info,
    load_prompt_table,
    load_weights,
    model_structure_volumes,
    prompt_table_path,
    save_model,
)
from bundle.utils.io import save_torch_atomic


def _net(width: int = 4) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv3d(1, width, 1), torch.nn.Conv3d(width, 2, 1))


def _table() -> PromptEmbeddingTable:
    return PromptEmbeddingTable({"liver": torch.ones(3), "spleen": torch.zeros(3)}, {"model_name": "x"})


def test_save_model_writes_a_plain_state_dict_and_the_prompt_table_beside_it(tmp_path):
    net = _net()
    path = save_model(net, tmp_path / "sub" / "model.pt", _table(), {"epoch": 3, "metric": 0.5})
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.prompts.pt", "model.pt"]
    assert prompt_table_path(path) == path.parent / "model.prompts.pt"
    state = torch.load(path, weights_only=True)
    assert set(state) == set(net.state_dict())  # MONAI's loaders take it with their default arguments
    other = load_weights(_net(), path)
    for a, b in zip(net.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert load_prompt_table(path).prompts == ["liver", "spleen"]
    assert load_model_info(path)["metadata"] == {"epoch": 3, "metric": 0.5}


def test_a_model_file_of_bundle_0_4_still_loads(tmp_path):
    net = _net()
    legacy = {"model": net.state_dict(), "prompt_table": _table().state_dict(), "metadata": {"epoch": 1}}
    path = save_torch_atomic(legacy, tmp_path / "old.pt")
    other = load_weights(_net(), path)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), other.parameters()))
    assert load_prompt_table(path).prompts == ["liver", "spleen"]
    assert load_model_info(path)["metadata"] == {"epoch": 1}


def test_truncated_and_missing_files_name_the_file(tmp_path):
    path = save_model(_net(), tmp_path / "model.pt", _table(), {})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="absent.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_checkpoint_of_another_architecture_is_explained(tmp_path):
    path = save_model(_net(4), tmp_path / "model.pt", _table(), {})
    with pytest.raises(CheckpointError, match=r"model.pt: checkpoint does not fit Sequential.*shape mismatch"):
        load_weights(_net(8), path)
    extra = torch.nn.Sequential(_net(4), torch.nn.Conv3d(2, 2, 1))
    with pytest.raises(CheckpointError, match="missing key"):
        load_weights(extra, path)


def test_entries_kept_as_configured_may_differ_in_the_file(tmp_path):
    class Prompted(torch.nn.Module):
        def __init__(self, k: int) -> None:
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, 1)
            self.register_buffer("prompt_embeddings", torch.full((k, 3), float(k)))

    path = save_model(Prompted(2), tmp_path / "model.pt", _table(), {})
    net = Prompted(5)
    with pytest.raises(CheckpointError, match="prompt_embeddings: \\(2, 3\\) in file, \\(5, 3\\) in network"):
        load_weights(net, path)
    torch.nn.init.zeros_(net.conv.weight)
    load_weights(net, path, keep_own=["prompt_embeddings"])
    assert torch.equal(net.conv.weight, torch.load(path, weights_only=True)["conv.weight"])
    assert torch.equal(net.prompt_embeddings, torch.full((5, 3), 5.0))
    with pytest.raises(ValueError, match="'embeddings' is not in Prompted's state dict"):
        load_weights(net, path, keep_own=["embeddings"])


def test_a_model_without_its_prompt_table_is_explained(tmp_path):
    path = save_torch_atomic(_net().state_dict(), tmp_path / "bare.pt")
    load_weights(_net(), path)  # a bare state dict loads
    with pytest.raises(CheckpointError, match=r"bare.pt: no prompt table \(.*bare.prompts.pt is missing"):
        load_prompt_table(path)


def test_a_file_that_is_no_checkpoint_of_ours_is_refused_by_name(tmp_path):
    path = save_torch_atomic({"weights": [1, 2], "epoch": 3}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt: neither a state dict nor a SegOne model"):
        load_weights(_net(), path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_file_and_the_tensor(tmp_path, bad):
    net = _net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["1.weight"][0, 0] = bad
    state["1.bias"][:] = bad
    path = tmp_path / "model.pt"
    save_torch_atomic(state, path)
    fresh = _net()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_weights(fresh, path)
    message = str(err.value)
    assert str(path) in message and "non-finite weights" in message
    assert "'1.weight' has 1 NaN or infinite value(s) of 8" in message and "2 of 4 tensors" in message
    # the network keeps its own weights
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_a_model_files_classes_are_its_prompt_rows_named_by_its_table(tmp_path):
    from bundle.utils.checkpoint import model_class_names
    from tests.helpers.bundle_runs import META

    bundle_classes = {1: "anterior hippocampus", 2: "posterior hippocampus"}
    names = ["Liver", "spleen", "anterior hippocampus", "posterior hippocampus", "edema"]
    embeddings = dict(zip(names, torch.randn(len(names), 3)))
    # the table may hold more prompts than the classes (here an extra "edema")
    table = PromptEmbeddingTable(embeddings, {"model_name": "x"})

    def saved(folder, classes):
        net = torch.nn.Module()
        net.register_buffer("prompt_embeddings", torch.stack([embeddings[c] for c in classes]))
        (tmp_path / folder).mkdir()
        return save_model(net, tmp_path / folder / "model.pt", table, {})

    suite = saved("suite", ["spleen", "Liver", "anterior hippocampus"])
    assert model_class_names(suite, META) == {1: "spleen", 2: "liver", 3: "anterior hippocampus"}
    hippo = saved("hippo", ["anterior hippocampus", "posterior hippocampus"])
    assert model_class_names(hippo, META) == bundle_classes
    assert model_class_names(None, META) == bundle_classes
    assert model_class_names(tmp_path / "none.pt", META) == bundle_classes
    odd = torch.nn.Module()
    odd.register_buffer("prompt_embeddings", torch.randn(2, 3))  # rows the table does not hold
    (tmp_path / "odd").mkdir()
    assert model_class_names(save_model(odd, tmp_path / "odd" / "model.pt", table, {}), META) == bundle_classes
    prompt_table_path(suite).write_bytes(b"not a checkpoint")  # the weights' loading names the problem, not this
    assert model_class_names(suite, META) == bundle_classes


def test_a_centred_tables_model_is_named_by_what_the_table_gives_out(tmp_path):
    from bundle.utils.checkpoint import model_class_names
    from tests.helpers.bundle_runs import META

    names = ["liver", "spleen", "left kidney"]
    raw = dict(zip(names, torch.randn(3, 4)))
    table = PromptEmbeddingTable(raw, {"model_name": "x"}, center=torch.randn(4), scale=2.0)
    net = torch.nn.Module()
    net.register_buffer("prompt_embeddings", table(["spleen", "liver"]))  # the network's rows are centred ones
    path = save_model(net, tmp_path / "model.pt", table, {})
    assert model_class_names(path, META) == {1: "spleen", 2: "liver"}


def test_a_table_repeating_an_embedding_keeps_the_bundles_classes(tmp_path):
    from bundle.utils.checkpoint import model_class_names
    from tests.helpers.bundle_runs import META

    net = torch.nn.Module()
    net.register_buffer("prompt_embeddings", torch.zeros(2, 3))  # an untrained network: both rows zero
    table = PromptEmbeddingTable({"anterior hippocampus": torch.zeros(3), "posterior hippocampus": torch.zeros(3)})
    path = save_model(net, tmp_path / "model.pt", table, {})
    assert model_class_names(path, META) == {1: "anterior hippocampus", 2: "posterior hippocampus"}
    other = PromptEmbeddingTable({"liver": torch.zeros(3), "spleen": torch.zeros(3)})
    assert model_class_names(save_model(net, tmp_path / "other.pt", other, {}), META)[1] == "anterior hippocampus"


def test_structure_volumes_come_from_the_model_files_metadata(tmp_path):
    path = save_model(_net(), tmp_path / "model.pt", _table(), {"structure_volumes_ml": {"liver": 900, "spleen": 80.5}})
    assert model_structure_volumes(path) == {"liver": 900.0, "spleen": 80.5}
    older = save_model(_net(), tmp_path / "older.pt", _table(), {"epoch": 1})  # bundle <= 0.15: none recorded
    assert model_structure_volumes(older) == {} and model_structure_volumes(None) == {}
    assert model_structure_volumes(tmp_path / "absent.pt") == {}
    bad = save_model(_net(), tmp_path / "bad.pt", _table(), {"structure_volumes_ml": {"liver": -1}})
    with pytest.raises(ValueError, match="bad.prompts.pt: structure_volumes_ml holds a negative"):
        model_structure_volumes(bad)
    infinite = save_model(_net(), tmp_path / "inf.pt", _table(), {"structure_volumes_ml": {"liver": float("inf")}})
    with pytest.raises(ValueError, match="inf.prompts.pt: structure_volumes_ml holds a negative, infinite"):
        model_structure_volumes(infinite)  # an infinite scale would erase every answer
    bad = save_model(_net(), tmp_path / "bad2.pt", _table(), {"structure_volumes_ml": ["liver"]})
    with pytest.raises(ValueError, match="bad2.prompts.pt: structure_volumes_ml is not a mapping"):
        model_structure_volumes(bad)
