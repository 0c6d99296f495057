"""The SAM2 teacher: a frozen SAM2 prompted slice by slice, its on-disk cache, and student prompts.

:class:`SAM2Teacher` builds a SAM2 image model from one of the ``sam2`` package's configs and a checkpoint file at a
chosen image size, frozen and in eval mode; nothing is ever downloaded. :class:`TeacherCache` stores its volumes
keyed by case, class, checkpoint hash and teacher settings. The mask that prompts SAM2 comes from the ground truth
or from a trained SegOne student's own prediction (:class:`StudentMasks`), which lets the teacher regularise cases
that have no label (:func:`unlabelled_datalist`). The training transforms are in :mod:`bundle.transforms.teacher`.
"""

from .cache import TeacherCache
from .sam2 import BOX_MODES, PROMPTS, SAM2Teacher
from .student import PROMPT_SOURCES, StudentMasks, unlabelled_datalist

__all__ = [
    "BOX_MODES",
    "PROMPT_SOURCES",
    "PROMPTS",
    "SAM2Teacher",
    "StudentMasks",
    "TeacherCache",
    "unlabelled_datalist",
]
