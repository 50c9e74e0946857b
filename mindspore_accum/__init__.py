"""Gradient accumulation for MindSpore in graph mode.

Train with an effective batch of ``mini_steps x batch_size`` while holding one
micro-batch in memory. One optimizer update equals one ordinary step on the
concatenation of the window's micro-batches: gradients are averaged over the
window's samples, never summed.
"""

from .accumulation_cell import GradientAccumulationCell
from .callbacks import Callback, GradFlowSaver, MetricsLog, ProgressBar
from .cells import AccumulationBuffer, TrainClear, TrainForwardBackward, TrainOptim
from .checkpoint import CheckpointError, load_initial_weights, load_network_checkpoint, save_network_checkpoint
from .distributed import init_data_parallel
from .driver import GradientAccumulation, NonFiniteError, UpdateRecord
from .grad_flow import plot_grad_flow
from .interrupt import TrainingInterrupted
from .lr_schedule import learning_rates
from .norm import convert_bn_to_gn
from .save_config import SaveConfig
from .training_state import read_training_state

__version__ = "0.4.0"

__all__ = [
    # The tutorial's three Cells, the single-graph Cell for Model, and the driver.
    "AccumulationBuffer", "TrainForwardBackward", "TrainOptim", "TrainClear", "GradientAccumulationCell",
    "GradientAccumulation", "SaveConfig", "UpdateRecord",
    # What stops a run.
    "NonFiniteError", "TrainingInterrupted", "CheckpointError",
    # Callbacks of the driver.
    "Callback", "MetricsLog", "ProgressBar", "GradFlowSaver", "plot_grad_flow",
    # Helpers a training script needs.
    "learning_rates", "convert_bn_to_gn", "save_network_checkpoint", "load_network_checkpoint", "load_initial_weights",
    "read_training_state", "init_data_parallel",
]
