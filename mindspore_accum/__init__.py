"""Gradient accumulation for MindSpore in graph mode.

Train with an effective batch of ``mini_steps x batch_size`` while holding one
micro-batch in memory. One optimizer update equals one ordinary step on the
concatenation of the window's micro-batches: gradients are averaged over the
window's samples, never summed.
"""

from .accumulation_cell import GradientAccumulationCell
from .callbacks import Callback, GradFlowSaver, MetricsLog, ProgressBar
from .cells import AccumulationBuffer, TrainClear, TrainForwardBackward, TrainOptim
from .checkpoint import (
                         DEFAULT_CKPT_PATH,
                         CheckpointError,
                         check_ckpt_path,
                         load_network_checkpoint,
                         save_network_checkpoint,
)
from .device import DEVICE_TARGETS, resolve_device_target
from .distributed import data_parallel_rank, init_data_parallel, launched_by_msrun
from .driver import AMP_LEVELS, GradientAccumulation, NonFiniteError, UpdateRecord, current_learning_rate
from .grad_flow import plot_grad_flow
from .interrupt import StopSignals, TrainingInterrupted
from .lr_schedule import LR_SCHEDULES, learning_rates
from .norm import batchnorm_cells, convert_bn_to_gn
from .save_config import SaveConfig
from .schedule import REMAINDER_POLICIES, WindowSchedule
from .training_state import (
                         StateDirectory,
                         TrainingState,
                         find_training_state,
                         read_training_state,
                         restore_training_state,
                         save_training_state,
)

__version__ = "0.1.0"

__all__ = [
    "AccumulationBuffer", "TrainForwardBackward", "TrainOptim", "TrainClear", "GradientAccumulationCell",
    "GradientAccumulation", "SaveConfig", "UpdateRecord", "NonFiniteError", "current_learning_rate", "AMP_LEVELS",
    "LR_SCHEDULES", "learning_rates", "convert_bn_to_gn", "batchnorm_cells",
    "TrainingState", "StateDirectory", "save_training_state", "read_training_state", "restore_training_state",
    "find_training_state", "StopSignals", "TrainingInterrupted",
    "Callback", "MetricsLog", "ProgressBar", "GradFlowSaver", "plot_grad_flow",
    "WindowSchedule", "REMAINDER_POLICIES",
    "DEFAULT_CKPT_PATH", "CheckpointError", "check_ckpt_path", "save_network_checkpoint", "load_network_checkpoint",
    "DEVICE_TARGETS", "resolve_device_target",
    "init_data_parallel", "launched_by_msrun", "data_parallel_rank",
]
