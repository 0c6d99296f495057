"""Teacher volumes cached on disk, keyed by case, class, checkpoint hash and teacher settings."""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bundle.teacher.sam2 import SAM2Teacher
from bundle.utils.io import PathLike, atomic_path

logger = logging.getLogger(__name__)

__all__ = ["TeacherCache"]


class TeacherCache:
    """Teacher volumes on disk, one ``.npz`` per (case, class, teacher settings), written atomically.

    The file name is the SHA-256 of the key, so a changed checkpoint, image size, axis, margin or prompt mode
    misses the cache (and the old entries are simply no longer used). :meth:`get_or_compute` names a case by its
    name and a digest of the image and mask it is given (:meth:`case_key`), so an edited image or label under the
    same file name, or a case of another data set with the same name, misses too.

    Args:
        directory: the cache folder.

    Attributes:
        hits, misses: :meth:`get_or_compute` calls answered from disk and by SAM2.
    """

    def __init__(self, directory: PathLike) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def case_key(case: str, image: np.ndarray, mask: np.ndarray) -> str:
        """``"<case>#<digest>"``: the case name and the SHA-256 (16 hex digits) of the teacher's inputs.

        Args:
            case: the case name.
            image: the intensities the teacher sees (hashed as float32, C order).
            mask: the mask that places the prompts (hashed as bool).

        Returns:
            The case key, as :meth:`get_or_compute` stores entries under.
        """
        return TeacherCache._case_key(case, TeacherCache._image_digest(image), mask)

    @staticmethod
    def _image_digest(image: np.ndarray) -> hashlib._Hash:
        return hashlib.sha256(np.ascontiguousarray(image, np.float32).tobytes())

    @staticmethod
    def _case_key(case: str, image_digest: hashlib._Hash, mask: np.ndarray) -> str:
        digest = image_digest.copy()  # the image is hashed once per case, whatever the number of classes
        digest.update(np.ascontiguousarray(mask, bool).tobytes())
        return f"{case}#{digest.hexdigest()[:16]}"

    @staticmethod
    def key(case: str, label: int, settings: dict[str, Any]) -> str:
        """The SHA-256 of an entry's key.

        Args:
            case: the case key (:meth:`case_key` for the entries of :meth:`get_or_compute`).
            label: the class's label value.
            settings: the teacher's settings (:attr:`SAM2Teacher.settings`), JSON-serialisable.

        Returns:
            64 hexadecimal digits: the entry's file name without ``.npz``.
        """
        text = json.dumps({"case": str(case), "class": int(label), "teacher": settings}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, case: str, label: int, settings: dict[str, Any]) -> Path:
        """Where an entry is stored (whether or not it exists).

        Args:
            case: the case key (see :meth:`key`).
            label: the class's label value.
            settings: the teacher's settings.

        Returns:
            ``<directory>/<key>.npz``.
        """
        return self.directory / f"{self.key(case, label, settings)}.npz"

    def get(self, case: str, label: int, settings: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
        """A stored entry; an unreadable (damaged) one counts as missing, with a warning.

        Args:
            case: the case key (see :meth:`key`).
            label: the class's label value.
            settings: the teacher's settings.

        Returns:
            ``(probabilities, IoU per slice)`` as float32 arrays (the shapes :meth:`SAM2Teacher.volume` returns), or
            None when there is no readable entry.
        """
        path = self.path(case, label, settings)
        if not path.is_file():
            return None
        try:
            with np.load(path) as data:
                return data["probs"].astype(np.float32), data["iou"].astype(np.float32)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # a damaged entry is recomputed, not fatal
            logger.warning(
                "teacher cache entry %s is unreadable (%s: %s); computing it again", path, type(e).__name__, e
            )
            return None

    def put(self, case: str, label: int, settings: dict[str, Any], probs: np.ndarray, iou: np.ndarray) -> Path:
        """Store an entry atomically, replacing any earlier one.

        Args:
            case: the case key (see :meth:`key`).
            label: the class's label value.
            settings: the teacher's settings.
            probs: teacher probabilities, the shape of the image (stored as float16).
            iou: predicted IoU per slice ``[n_slices]`` (stored as float32).

        Returns:
            The entry's path.
        """
        path = self.path(case, label, settings)
        with atomic_path(path, suffix=".npz") as tmp:
            # float16 halves the size; teacher probabilities need no more precision
            np.savez_compressed(tmp, probs=probs.astype(np.float16), iou=iou.astype(np.float32))
        return path

    def get_or_compute(
        self, teacher: SAM2Teacher, case: str, label: int, image: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The cached teacher volume, or SAM2's, computed now and stored.

        Args:
            teacher: the SAM2 teacher; its :attr:`~SAM2Teacher.settings` are part of the key.
            case: the case name.
            label: the class's label value.
            image: ``[X, Y, Z]`` (or ``[X, Y]``) intensities.
            mask: boolean mask of the class, the shape of ``image``; it places the prompts.

        Returns:
            ``(probabilities, IoU per slice)``, as :meth:`SAM2Teacher.volume`.

        Raises:
            ValueError: when SAM2 runs and ``image`` and ``mask`` do not fit (see :meth:`SAM2Teacher.volumes`).
        """
        return self.get_or_compute_many(teacher, case, image, {label: mask})[label]

    def get_or_compute_many(
        self, teacher: SAM2Teacher, case: str, image: np.ndarray, masks: Mapping[int, np.ndarray]
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """:meth:`get_or_compute` for several classes of one case; the missing ones share SAM2's image encoding.

        Args:
            teacher: the SAM2 teacher.
            case: the case name.
            image: ``[X, Y, Z]`` (or ``[X, Y]``) intensities.
            masks: ``{label value: boolean mask}``, each the shape of ``image``.

        Returns:
            ``{label value: (probabilities, IoU per slice)}``, in the order of ``masks``.

        Raises:
            ValueError: when SAM2 runs and ``image`` and a mask do not fit (see :meth:`SAM2Teacher.volumes`).
        """
        settings, image_digest = teacher.settings, self._image_digest(image)
        keys = {label: self._case_key(case, image_digest, mask) for label, mask in masks.items()}
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for label, key in keys.items():
            cached = self.get(key, label, settings)
            if cached is not None:
                out[label] = cached
        self.hits += len(out)
        missing = {label: mask for label, mask in masks.items() if label not in out}
        self.misses += len(missing)
        if missing:
            for label, (probs, iou) in teacher.volumes(image, missing).items():
                self.put(keys[label], label, settings, probs, iou)
                out[label] = (probs, iou)
        return {label: out[label] for label in masks}
