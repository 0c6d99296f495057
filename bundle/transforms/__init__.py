"""MONAI dictionary transforms of the bundle: text prompts, label-map output, and the SAM2 teacher's targets.

Training: :class:`RandWindowCropd` crops each item to its own window (flat for thick slices); :class:`RandPromptd`
turns a multi-label map into one (prompt, binary target) pair per sample: usually a class present in the map,
sometimes (``absent_prob``) a class that is absent, whose target is empty, so the model learns to answer "not here";
:class:`EmbedPromptd` turns prompts into embeddings; :class:`TeacherTargetsd` and :class:`SelectTeacherd` add SAM2's
masks for the prompted class; :class:`AddCoordinatesd` gives each voxel its position in the volume as channels
(``coordinate_channels``). Output: :class:`DropSmallAnswersd` (the "absent" rule, its thresholds per structure by
:func:`answer_thresholds_ml`), the structures whose largest component alone is kept
(:func:`largest_component_labels`, for MONAI's ``KeepLargestConnectedComponentd``) and :class:`SaveLabelMapd`.
"""

from .absent import DropSmallAnswersd, answer_thresholds_ml, voxel_volume_ml
from .components import largest_component_labels
from .coordinates import AddCoordinatesd
from .crop import RandWindowCropd
from .io import SaveLabelMapd, output_path_for
from .prompts import EmbedPromptd, RandPromptd
from .teacher import SelectTeacherd, TeacherTargetsd

__all__ = [
    "AddCoordinatesd",
    "answer_thresholds_ml",
    "DropSmallAnswersd",
    "EmbedPromptd",
    "largest_component_labels",
    "output_path_for",
    "RandPromptd",
    "RandWindowCropd",
    "SaveLabelMapd",
    "SelectTeacherd",
    "TeacherTargetsd",
    "voxel_volume_ml",
]
