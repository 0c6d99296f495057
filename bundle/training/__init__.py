"""Training: the diffusion trainer on MONAI's engines, and its handlers (resume, best model, report)."""

from .handlers import BestModelSaver, ResumeCheckpoint, TrainingReport
from .trainer import DiffusionPrepareBatch, DiffusionTrainer

__all__ = ["BestModelSaver", "DiffusionPrepareBatch", "DiffusionTrainer", "ResumeCheckpoint", "TrainingReport"]
