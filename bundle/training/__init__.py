"""Training: the diffusion trainer on MONAI's engines, its handlers (resume, best model, report), and the up-front
check of its inputs."""

from .handlers import BestModelSaver, ResumeCheckpoint, TrainingReport, WeightEMA, WeightEMAHandler
from .trainer import DiffusionPrepareBatch, DiffusionTrainer, FolderPromptsPrepareBatch
from .validation import CheckedCacheDataset, InputError, check_inputs

__all__ = [
    "BestModelSaver",
    "CheckedCacheDataset",
    "DiffusionPrepareBatch",
    "DiffusionTrainer",
    "FolderPromptsPrepareBatch",
    "InputError",
    "ResumeCheckpoint",
    "TrainingReport",
    "WeightEMA",
    "WeightEMAHandler",
    "check_inputs",
]
