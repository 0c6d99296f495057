"""MONAI Label datastores whose every path stays inside the studies: ids and tags are names, uploads are images.

MONAI Label 0.8.5's :class:`~monailabel.datastore.local.LocalDatastore` joins the image id and the label tag of a
request into file paths (``PUT /datastore/image?image=../../victim.txt`` writes outside the studies folder, ``DELETE``
removes it, a tag ``../x`` writes labels outside) and answers unknown ids with bare 500s. :class:`SafeDatastoreMixin`
checks ids and tags first (400), answers unknown ones with 404, accepts only NIfTI uploads that parse (422), and
checks that each resolved path is inside the studies folder. It is mixed into the local datastore
(:class:`SafeLocalDatastore`) and, by :func:`make_safe`, into the DICOMweb one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import Datastore

from bundle.apps.monailabel.security import RequestError, validate_id, validate_tag

__all__ = ["UPLOAD_EXTENSIONS", "SafeDatastoreMixin", "SafeLocalDatastore", "check_upload", "make_safe"]

UPLOAD_EXTENSIONS = (".nii.gz", ".nii")


def check_upload(path: str, what: str) -> None:
    """Checks that an uploaded file is a NIfTI image that parses (its header), before it enters the datastore.

    Args:
        path: the temporary file MONAI Label wrote the upload to (named with the upload's extension).
        what: ``"image"`` or ``"label"``, for the message.

    Raises:
        RequestError: 422 for another extension or a file whose NIfTI header does not parse.
    """
    if not path.endswith(UPLOAD_EXTENSIONS):
        raise RequestError(
            f"{what} upload: only NIfTI files ({', '.join(UPLOAD_EXTENSIONS)}) are accepted, got "
            f"{''.join(Path(path).suffixes) or 'no extension'!r}"
        )
    import nibabel as nib

    try:
        shape = nib.load(path).header.get_data_shape()
    except Exception as e:  # not NIfTI, truncated, corrupt
        reason = str(e).replace(path, "the upload")
        raise RequestError(f"{what} upload is not a readable NIfTI image: {type(e).__name__}: {reason}") from e
    if not 2 <= len(shape) <= 5 or min(shape) < 1:
        raise RequestError(f"{what} upload: NIfTI image of shape {tuple(shape)} is not an image")


class SafeDatastoreMixin:
    """Checks ids, tags and uploads before a MONAI Label datastore touches files (mix in before the datastore)."""

    def _inside(self, path: str, root: str) -> str:
        real, base = os.path.realpath(path), os.path.realpath(root)
        if os.path.commonpath([real, base]) != base:
            raise RequestError("resolved path leaves the studies folder", 400)
        return path

    def _known_image(self, image_id: str) -> None:
        validate_id(image_id)
        if image_id not in self.list_images():
            raise RequestError(f"image {image_id!r} is not in the studies", 404)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Adds an uploaded image under a checked id (see ``Datastore.add_image``).

        Args:
            image_id: the id, or empty to take it from the file name.
            image_filename: the uploaded file.
            image_info: extra info.

        Returns:
            The image id.

        Raises:
            RequestError: 400 for an invalid id, 422 for a file that is not a NIfTI image.
        """
        validate_id(image_id or os.path.basename(image_filename).split(".")[0])
        check_upload(image_filename, "image")
        return super().add_image(image_id, image_filename, image_info)

    def remove_image(self, image_id: str) -> None:
        """Removes an image and its labels (see ``Datastore.remove_image``).

        Args:
            image_id: the id.

        Raises:
            RequestError: 400 for an invalid id, 404 for an unknown one.
        """
        self._known_image(image_id)
        super().remove_image(image_id)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Saves an uploaded label of a known image under a checked tag (see ``Datastore.save_label``).

        Args:
            image_id: the image's id.
            label_filename: the uploaded file.
            label_tag: the tag (``final``, ``original``, ...).
            label_info: extra info.

        Returns:
            The label id.

        Raises:
            RequestError: 400 for an invalid id or tag, 404 for an unknown image, 422 for a file that is not NIfTI.
        """
        self._known_image(image_id)
        validate_tag(label_tag)
        check_upload(label_filename, "label")
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Removes a label (see ``Datastore.remove_label``).

        Args:
            label_id: the label's (image's) id.
            label_tag: its tag.

        Raises:
            RequestError: 400 for an invalid id or tag, 404 when there is no such label.
        """
        validate_id(label_id, "label id")
        validate_tag(label_tag)
        if not self.get_label_uri(label_id, label_tag):
            raise RequestError(f"no label {label_id!r} with tag {label_tag!r}", 404)
        super().remove_label(label_id, label_tag)

    def get_image_uri(self, image_id: str) -> str:
        """The image's file (see ``Datastore.get_image_uri``); ``""`` for an unknown id.

        Args:
            image_id: the id.

        Returns:
            Its path or URI.

        Raises:
            RequestError: 400 for an invalid id.
        """
        return super().get_image_uri(validate_id(image_id))

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        """The label's file (see ``Datastore.get_label_uri``); ``""`` when there is no such label.

        Args:
            label_id: the label's id.
            label_tag: its tag.

        Returns:
            Its path or URI.

        Raises:
            RequestError: 400 for an invalid id or tag.
        """
        validate_id(label_id, "label id")
        validate_tag(label_tag)
        if isinstance(self, LocalDatastore):
            # MONAI Label answers a missing label with the tag's folder
            if self._datastore.label(label_id, label_tag) is None:
                return ""
        return super().get_label_uri(label_id, label_tag)

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """The image's info (see ``Datastore.get_image_info``).

        Args:
            image_id: the id.

        Returns:
            Its info.

        Raises:
            RequestError: 400 for an invalid id, 404 for an unknown one.
        """
        self._known_image(image_id)
        return super().get_image_info(image_id)

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        """Updates the image's info (see ``Datastore.update_image_info``).

        Args:
            image_id: the id.
            info: the new entries.

        Raises:
            RequestError: 400 for an invalid id, 404 for an unknown one.
        """
        self._known_image(image_id)
        return super().update_image_info(image_id, info)

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        """The label's info (see ``Datastore.get_label_info``).

        Args:
            label_id: the label's id.
            label_tag: its tag.

        Returns:
            Its info.

        Raises:
            RequestError: 400 for an invalid id or tag, 404 when there is no such label.
        """
        if not self.get_label_uri(label_id, label_tag):
            raise RequestError(f"no label {label_id!r} with tag {label_tag!r}", 404)
        return super().get_label_info(label_id, label_tag)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        """Updates the label's info (see ``Datastore.update_label_info``).

        Args:
            label_id: the label's id.
            label_tag: its tag.
            info: the new entries.

        Raises:
            RequestError: 400 for an invalid id or tag, 404 when there is no such label.
        """
        if not self.get_label_uri(label_id, label_tag):
            raise RequestError(f"no label {label_id!r} with tag {label_tag!r}", 404)
        return super().update_label_info(label_id, label_tag, info)


class SafeLocalDatastore(SafeDatastoreMixin, LocalDatastore):
    """MONAI Label's local (folder) datastore with ids, tags and uploads checked (:class:`SafeDatastoreMixin`)."""

    def get_image_uri(self, image_id: str) -> str:
        """The image's file inside the studies folder; ``""`` for an unknown id.

        Args:
            image_id: the id.

        Returns:
            Its path.

        Raises:
            RequestError: 400 for an invalid id or a path outside the studies folder.
        """
        uri = super().get_image_uri(image_id)
        return self._inside(uri, self._datastore_path) if uri else uri

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        """The label's file inside the studies folder; ``""`` when there is no such label.

        Args:
            label_id: the label's id.
            label_tag: its tag.

        Returns:
            Its path.

        Raises:
            RequestError: 400 for an invalid id or tag, or a path outside the studies folder.
        """
        uri = super().get_label_uri(label_id, label_tag)
        return self._inside(uri, self._datastore_path) if uri else uri


def make_safe(datastore: Datastore) -> Datastore:
    """Gives an already built datastore (e.g. MONAI Label's DICOMweb one) the checks of :class:`SafeDatastoreMixin`.

    Args:
        datastore: the datastore.

    Returns:
        The same object, now of a subclass of its class with the mixin first.
    """
    if not isinstance(datastore, SafeDatastoreMixin):
        cls = type(datastore)
        datastore.__class__ = type(f"Safe{cls.__name__}", (SafeDatastoreMixin, cls), {})
    return datastore
