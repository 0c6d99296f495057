"""Where each voxel sits in its volume, as input channels (``coordinate_channels``).

A network that sees one window at a time cannot tell "left kidney" from "right kidney" unless the window happens to
hold the anatomy that says which side it is: the two look alike, mirrored. On chaos_t2 the suite model and the
per-data-set U-Net each scored one kidney far below the other (docs/suite.md). MONAI's ``AddCoordinateChannels`` gives each
voxel its position along every axis of the whole (RAS-oriented) volume, from -0.5 to 0.5, so a window knows where in
the volume it lies; the channels travel with the voxels through cropping, padding, rotation and mirroring.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import AddCoordinateChannels, MapTransform

__all__ = ["AddCoordinatesd"]


class AddCoordinatesd(MapTransform):
    """The position of every voxel in its volume, one channel per spatial axis (MONAI's ``AddCoordinateChannels``).

    Args:
        keys: the image whose grid the coordinates describe (one key).
        coords_key: where they go: ``None`` appends them to the image's channels (inference, where nothing changes
            intensities after this); a key name writes them there, on the image's grid and with its metadata, so that
            spatial transforms move them with the image and intensity augmentation leaves them alone (training,
            where MONAI's ``ConcatItemsd`` joins them to the image after the augmentation).
        allow_missing_keys: skip items without the key.

    Shapes:
        ``image [C, *S]`` -> ``image [C + D, *S]`` (``coords_key=None``) or ``coords_key [D, *S]``, ``D = len(S)``:
        channel ``C + d`` runs linearly from -0.5 at the first voxel of axis ``d`` to 0.5 at its last.
    """

    def __init__(self, keys: KeysCollection, coords_key: str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"AddCoordinatesd takes one image key, got {list(self.keys)}")
        self.coords_key = coords_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """
        Args:
            data: an item holding the image ``[C, *S]``.

        Returns:
            The item with the coordinates added (a new dict; the input item is not modified).
        """
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if not isinstance(image, torch.Tensor):
                image = torch.as_tensor(image)
            spatial = image.dim() - 1
            # on the first channel alone: the coordinates take the image's type, dtype and metadata
            coords = AddCoordinateChannels(spatial_dims=list(range(spatial)))(image[:1])[1:]
            if self.coords_key is None:
                d[key] = torch.cat([image, coords], dim=0)
            else:
                d[self.coords_key] = coords
        return d
