"""Training: config, defaults from the data, optimiser and schedule, the loop, the run folder."""

from vitkit.train.config import TrainConfig
from vitkit.train.loop import Trainer, train

__all__ = ["TrainConfig", "Trainer", "train"]
