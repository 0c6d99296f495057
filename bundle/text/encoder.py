"""The open_clip text tower that embeds prompts, and the normalised form of a prompt."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["DEFAULT_TEMPLATE", "normalize_prompt", "TextPromptEncoder"]

DEFAULT_TEMPLATE = "a magnetic resonance image of the {}"


def normalize_prompt(prompt: str) -> str:
    """Case- and whitespace-insensitive key of a prompt: ``"  Posterior  Hippocampus"`` -> ``"posterior hippocampus"``.

    Args:
        prompt: the prompt text.

    Returns:
        The prompt lower-cased, stripped, with every run of whitespace replaced by one space.

    Raises:
        TypeError: when ``prompt`` is not a string.
        ValueError: when it is empty or only whitespace.
    """
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

    Raises:
        FileNotFoundError: when ``model_config`` is given but is not a file.
        ValueError: when ``model_config``'s stem is not ``model_name``, ``template`` does not hold exactly one
            ``{}``, or ``model_name`` is not a known open_clip architecture.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = None,
        template: str = DEFAULT_TEMPLATE,
        seed: int = 0,
        cache_dir: str | None = None,
        model_config: str | None = None,
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

    def train(self, mode: bool = True) -> TextPromptEncoder:
        """Keep the module in eval mode whatever is asked: the tower is frozen.

        Args:
            mode: ignored.

        Returns:
            The module itself, in eval mode.
        """
        # always frozen, always in eval mode (no dropout)
        return super().train(False)

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> torch.Tensor:
        """
        Args:
            prompts: ``N`` prompt texts; each is normalised (:func:`normalize_prompt`) and put into the template.

        Returns:
            Unit-norm float32 embeddings ``[N, embed_dim]``, in the order of ``prompts``.

        Raises:
            TypeError: when a prompt is not a string.
            ValueError: when a prompt is empty.
        """
        texts = [self.config["template"].format(normalize_prompt(p)) for p in prompts]
        tokens = self.tokenizer(texts)
        return self.model.encode_text(tokens, normalize=True).float()


logger = logging.getLogger(__name__)
