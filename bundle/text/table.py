"""Prompt -> embedding table that travels with the model, so known prompts need no text tower."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch

from bundle.text.encoder import TextPromptEncoder, normalize_prompt

__all__ = ["UnknownPromptError", "PromptEmbeddingTable"]


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
        center: optional ``[embed_dim]`` vector subtracted from every embedding the table gives out (known prompts
            and new ones alike), e.g. the mean of the training vocabulary (:meth:`build` with ``center=True``).
        scale: factor applied after the centring.

    The table keeps the encoder's raw embeddings and gives out ``(embedding - center) * scale``. Centring matters
    for an untrained text tower, whose prompts all point almost the same way (pairwise cosine 0.8-0.98 for the
    suite's 17 names with a random-init ViT-B-32): the shared direction is removed, so what tells two prompts
    apart is no longer a small difference on top of a large common vector.

    Raises:
        ValueError: when the embeddings differ in shape, their size is not ``encoder.embed_dim`` or ``center``'s,
            or ``scale`` is not a positive finite number.
    """

    def __init__(
        self,
        embeddings: Mapping[str, torch.Tensor],
        encoder_config: Mapping[str, object] | None = None,
        encoder: TextPromptEncoder | None = None,
        center: torch.Tensor | None = None,
        scale: float = 1.0,
    ) -> None:
        self.embeddings: dict[str, torch.Tensor] = {
            normalize_prompt(k): v.detach().float().cpu() for k, v in embeddings.items()
        }
        dims = {v.shape for v in self.embeddings.values()}
        if len(dims) > 1:
            raise ValueError(f"prompt embeddings of different shapes: {sorted(map(tuple, dims))}")
        self.encoder_config = dict(encoder_config or (encoder.config if encoder is not None else {}))
        self.encoder = encoder
        if encoder is not None and dims and next(iter(dims))[-1] != encoder.embed_dim:
            raise ValueError(f"table embeddings have {next(iter(dims))[-1]} dims, the encoder {encoder.embed_dim}")
        self.center = None if center is None else torch.as_tensor(center).detach().float().cpu().reshape(-1)
        if self.center is not None and dims and next(iter(dims))[-1] != self.center.numel():
            raise ValueError(f"table embeddings have {next(iter(dims))[-1]} dims, the center {self.center.numel()}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        self.scale = float(scale)

    @classmethod
    def build(cls, prompts: Iterable[str], encoder: TextPromptEncoder, center: bool = False) -> PromptEmbeddingTable:
        """Embed ``prompts`` with ``encoder`` and keep the encoder for later prompts.

        Args:
            prompts: prompt texts; normalised, duplicates dropped.
            encoder: the text encoder.
            center: centre the table on the mean of these prompts' embeddings and scale it so that their centred
                embeddings have a mean length of 1 (the length of the encoder's own, normalised outputs). Needs
                two distinct prompts or more.

        Returns:
            A table of the prompts' ``[embed_dim]`` embeddings, with ``encoder`` and its config.

        Raises:
            ValueError: when ``center`` is asked with fewer than two prompts, or prompts whose embeddings are equal.
        """
        keys = list(dict.fromkeys(normalize_prompt(p) for p in prompts))
        emb = encoder(keys)
        if not center:
            return cls(dict(zip(keys, emb)), encoder=encoder)
        if len(keys) < 2:
            raise ValueError(f"centring a prompt table needs two prompts or more, got {keys}")
        mean = emb.mean(dim=0)
        spread = float((emb - mean).norm(dim=1).mean())
        if not spread > 0:
            raise ValueError(f"the prompts {keys} have one embedding: there is nothing to centre")
        return cls(dict(zip(keys, emb)), encoder=encoder, center=mean, scale=1.0 / spread)

    @property
    def prompts(self) -> list[str]:
        """The normalised prompts in the table, in insertion order."""
        return list(self.embeddings)

    @property
    def embed_dim(self) -> int:
        """Length of the embeddings: the table's, or the encoder's when the table is empty.

        Raises:
            ValueError: when the table is empty and has no encoder.
        """
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
        """Embeddings ``[N, embed_dim]`` of ``prompts``; unknown prompts are encoded (and added) when possible.

        Args:
            prompts: ``N`` prompt texts (normalised for the lookup).

        Returns:
            Float32 CPU tensor ``[N, embed_dim]``, in the order of ``prompts``.

        Raises:
            UnknownPromptError: when a prompt is not in the table and there is no encoder.
        """
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
        out = torch.stack([self.embeddings[k] for k in keys])
        if self.center is not None:
            out = out - self.center
        return out * self.scale if self.scale != 1.0 else out

    def state_dict(self) -> dict[str, object]:
        """Plain tensors, strings and lists only, so ``torch.load(weights_only=True)`` can read it back.

        Returns:
            ``{"prompts": [K] normalised prompts, "embeddings": [K, embed_dim] tensor (an empty tensor when K is
            0), "encoder_config": dict}``, plus ``"center"`` (``[embed_dim]``) and ``"scale"`` for a centred table.
        """
        state: dict[str, object] = {
            "prompts": self.prompts,
            "embeddings": torch.stack(list(self.embeddings.values())) if self.embeddings else torch.zeros(0),
            "encoder_config": dict(self.encoder_config),
        }
        if self.center is not None:
            state["center"], state["scale"] = self.center.clone(), self.scale
        return state

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, object], encoder: TextPromptEncoder | None = None
    ) -> PromptEmbeddingTable:
        """The table that :meth:`state_dict` saved.

        Args:
            state: the saved state, with ``"prompts"``, ``"embeddings"`` and optionally ``"encoder_config"``.
            encoder: optional encoder for prompts that are not in the table; it must have been built with the
                table's encoder config (when the state records one).

        Returns:
            The table.

        Raises:
            ValueError: when ``state`` lacks ``"prompts"`` or ``"embeddings"``, their counts differ, or
                ``encoder``'s config is not the recorded one.
        """
        try:
            prompts, emb = list(state["prompts"]), state["embeddings"]  # type: ignore[call-overload]
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a prompt table state (needs 'prompts' and 'embeddings'): {e}") from e
        if not isinstance(emb, torch.Tensor) or (prompts and emb.shape[0] != len(prompts)):
            raise ValueError(
                f"prompt table: {len(prompts)} prompts but embeddings of shape {getattr(emb, 'shape', None)}"
            )
        config = dict(state.get("encoder_config", {}))  # type: ignore[union-attr]
        if encoder is not None and config and encoder.config != config:
            raise ValueError(f"the table was built with encoder {config}, the given encoder is {encoder.config}")
        center = state.get("center")  # type: ignore[union-attr]
        if center is not None and not isinstance(center, torch.Tensor):
            raise ValueError(f"prompt table: 'center' must be a tensor, got {type(center).__name__}")
        return cls(dict(zip(prompts, emb)), config, encoder, center, float(state.get("scale", 1.0)))  # type: ignore
