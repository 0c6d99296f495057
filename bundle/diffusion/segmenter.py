"""PromptedSegmenter: the inference network, every class prompt of an image sampled in one batch."""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn

from bundle.diffusion.model import MaskDiffusion

__all__ = ["PromptedSegmenter"]


class PromptedSegmenter(MaskDiffusion):
    """The complete inference network: image -> class probabilities for the bundle's prompts, by diffusion.

    A :class:`MaskDiffusion` whose ``forward`` samples: for each of the ``K`` class prompt embeddings (the
    ``prompt_embeddings`` buffer) it samples a mask probability with :meth:`MaskDiffusion.sample` (all prompts in one
    batch), then turns the ``K`` independent probabilities into ``1 + K`` class probabilities: background
    ``1 - max_k p_k``, normalised with the classes to sum to one, so ``argmax`` labels a voxel with the most probable
    class when that class's probability exceeds one half. Its state dict is the training network's, so one
    checkpoint serves both. Because ``forward(image)`` has the signature of a segmentation network, MONAI's
    SlidingWindowInferer, ``verify_net_in_out``, ``ckpt_export`` and MONAI Label can use it as they are.

    Args:
        denoiser, num_train_timesteps, schedule, prediction_type, prompt_embeddings, num_prompts, embed_dim: as
            :class:`MaskDiffusion` (the loss weights are irrelevant here and fixed).
        num_inference_steps: DDIM steps.
        num_samples: samples averaged per prompt.
        seed: seed of the starting noise.

    Shapes:
        ``image [B, C, *S] -> [B, 1 + K, *S]``; with ``prompt_embeddings [K', E]`` given to ``forward``,
        ``[B, 1 + K', *S]`` for those prompts instead.

    Raises:
        ValueError: when there is no class prompt, ``num_samples < 1``, or ``num_inference_steps`` is outside
            ``[1, num_train_timesteps]`` (and as :class:`MaskDiffusion`).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        num_train_timesteps: int = 1000,
        schedule: str = "linear_beta",
        prediction_type: str = "sample",
        prompt_embeddings: Optional[torch.Tensor] = None,
        num_prompts: int = 0,
        embed_dim: int = 0,
        num_inference_steps: int = 10,
        num_samples: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(
            denoiser,
            num_train_timesteps=num_train_timesteps,
            schedule=schedule,
            prediction_type=prediction_type,
            prompt_embeddings=prompt_embeddings,
            num_prompts=num_prompts,
            embed_dim=embed_dim,
        )
        if self.prompt_embeddings.shape[0] < 1:
            raise ValueError("PromptedSegmenter needs at least one class prompt (prompt_embeddings or num_prompts)")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.make_sampler(num_inference_steps)  # validates the step count now, not at first use
        self.num_inference_steps = num_inference_steps
        self.num_samples = num_samples
        self.seed = seed

    @classmethod
    def sharing(
        cls, diffusion: MaskDiffusion, num_inference_steps: int = 10, num_samples: int = 1, seed: int = 0
    ) -> "PromptedSegmenter":
        """A segmenter that shares ``diffusion``'s denoiser and prompt buffer (validation during training).

        Args:
            diffusion: the training network; its denoiser, noise schedule, prediction type and prompt buffer are
                used, not copied.
            num_inference_steps: DDIM steps.
            num_samples: samples averaged per prompt.
            seed: seed of the starting noise.

        Returns:
            A new segmenter whose parameters and ``prompt_embeddings`` buffer are ``diffusion``'s tensors.
        """
        seg = cls(
            diffusion.denoiser,
            num_train_timesteps=diffusion.num_train_timesteps,
            schedule=diffusion.schedule,
            prediction_type=diffusion.prediction_type,
            prompt_embeddings=diffusion.prompt_embeddings,
            num_inference_steps=num_inference_steps,
            num_samples=num_samples,
            seed=seed,
        )
        seg.prompt_embeddings = diffusion.prompt_embeddings  # the same tensor: later loads show in both
        return seg

    def loss(self, *args, **kwargs) -> Dict[str, torch.Tensor]:  # type: ignore[override]
        """Not available: a segmenter does not train.

        Args:
            args: ignored.
            kwargs: ignored.

        Raises:
            TypeError: always.
        """
        raise TypeError("PromptedSegmenter is for inference; train the MaskDiffusion with the same denoiser")

    @torch.no_grad()
    def forward(  # type: ignore[override]
        self,
        image: torch.Tensor,
        prompt_embeddings: Optional[torch.Tensor] = None,
        prompt_rows: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            image: ``[B, C, *S]``, every spatial size a multiple of the denoiser's size divisor.
            prompt_embeddings: ``[K', E]`` embeddings of the prompts to segment; the ``prompt_embeddings`` buffer
                (``[K, E]``, the bundle's classes) when ``None``.
            prompt_rows: ``[K']`` rows of the buffer to prompt (a suite's validation image is asked for its own
                folder's classes only); the other classes get probability 0, so the output keeps ``1 + K``
                channels. Not used with ``prompt_embeddings``.

        Returns:
            Class probabilities ``[B, 1 + K, *S]`` (``[B, 1 + K', *S]`` with ``prompt_embeddings``), background
            first, summing to one over dim 1.

        Raises:
            ValueError: when the embeddings are not ``[K, E]`` with ``K >= 1``.
        """
        rows: Optional[torch.Tensor] = None
        if prompt_embeddings is None and prompt_rows is not None:
            rows = prompt_rows.to(device=image.device, dtype=torch.long).flatten()
            emb = self.prompt_embeddings.index_select(0, rows)
        else:
            emb = self.prompt_embeddings if prompt_embeddings is None else prompt_embeddings.to(image)
        if emb.dim() != 2 or emb.shape[0] < 1:
            raise ValueError(f"prompt_embeddings must be [K, E] with K >= 1, got {tuple(emb.shape)}")
        b, k = image.shape[0], emb.shape[0]
        # every (image, prompt) pair in one batch, image-major: [B*K, E] prompts for the B images
        context = emb.unsqueeze(0).expand(b, k, emb.shape[1]).reshape(b * k, emb.shape[1])
        prob, _ = self.sample(image, context, self.num_inference_steps, self.seed, self.num_samples, None, k)
        classes = prob.reshape(b, k, *image.shape[2:])
        background = 1.0 - classes.max(dim=1, keepdim=True).values
        probs = torch.cat([background, classes], dim=1)
        probs = probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-6)
        if rows is None:
            return probs
        # the classes not asked keep probability 0, so the channels stay the buffer's 1 + K
        out = probs.new_zeros((b, 1 + self.prompt_embeddings.shape[0]) + probs.shape[2:])
        out[:, 0] = probs[:, 0]
        return out.index_copy(1, rows + 1, probs[:, 1:])
