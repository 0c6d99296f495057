"""Writing label maps (atomically, with their own geometry), and the source file of an item for messages."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.utils.io import atomic_path
from bundle.utils.metadata import source_name

__all__ = ["output_path_for", "SaveLabelMapd"]


def output_path_for(source: str | os.PathLike, output_dir: str | os.PathLike, postfix: str = "seg") -> Path:
    """``output_dir/<source stem>_<postfix>.nii.gz``.

    A BraTS 2013 case's image has the name every case shares (``<case>/Flair_subtrMeanDivStd.nii.gz``), so its
    output is named by its case folder too: ``<case>_Flair_subtrMeanDivStd_<postfix>.nii.gz``.

    Args:
        source: the input file (or its name).
        output_dir: the output folder.
        postfix: appended to the stem.

    Returns:
        The output path (``x.nii`` and ``x.nii.gz`` give the same one: :class:`SaveLabelMapd` refuses the second).
    """
    from bundle.data.datalist import BRATS2013_IMAGE

    path = Path(str(source))
    name = f"{path.parent.name}_{path.name}" if path.name == BRATS2013_IMAGE and path.parent.name else path.name
    for suffix in (".nii.gz", ".nii", ".mha", ".nrrd"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(output_dir) / f"{name}_{postfix}.nii.gz"


class SaveLabelMapd(MapTransform):
    """Writes a label map as NIfTI with its own geometry, atomically (temporary file, then rename).

    A killed run never leaves a half-written file; an existing output is replaced only by a complete one. Outputs
    never overwrite each other: an output path that this writer already wrote for another source in its lifetime
    (``x.nii`` and ``x.nii.gz``; two evaluation cases named alike in different folders) is refused with both files
    named, and the first output stays (that outputs never overwrite inputs is
    :func:`~bundle.data.datalist.check_output_dir`'s job). A failed write (a full disk) names the cause and the
    file and leaves nothing behind.

    Args:
        keys: the label map(s) ``[1, *S]`` (MetaTensor carrying ``affine`` and ``filename_or_obj``).
        output_dir: destination folder (``None``: write nothing).
        postfix: appended to the source file's stem.
        dtype: integer type of the written labels.
        source_key: the key whose file name names the output (defaults to the label map's own metadata).
        allow_missing_keys: skip keys that are absent instead of failing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike | None,
        postfix: str = "seg",
        dtype: Any = np.uint8,
        source_key: str | None = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir) if output_dir else None
        self.postfix = postfix
        self.dtype = dtype
        self.source_key = source_key
        self._written: dict[Path, str] = {}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Writes the label map(s) of one item.

        Args:
            data: a MONAI dictionary item.

        Returns:
            The item with ``<key>_path``: the written file.

        Raises:
            FileExistsError: the output would overwrite another source's output of this run.
            OSError: the write failed (e.g. ``ENOSPC``), naming the source, the output and the cause.
        """
        import nibabel as nib

        d = dict(data)
        if self.output_dir is None:
            return d
        for key in self.key_iterator(d):
            label = d[key]
            source = source_name(d, self.source_key) if self.source_key in d else source_name(d, key)
            affine = np.asarray(getattr(label, "affine", np.eye(4)), dtype=np.float64)
            array = torch.as_tensor(label).detach().cpu().numpy()
            if array.ndim == len(affine) and array.shape[0] == 1:  # drop the channel axis
                array = array[0]
            out = output_path_for(source, self.output_dir, self.postfix)
            resolved = out.expanduser().resolve()
            earlier = self._written.get(resolved)
            if earlier is not None and earlier != source:
                raise FileExistsError(
                    f"{source}: its output {out} was already written for {earlier} in this run; not overwritten "
                    "(rename one of the two inputs)"
                )
            try:
                with atomic_path(out, suffix=".nii.gz") as tmp:
                    nib.save(nib.Nifti1Image(np.rint(array).astype(self.dtype), affine), str(tmp))
            except OSError as e:
                message = f"{source}: writing {out} failed: {e.strerror or e}"
                raise (OSError(e.errno, message) if e.errno is not None else OSError(message)) from e
            self._written[resolved] = source
            d[f"{key}_path"] = str(out)
        return d
