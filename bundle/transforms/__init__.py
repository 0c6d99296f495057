"""MONAI dictionary transforms of the bundle: text prompts, label-map output, and the SAM2 teacher's targets.

Training: :class:`RandPromptd` turns a multi-label map into one (prompt, binary target) pair per sample: usually a
class present in the map, sometimes (``absent_prob``) a class that is absent, whose target is empty, so the model
learns to answer "not here"; :class:`EmbedPromptd` turns prompts into embeddings; :class:`TeacherTargetsd` and
:class:`SelectTeacherd` add SAM2's masks for the prompted class. Output: :class:`DropSmallAnswersd` (the "absent"
rule) and :class:`SaveLabelMapd`.
"""

from .absent import DropSmallAnswersd
from .io import SaveLabelMapd, output_path_for
from .prompts import EmbedPromptd, RandPromptd
from .teacher import SelectTeacherd, TeacherTargetsd

__all__ = [
    "DropSmallAnswersd",
    "EmbedPromptd",
    "output_path_for",
    "RandPromptd",
    "SaveLabelMapd",
    "SelectTeacherd",
    "TeacherTargetsd",
]
