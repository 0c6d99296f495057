"""Fixtures for the browser page's JavaScript, produced by the bundle's own Python (nibabel, MONAI, the configs).

:func:`write_fixtures` writes NIfTI files in several geometries and storage types with what the bundle makes of
them (nibabel's affine, the array MONAI loads, the preprocessed RAS array of ``configs/inference.json``), and
sliding-window cases (MONAI's window starts, importance map and the blended output of a fixed elementwise
"network"). ``tests/web/js/*.test.mjs`` read them from ``$SEGONE_WEB_FIXTURES``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

__all__ = ["NIFTI_CASES", "SLIDING_CASES", "fake_network", "write_fixtures", "expected_labels", "make_image"]


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _affine(linear: np.ndarray, offset) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = linear
    a[:3, 3] = offset
    return a


# name -> (shape, dtype, affine, storage): storage says which header fields carry the affine, and the byte order
NIFTI_CASES = {
    "ras_sform": ((33, 40, 35), np.float32, _affine(np.diag([1.0, 1.2, 1.0]), [5.0, -3.0, 2.0]), "sform"),
    "lps_oblique_qform": (
        (36, 32, 34),
        np.int16,
        _affine(_rotation(2, 20.0) @ np.diag([-1.0, -1.1, 1.3]), [40.0, 30.0, -12.0]),
        "qform",
    ),
    "permuted_bigendian": (
        (34, 38, 32),
        np.float32,
        _affine(np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -0.9], [1.2, 0.0, 0.0]]) @ _rotation(0, 8.0), [-20, 15, 7]),
        "sform_bigendian",
    ),
    "no_codes": ((32, 35, 33), np.uint8, _affine(np.diag([1.1, 1.0, 1.0]), [0.0, 0.0, 0.0]), "none"),
    "single_volume_4d": (
        (35, 33, 32, 1),
        np.int16,
        _affine(_rotation(1, 35.0) @ np.diag([1, 1, -1.0]), [1, 2, 3]),
        "both",
    ),
}

# image size, window size, overlap: smaller than the window (padding), equal, larger along some axes, and the
# bundle's own window
SLIDING_CASES = [
    ((5, 7, 3), (8, 12, 8), 0.25),
    ((8, 12, 8), (8, 12, 8), 0.25),
    ((20, 12, 5), (8, 12, 8), 0.25),
    ((17, 30, 9), (8, 12, 8), 0.5),
    ((50, 70, 40), (48, 64, 48), 0.25),
]


def fake_network(x: torch.Tensor) -> torch.Tensor:
    """A fixed elementwise stand-in for the network: ``[1, 1, *S] -> [1, 3, *S]`` (sigmoid, square, cosine).

    Args:
        x: a window ``[1, 1, *S]``.

    Returns:
        ``[1, 3, *S]``, float32; the JavaScript tests compute the same.
    """
    return torch.cat([torch.sigmoid(x), x * x, torch.cos(x)], dim=1)


def make_image(shape, seed: int) -> np.ndarray:
    """A positive image with a zero border (so the non-zero normalisation has something to leave out).

    Args:
        shape: the spatial shape.
        seed: the random seed.

    Returns:
        float64 array of ``shape``.
    """
    rng = np.random.default_rng(seed)
    image = rng.gamma(4.0, 50.0, size=shape)
    image[:2] = 0
    image[:, -3:] = 0
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape[:3]], indexing="ij")
    blob = np.exp(-((grid[0] - 0.2) ** 2 + grid[1] ** 2 + (grid[2] + 0.3) ** 2) * 6) * 400
    return image + blob.reshape(blob.shape + (1,) * (len(shape) - 3))


def expected_labels(shape) -> np.ndarray:
    """The labels the JavaScript writer test writes for an image of ``shape``: (C-order voxel index) mod 3.

    Args:
        shape: the spatial shape ``[X, Y, Z]``.

    Returns:
        uint8 array of ``shape``.
    """
    return (np.arange(int(np.prod(shape))) % 3).astype(np.uint8).reshape(shape)


def _write_nifti(path: Path, shape, dtype, affine: np.ndarray, storage: str, seed: int) -> None:
    data = make_image(shape, seed)
    if np.issubdtype(dtype, np.integer):
        data = np.clip(np.rint(data / 4), 0, np.iinfo(dtype).max).astype(dtype)
    else:
        data = data.astype(dtype)
    header = nib.Nifti1Header()
    if storage.endswith("bigendian"):
        header = header.as_byteswapped(">")
    img = nib.Nifti1Image(data, None, header)
    if storage in ("sform", "sform_bigendian"):
        img.set_sform(affine, code=2)
        img.set_qform(affine @ np.diag([1.0, 1.0, -1.0, 1.0]), code=1)  # a different qform: the sform must win
    elif storage == "qform":
        img.set_qform(affine, code=1)
        img.set_sform(np.eye(4), code=0)
    elif storage == "both":
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    else:  # neither: nibabel's base affine from pixdim
        img.header.set_zooms(np.sqrt((affine[:3, :3] ** 2).sum(0)).tolist() + [1.0] * (len(shape) - 3))
        img.set_qform(None, code=0)
        img.set_sform(None, code=0)
    if np.issubdtype(dtype, np.integer) and dtype != np.uint8:
        img.header.set_slope_inter(2.0, 10.0)
    nib.save(img, str(path))


def write_fixtures(folder: Path) -> Path:
    """Writes the NIfTI and sliding-window fixtures and ``cases.json`` describing them.

    Args:
        folder: an empty folder.

    Returns:
        The path of ``cases.json``.
    """
    from monai.data.utils import compute_importance_map, dense_patch_slices, get_valid_patch_size
    from monai.inferers import sliding_window_inference
    from monai.inferers.utils import _get_scan_interval

    from bundle.utils.config import load_bundle_config

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "out").mkdir(exist_ok=True)
    preprocessing = load_bundle_config("inference.json").get_parsed_content("preprocessing")

    def save(name: str, array) -> str:
        np.ascontiguousarray(np.asarray(array, dtype=np.float32)).tofile(folder / name)
        return name

    nifti = []
    for i, (name, (shape, dtype, affine, storage)) in enumerate(NIFTI_CASES.items()):
        file = f"{name}.nii.gz" if i % 2 == 0 else f"{name}.nii"
        _write_nifti(folder / file, shape, dtype, affine, storage, seed=i)
        img = nib.load(str(folder / file))
        loaded = np.asarray(img.dataobj, dtype=np.float32).reshape(shape[:3])
        pre = preprocessing({"image": str(folder / file)})["image"]
        nifti.append(
            {
                "name": name,
                "file": file,
                "dims": list(shape[:3]),
                "data": save(f"{name}.data.f32", loaded),
                "affine": np.asarray(img.affine, dtype=float).tolist(),
                "codes": "".join(nib.aff2axcodes(img.affine)),
                "ras_dims": [int(s) for s in pre.shape[1:]],
                "ras": save(f"{name}.ras.f32", pre[0].numpy()),
                "labels_out": f"out/{name}_seg.nii.gz",
            }
        )

    sliding = []
    for i, (size, roi, overlap) in enumerate(SLIDING_CASES):
        image = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(i))
        padded = tuple(max(s, r) for s, r in zip(size, roi))
        interval = _get_scan_interval(padded, roi, 3, (overlap,) * 3)
        slices = dense_patch_slices(padded, roi, interval)
        patch = get_valid_patch_size(padded, roi)
        importance = compute_importance_map(patch, mode="gaussian", sigma_scale=0.125)
        output = sliding_window_inference(image, roi, 1, fake_network, overlap=overlap, mode="gaussian")
        sliding.append(
            {
                "size": list(size),
                "roi": list(roi),
                "overlap": overlap,
                "starts": [[int(s.start) for s in window] for window in slices],
                "importance": save(f"sw{i}.importance.f32", importance.numpy()),
                "input": save(f"sw{i}.input.f32", image[0, 0].numpy()),
                "output": save(f"sw{i}.output.f32", output[0].numpy()),
                "channels": int(output.shape[1]),
            }
        )
    cases = folder / "cases.json"
    cases.write_text(json.dumps({"nifti": nifti, "sliding": sliding}, indent=1))
    return cases
