"""Networks, noise schedules, prediction wrapper, training and checkpoints (`medrecon.models`).

Knows nothing of physics.  ``medrecon.models.train(...)`` is the training function (the module
of the same name stays importable as ``from medrecon.models.train import ...``); MONAI is
imported only when a network is built.
"""
from .checkpoint import Checkpoint, load_checkpoint, load_model, save_checkpoint
from .networks import PRESETS, UNetConfig, build_unet, count_parameters, preset
from .padding import PaddedNet, pad_to_multiple, padded, required_multiple
from .schedules import (VE, VPContinuous, VPSchedule, convert, karras_sigmas, make_betas, spacing,
                        to_eps, to_x0)
from .train import TrainResult, train
from .train_common import EMA, latest_checkpoint
from .wrapper import PREDICTION_TYPES, DiffusionModel

__all__ = [
    "DiffusionModel", "PREDICTION_TYPES",
    "UNetConfig", "PRESETS", "preset", "build_unet", "count_parameters",
    "VPSchedule", "VPContinuous", "VE", "make_betas", "karras_sigmas", "spacing", "convert",
    "to_eps", "to_x0",
    "Checkpoint", "save_checkpoint", "load_checkpoint", "load_model",
    "train", "TrainResult", "EMA", "latest_checkpoint",
]
