"""Text prompts: open_clip text tower (offline), local checkpoint loading, the prompt-embedding table."""

from __future__ import annotations

import json
import logging

import open_clip
import pytest
import torch

from bundle.text import PromptEmbeddingTable, TextPromptEncoder, UnknownPromptError, normalize_prompt

PROMPTS = ["anterior hippocampus", "posterior hippocampus", "edema"]


def test_normalize_prompt():
    assert normalize_prompt("  Posterior \t Hippocampus ") == "posterior hippocampus"
    with pytest.raises(ValueError, match="empty"):
        normalize_prompt("   ")
    with pytest.raises(TypeError):
        normalize_prompt(3)  # type: ignore[arg-type]


def test_offline_encoder_is_seeded_and_says_prompts_are_class_keys(tiny_clip, caplog):
    with caplog.at_level(logging.WARNING, logger="bundle.text"):
        a = TextPromptEncoder(tiny_clip, pretrained=None, seed=3)
    assert "class keys" in caplog.text and "not as open vocabulary" in caplog.text
    b = TextPromptEncoder(tiny_clip, pretrained=None, seed=3)
    c = TextPromptEncoder(tiny_clip, pretrained=None, seed=4)
    ea, eb, ec = a(PROMPTS), b(PROMPTS), c(PROMPTS)
    assert ea.shape == (3, 32)
    torch.testing.assert_close(ea, eb)
    assert not torch.allclose(ea, ec)
    torch.testing.assert_close(ea.norm(dim=1), torch.ones(3))
    assert torch.cdist(ea, ea)[~torch.eye(3, dtype=torch.bool)].min() > 1e-3, "prompts must get distinct embeddings"
    torch.testing.assert_close(a(["ANTERIOR  hippocampus"]), ea[:1])  # case and spacing do not matter
    assert not any(p.requires_grad for p in a.parameters())
    assert not hasattr(a.model, "visual") or a.model.visual is None


def test_template_changes_embeddings_and_is_validated(tiny_clip):
    plain = TextPromptEncoder(tiny_clip, template="{}")(PROMPTS[:1])
    templated = TextPromptEncoder(tiny_clip, template="a magnetic resonance image of the {}")(PROMPTS[:1])
    assert not torch.allclose(plain, templated)
    with pytest.raises(ValueError, match="exactly one"):
        TextPromptEncoder(tiny_clip, template="no placeholder")


def test_pretrained_local_checkpoint_is_loaded(tiny_clip, tmp_path):
    # the real open_clip loading path, fed a checkpoint file the test writes (no download)
    with torch.random.fork_rng():
        torch.manual_seed(123)
        source = open_clip.create_model(tiny_clip, pretrained=None)
    ckpt = tmp_path / "open_clip_tiny.bin"
    torch.save(source.state_dict(), ckpt)
    encoder = TextPromptEncoder(tiny_clip, pretrained=str(ckpt))
    tokens = open_clip.get_tokenizer(tiny_clip)(["a magnetic resonance image of the edema"])
    with torch.no_grad():
        expected = source.encode_text(tokens, normalize=True)
    torch.testing.assert_close(encoder(["edema"]), expected)
    assert encoder.config["pretrained"] == str(ckpt)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown open_clip model"):
        TextPromptEncoder("no-such-model")


def test_default_vit_b32_text_tower_builds_offline():
    encoder = TextPromptEncoder()  # ViT-B-32, pretrained=None: must not touch the network
    assert encoder.embed_dim == 512
    assert encoder(["posterior hippocampus"]).shape == (1, 512)


def test_table_lookup_and_unknown_prompts(tiny_clip):
    encoder = TextPromptEncoder(tiny_clip)
    table = PromptEmbeddingTable.build(PROMPTS, encoder)
    assert table.prompts == PROMPTS and len(table) == 3 and "Edema" in table
    torch.testing.assert_close(table(["edema", "anterior hippocampus"]), encoder(["edema", "anterior hippocampus"]))

    offline = PromptEmbeddingTable(table.embeddings, table.encoder_config)  # no encoder loaded
    with pytest.raises(UnknownPromptError, match=r"'necrosis'.*Known prompts: \['anterior hippocampus'"):
        offline(["necrosis"])
    new = table(["necrosis"])  # with an encoder, new prompts are embedded and remembered
    assert "necrosis" in table
    torch.testing.assert_close(new, encoder(["necrosis"]))


def test_table_roundtrip_through_a_weights_only_checkpoint(tiny_clip, tmp_path):
    encoder = TextPromptEncoder(tiny_clip)
    table = PromptEmbeddingTable.build(PROMPTS, encoder)
    torch.save({"prompt_table": table.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["prompt_table"]
    loaded = PromptEmbeddingTable.from_state_dict(state)
    assert loaded.prompts == PROMPTS and loaded.encoder is None and loaded.embed_dim == 32
    torch.testing.assert_close(loaded(PROMPTS), table(PROMPTS))
    assert loaded.encoder_config == encoder.config

    other = TextPromptEncoder(tiny_clip, seed=9)
    with pytest.raises(ValueError, match="built with encoder"):
        PromptEmbeddingTable.from_state_dict(state, encoder=other)
    with pytest.raises(ValueError, match="prompt table"):
        PromptEmbeddingTable.from_state_dict({"prompts": ["a", "b"], "embeddings": torch.zeros(3, 4)})


def test_centred_table_removes_the_vocabularys_shared_direction(tiny_clip, tmp_path):
    encoder = TextPromptEncoder(tiny_clip)
    raw = encoder(PROMPTS)
    table = PromptEmbeddingTable.build(PROMPTS, encoder, center=True)
    out = table(PROMPTS)
    # centred on the vocabulary's mean, scaled to a mean length of 1; the table keeps the raw embeddings
    torch.testing.assert_close(out.mean(dim=0), torch.zeros(32), atol=1e-6, rtol=0)
    assert out.norm(dim=1).mean().item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(out, (raw - raw.mean(dim=0)) * table.scale)
    torch.testing.assert_close(table.embeddings["edema"], raw[PROMPTS.index("edema")])
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(out[0], out[1], dim=0) < cosine(raw[0], raw[1], dim=0)
    # a new prompt gets the same centring
    torch.testing.assert_close(table(["necrosis"]), (encoder(["necrosis"]) - raw.mean(dim=0)) * table.scale)

    torch.save({"prompt_table": table.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["prompt_table"]
    loaded = PromptEmbeddingTable.from_state_dict(state, encoder=encoder)
    torch.testing.assert_close(loaded(PROMPTS + ["necrosis"]), table(PROMPTS + ["necrosis"]))
    # an uncentred table's state has no centre, as tables saved before centring existed
    assert "center" not in PromptEmbeddingTable.build(PROMPTS, encoder).state_dict()

    with pytest.raises(ValueError, match="two prompts or more"):
        PromptEmbeddingTable.build(["edema"], encoder, center=True)
    with pytest.raises(ValueError, match="two prompts or more"):  # one prompt once normalised
        PromptEmbeddingTable.build(["edema", " Edema"], encoder, center=True)
    with pytest.raises(ValueError, match="the center 5"):
        PromptEmbeddingTable(table.embeddings, center=torch.zeros(5))
    with pytest.raises(ValueError, match="scale"):
        PromptEmbeddingTable(table.embeddings, center=torch.zeros(32), scale=float("nan"))
    with pytest.raises(ValueError, match="'center' must be a tensor"):
        PromptEmbeddingTable.from_state_dict({**state, "center": [0.0] * 32})


def test_prompt_selection_keeps_class_values_and_numbers_new_prompts(tmp_path):
    from bundle.text import PromptEmbeddingTable, PromptSelection

    classes = {1: "anterior hippocampus", 2: "posterior hippocampus"}
    default = PromptSelection(None, classes)
    assert default.values == [1, 2] and default.embeddings is None
    table = PromptEmbeddingTable(
        {
            "anterior hippocampus": torch.ones(4),
            "posterior hippocampus": torch.zeros(4),
            "whole hippocampus": torch.full((4,), 2.0),
        }
    )
    chosen = PromptSelection(" Posterior  Hippocampus,whole hippocampus", classes, lambda: table)
    assert chosen.label_map == {"posterior hippocampus": 2, "whole hippocampus": 3}
    torch.testing.assert_close(chosen.embeddings, torch.stack([torch.zeros(4), torch.full((4,), 2.0)]))
    labels = json.loads(chosen.write(tmp_path).read_text())
    assert labels == {"0": "background", "2": "posterior hippocampus", "3": "whole hippocampus"}
    with pytest.raises(UnknownPromptError, match="edema"):
        PromptSelection(["edema"], classes, lambda: table)
