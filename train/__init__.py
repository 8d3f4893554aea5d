"""Training one architecture to completion with timm's components (`search.py train`).

`train(arch, TrainConfig(...))` trains on the training split and reports the held-out (test)
split; the run folder holds a checkpoint that `timm.create_model("pconv_fasternet",
arch=..., checkpoint_path=...)` loads. Details: train/README.md.
"""

from ._checkpoint import stored_config
from .config import TrainConfig, TrainError, train_parser
from .loop import EpochRecord, TrainingDiverged, TrainResult, train

__all__ = ["EpochRecord", "TrainConfig", "TrainError", "TrainResult", "TrainingDiverged", "stored_config",
           "train", "train_parser"]
