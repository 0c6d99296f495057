"""Text prompts: an open_clip text tower and a prompt -> embedding table that travels with the checkpoint.

With ``pretrained=None`` (the offline default) the text tower is built from its architecture config with seeded
random weights: embeddings are deterministic and distinct per prompt, so prompts work as **class keys** for the
classes the model was trained on, but carry no language knowledge (no open vocabulary). With a pretrained tag
(``"laion2b_s34b_b79k"``, downloaded by open_clip to its cache) or a local checkpoint path, similar prompts get
similar embeddings. The table of embeddings is saved with the model, so inference on known prompts needs no text
tower at all.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

__all__ = ["normalize_prompt", "TextPromptEncoder", "PromptEmbeddingTable", "PromptSelection", "UnknownPromptError"]

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "a magnetic resonance image of the {}"


def normalize_prompt(prompt: str) -> str:
    """Case- and whitespace-insensitive key of a prompt: ``"  Posterior  Hippocampus"`` -> ``"posterior hippocampus"``."""
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt must be a string, got {type(prompt).__name__}: {prompt!r}")
    key = re.sub(r"\s+", " ", prompt.strip().lower())
    if not key:
        raise ValueError("empty prompt")
    return key


class TextPromptEncoder(nn.Module):
    """Frozen open_clip text tower that maps prompts to unit-norm embeddings.

    Args:
        model_name: open_clip architecture, e.g. ``"ViT-B-32"`` (text tower 63 M parameters) or a name registered with
            ``open_clip.add_model_config``. Architectures with a Hugging Face tokenizer need the hub: not offline.
        pretrained: ``None`` for seeded random weights (offline), an open_clip pretrained tag, or a local checkpoint.
        template: format string applied to each prompt, with one ``{}``.
        seed: seed of the random weights when ``pretrained`` is ``None``.
        cache_dir: open_clip's download cache for pretrained tags.
        model_config: path of an open_clip model config JSON to register first (its file stem must be
            ``model_name``), for architectures that are not built into open_clip.

    Shapes:
        ``forward(prompts: list of N str) -> [N, embed_dim]``.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: Optional[str] = None,
        template: str = DEFAULT_TEMPLATE,
        seed: int = 0,
        cache_dir: Optional[str] = None,
        model_config: Optional[str] = None,
    ) -> None:
        super().__init__()
        import open_clip

        if model_config:
            config_path = Path(model_config)
            if not config_path.is_file():
                raise FileNotFoundError(f"{config_path}: open_clip model config not found")
            if config_path.stem != model_name:
                raise ValueError(f"{config_path}: registers model {config_path.stem!r}, not model_name {model_name!r}")
            open_clip.add_model_config(config_path)

        if template.count("{}") != 1:
            raise ValueError(f"the prompt template needs exactly one '{{}}', got {template!r}")
        config = open_clip.get_model_config(model_name)
        if config is None:
            raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
        if pretrained:
            model = open_clip.create_model(model_name, pretrained=pretrained, cache_dir=cache_dir)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = open_clip.create_model(model_name, pretrained=None)
            logger.warning(
                "open_clip %s text tower built WITHOUT pretrained weights (seed %d): prompts act as class keys for "
                "the classes the model was trained on, not as open vocabulary. Set `pretrained` to an open_clip tag "
                "or a local checkpoint for language-aware prompts.",
                model_name,
                seed,
            )
        if hasattr(model, "visual"):
            del model.visual  # only the text tower is used
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.embed_dim = int(config["embed_dim"])
        self.config = {"model_name": model_name, "pretrained": pretrained, "template": template, "seed": seed}

    def train(self, mode: bool = True) -> "TextPromptEncoder":
        # always frozen, always in eval mode (no dropout)
        return super().train(False)

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> torch.Tensor:
        texts = [self.config["template"].format(normalize_prompt(p)) for p in prompts]
        tokens = self.tokenizer(texts)
        return self.model.encode_text(tokens, normalize=True).float()


class UnknownPromptError(KeyError):
    """A prompt that is not in the table, and no text encoder to embed it."""

    def __str__(self) -> str:  # KeyError's default repr-quotes the message
        return str(self.args[0])


class PromptEmbeddingTable:
    """Prompt -> embedding lookup, built once with a text encoder and saved with the checkpoint.

    Args:
        embeddings: normalised prompt -> ``[embed_dim]`` tensor.
        encoder_config: how the embeddings were made (model name, pretrained, template, seed).
        encoder: optional encoder for prompts that are not in the table.
    """

    def __init__(
        self,
        embeddings: Mapping[str, torch.Tensor],
        encoder_config: Optional[Mapping[str, object]] = None,
        encoder: Optional[TextPromptEncoder] = None,
    ) -> None:
        self.embeddings: Dict[str, torch.Tensor] = {
            normalize_prompt(k): v.detach().float().cpu() for k, v in embeddings.items()
        }
        dims = {v.shape for v in self.embeddings.values()}
        if len(dims) > 1:
            raise ValueError(f"prompt embeddings of different shapes: {sorted(map(tuple, dims))}")
        self.encoder_config = dict(encoder_config or (encoder.config if encoder is not None else {}))
        self.encoder = encoder
        if encoder is not None and dims and next(iter(dims))[-1] != encoder.embed_dim:
            raise ValueError(f"table embeddings have {next(iter(dims))[-1]} dims, the encoder {encoder.embed_dim}")

    @classmethod
    def build(cls, prompts: Iterable[str], encoder: TextPromptEncoder) -> "PromptEmbeddingTable":
        """Embed ``prompts`` with ``encoder`` and keep the encoder for later prompts."""
        keys = list(dict.fromkeys(normalize_prompt(p) for p in prompts))
        return cls(dict(zip(keys, encoder(keys))), encoder=encoder)

    @property
    def prompts(self) -> List[str]:
        return list(self.embeddings)

    @property
    def embed_dim(self) -> int:
        if self.embeddings:
            return int(next(iter(self.embeddings.values())).shape[-1])
        if self.encoder is not None:
            return self.encoder.embed_dim
        raise ValueError("empty prompt table without an encoder: the embedding size is unknown")

    def __contains__(self, prompt: str) -> bool:
        return normalize_prompt(prompt) in self.embeddings

    def __len__(self) -> int:
        return len(self.embeddings)

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """Embeddings ``[N, embed_dim]`` of ``prompts``; unknown prompts are encoded (and added) when possible."""
        keys = [normalize_prompt(p) for p in prompts]
        unknown = [k for k in dict.fromkeys(keys) if k not in self.embeddings]
        if unknown:
            if self.encoder is None:
                raise UnknownPromptError(
                    f"unknown prompt(s) {unknown}: no text encoder is loaded to embed new prompts. "
                    f"Known prompts: {self.prompts}."
                )
            for key, emb in zip(unknown, self.encoder(unknown)):
                self.embeddings[key] = emb.cpu()
        return torch.stack([self.embeddings[k] for k in keys])

    def state_dict(self) -> Dict[str, object]:
        """Plain tensors, strings and lists only, so ``torch.load(weights_only=True)`` can read it back."""
        return {
            "prompts": self.prompts,
            "embeddings": torch.stack(list(self.embeddings.values())) if self.embeddings else torch.zeros(0),
            "encoder_config": {k: v for k, v in self.encoder_config.items()},
        }

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, object], encoder: Optional[TextPromptEncoder] = None
    ) -> "PromptEmbeddingTable":
        try:
            prompts, emb = list(state["prompts"]), state["embeddings"]  # type: ignore[call-overload]
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a prompt table state (needs 'prompts' and 'embeddings'): {e}") from e
        if not isinstance(emb, torch.Tensor) or (prompts and emb.shape[0] != len(prompts)):
            raise ValueError(f"prompt table: {len(prompts)} prompts but embeddings of shape {getattr(emb, 'shape', None)}")
        config = dict(state.get("encoder_config", {}))  # type: ignore[union-attr]
        if encoder is not None and config and encoder.config != config:
            raise ValueError(f"the table was built with encoder {config}, the given encoder is {encoder.config}")
        return cls(dict(zip(prompts, emb)), config, encoder)


class PromptSelection:
    """The prompts of one inference run: their names, the label value each gets, and their embeddings.

    Prompts that name a ``channel_def`` class keep that class's label value; other prompts (open vocabulary, with a
    pretrained text tower) get the next free values in the order given.

    Args:
        prompts: prompt texts; ``None`` or empty means every class of ``class_names`` (the network's own prompts).
        class_names: ``{label value: class name}`` of ``channel_def`` (background excluded).
        table: a callable returning the prompt table (e.g. loading it from the checkpoint); called only when
            ``prompts`` are given, so the default run reads nothing more.

    Attributes:
        names: the prompts, normalised.
        values: their label values.
        embeddings: ``[K, E]`` embeddings, or ``None`` for the network's own class prompts.
    """

    def __init__(
        self,
        prompts: Optional[Sequence[str]],
        class_names: Mapping[int, str],
        table: Optional[Callable[[], PromptEmbeddingTable]] = None,
    ) -> None:
        by_name = {normalize_prompt(v): int(k) for k, v in class_names.items()}
        if isinstance(prompts, str):
            prompts = [p for p in prompts.split(",") if p.strip()]
        if not prompts:
            self.names = list(by_name)
            self.values = list(by_name.values())
            self.embeddings: Optional[torch.Tensor] = None
            return
        self.names = list(dict.fromkeys(normalize_prompt(p) for p in prompts))
        next_value = max(by_name.values(), default=0) + 1
        self.values = []
        for name in self.names:
            if name in by_name:
                self.values.append(by_name[name])
            else:
                self.values.append(next_value)
                next_value += 1
        if table is None:
            raise ValueError("prompts were given but no prompt table to embed them")
        self.embeddings = table()(self.names)

    @property
    def label_map(self) -> Dict[str, int]:
        return dict(zip(self.names, self.values))

    def write(self, output_dir: Union[str, os.PathLike]) -> Path:
        """``labels.json`` in ``output_dir``: ``{"0": "background", value: prompt, ...}`` for the label maps written."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "labels.json"
        tmp = out / ".labels.json.tmp"
        tmp.write_text(json.dumps({"0": "background", **{str(v): n for n, v in self.label_map.items()}}, indent=2))
        os.replace(tmp, path)
        return path
