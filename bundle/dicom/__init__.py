"""DICOM: series discovery from headers, geometry checks and reading, DICOM SEG output, and the batch runner.

Modules: :mod:`.discover` (find image series in a tree of studies), :mod:`.read` (order, check and read a series),
:mod:`.seg` (checked DICOM SEG writing), :mod:`.batch` (resumable batch inference with a manifest).
"""

from .discover import NON_IMAGE_MODALITIES, SeriesInfo, Skipped, discover_series, safe_name
from .read import LoadSeriesd, SeriesError, read_series, read_series_with_files, sorted_slices

__all__ = [
    "discover_series",
    "LoadSeriesd",
    "NON_IMAGE_MODALITIES",
    "read_series",
    "read_series_with_files",
    "safe_name",
    "SeriesError",
    "SeriesInfo",
    "Skipped",
    "sorted_slices",
]
