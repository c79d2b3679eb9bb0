"""Training: `train` / `resume` (model.fit wiring, run directory), the paper's optimizer and
schedule, and the callbacks (λ logger, atomic per-epoch checkpoint)."""

from keras_sphereface.training.callbacks import EpochCheckpoint, MarginLogger, find_margin_layer
from keras_sphereface.training.optimization import CoupledWeightDecaySGD, paper_step_schedule
from keras_sphereface.training.trainer import (
    TrainingResult,
    compiled_training_model,
    default_learning_rate,
    mixed_precision_policy,
    resume,
    train,
)

__all__ = [
    "CoupledWeightDecaySGD",
    "EpochCheckpoint",
    "MarginLogger",
    "TrainingResult",
    "compiled_training_model",
    "default_learning_rate",
    "find_margin_layer",
    "mixed_precision_policy",
    "paper_step_schedule",
    "resume",
    "train",
]
