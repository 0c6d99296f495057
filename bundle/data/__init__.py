"""Data: MSD-layout datalists and suites of them, a seeded split by patient, image discovery for inference, input
checks, the demo phantom, windows shaped by voxel spacing, and the conversion of the suite's HDF5 sources to MSD folders.

Errors name the file and the problem: a missing image, a label whose shape or geometry differs from its image,
non-finite intensities, a volume of the wrong dimensionality.
"""

from .checks import CheckInputd
from .convert import HDF5_SOURCES, convert_hdf5_dataset
from .datalist import NIFTI_SUFFIXES, dataset_split, find_images, load_msd_datalist, split_datalist
from .demo import DEMO_LABELS, ensure_demo_dataset, make_phantom, write_demo_dataset
from .suite import (
    STRUCTURE_REGIONS,
    RemapSuiteLabelsd,
    dataset_class_names,
    dataset_dirs,
    dataset_labels,
    folder_sampling_weights,
    patient_id,
    structure_region,
    structure_volumes_ml,
    suite_absent_exclusions,
    suite_label_maps,
    suite_vocabulary,
)
from .windows import WindowBatchSampler, add_windows, image_spacing, plan_window, window_groups

__all__ = [
    "CheckInputd",
    "convert_hdf5_dataset",
    "dataset_class_names",
    "dataset_dirs",
    "dataset_labels",
    "dataset_split",
    "DEMO_LABELS",
    "ensure_demo_dataset",
    "find_images",
    "HDF5_SOURCES",
    "folder_sampling_weights",
    "load_msd_datalist",
    "make_phantom",
    "NIFTI_SUFFIXES",
    "patient_id",
    "RemapSuiteLabelsd",
    "split_datalist",
    "STRUCTURE_REGIONS",
    "structure_region",
    "structure_volumes_ml",
    "suite_absent_exclusions",
    "suite_label_maps",
    "suite_vocabulary",
    "WindowBatchSampler",
    "add_windows",
    "image_spacing",
    "plan_window",
    "window_groups",
    "write_demo_dataset",
]
