"""Gradient accumulation for MindSpore in graph mode.

Train with an effective batch of ``mini_steps x batch_size`` while holding one
micro-batch in memory. One optimizer update equals one ordinary step on the
concatenation of the window's micro-batches: gradients are averaged over the
window's samples, never summed.
"""

from .core.accumulator import Accumulator
from .core.batch_size import BatchSchedule, BatchSizes, resolve_batch_sizes
from .core.cells import AccumulationBuffer, AddToWindow, TrainClear, TrainForwardBackward, TrainOptim
from .core.distributed import init_data_parallel
from .core.ema import ExponentialMovingAverage
from .core.engine import AccumulationEngine, AccumulationStep
from .core.lr_schedule import learning_rates
from .core.optimizers import RatePerUpdate, create_optimizer
from .core.schedule import WindowSchedule, window_end
from .data.windowed_data import WindowedDataset
from .driver.callbacks import DriverCallback, GradFlowSaver, MetricsLog, ProgressBar
from .driver.epochs import UpdateRecord
from .driver.loop import GradientAccumulation
from .model.callbacks import CountOnFrom, EvaluateEachEpoch, ModelProgressBar
from .model.cell import GradientAccumulationCell
from .model.guards import EpochSizeCheck, NetworkCheckpoint, ResumableLossMonitor, TrainCellCheckpoint
from .nets.grad_flow import plot_grad_flow
from .nets.metrics import MeanCrossEntropy
from .nets.norm import convert_bn_to_gn
from .run.checkpoint import load_initial_weights, load_network_checkpoint, save_network_checkpoint
from .run.files import CheckpointError, newest_file, prune, read_checkpoint, write_checkpoint_atomically
from .run.lock import RunInUseError, run_lock
from .run.save_config import SaveConfig
from .run.settings import RunSettings, data_fingerprint
from .run.signals import NonFiniteError, StopSignals, TrainingInterrupted
from .run.state import TrainingState, find_resume_file, read_training_state, restore_training_state

__version__ = "0.5.0"

#: The public API, in one place (docs/api.md lists it, and a test keeps the two in step). The names the
#: modules export beyond these are for the project's own scripts and may change.
__all__ = [
    # Accumulation inside your own training step, called like an optimizer.
    "Accumulator",
    # The tutorial's three Cells, and the accumulation step both engines run.
    "AccumulationBuffer", "AddToWindow", "TrainForwardBackward", "TrainOptim", "TrainClear", "AccumulationEngine",
    "AccumulationStep", "WindowSchedule", "window_end",
    # Batch size as users state it: the rule of two, the schedules, windows cut at any size.
    "resolve_batch_sizes", "BatchSizes", "BatchSchedule", "WindowedDataset",
    # The driver, its settings, records and hooks.
    "GradientAccumulation", "SaveConfig", "UpdateRecord", "DriverCallback", "MetricsLog",
    "ProgressBar", "GradFlowSaver", "plot_grad_flow",
    # The train Cell for mindspore.train.Model, and the mindspore.train callbacks that guard it.
    "GradientAccumulationCell", "CountOnFrom", "EvaluateEachEpoch", "ModelProgressBar", "TrainCellCheckpoint",
    "NetworkCheckpoint", "EpochSizeCheck", "ResumableLossMonitor",
    # What a run keeps to resume, on either engine, and what a resume must match.
    "TrainingState", "find_resume_file", "read_training_state", "restore_training_state", "RunSettings",
    "data_fingerprint",
    # Files: the atomic write, the CRC read, newest and pruning; the run lock.
    "write_checkpoint_atomically", "read_checkpoint", "newest_file", "prune", "run_lock", "RunInUseError",
    "save_network_checkpoint", "load_network_checkpoint", "load_initial_weights",
    # What stops a run, on either engine.
    "NonFiniteError", "TrainingInterrupted", "StopSignals", "CheckpointError",
    # Helpers a training script needs.
    "learning_rates", "convert_bn_to_gn", "init_data_parallel", "ExponentialMovingAverage", "MeanCrossEntropy",
    # The scripts' --optimizer by name (torch-semantics Adam and AdamW), and a schedule for experimental.optim.
    "create_optimizer", "RatePerUpdate",
]
