"""``SaveConfig``: what the driver saves, where and when - its ``mindspore.train.CheckpointConfig``."""

import dataclasses
from typing import Optional

from ..core.validation import PathLike, check_positive_int
from .checkpoint import DEFAULT_CKPT_PATH

__all__ = ["SaveConfig"]


@dataclasses.dataclass(frozen=True)
class SaveConfig:
    """The saving options of :meth:`~mindspore_accum.driver.loop.GradientAccumulation.train_process`, in one place.

    MindSpore groups its checkpoint options in ``CheckpointConfig``; this does
    the same for the driver's two kinds of file, the model checkpoint for
    eval.py and the training states a run resumes from. The default writes
    the model checkpoint only, as the tutorial's ``train_process(10, ds_train,
    mini_steps=4)`` does.

    Args:
        ckpt_path: where the bare network's checkpoint (its moving average,
            with EMA) is written at every epoch's end, after the epoch's state,
            atomically; None skips it. Only rank 0 writes when data parallel.
        state_dir: where training states are written (see
            :mod:`~mindspore_accum.run.state`): at the end of every
            epoch, every ``save_every`` updates, and on SIGINT/SIGTERM. None
            writes none.
        save_every: also write a state every this many updates.
        keep_checkpoints: training states kept in ``state_dir``; older ones are
            deleted, as ``CheckpointConfig(keep_checkpoint_max=...)`` does.
        resume: a training-state file (or a directory of them: the newest) to
            continue from. The run's settings must match the state's.
        handle_signals: on SIGINT/SIGTERM, finish the micro-step, save the
            state and raise :class:`~mindspore_accum.run.signals.TrainingInterrupted`.

    Raises:
        ValueError: ``save_every`` or ``keep_checkpoints`` is not a positive
            integer, or ``save_every`` is given without a ``state_dir``.
    """

    ckpt_path: Optional[PathLike] = DEFAULT_CKPT_PATH
    state_dir: Optional[PathLike] = None
    save_every: Optional[int] = None
    keep_checkpoints: int = 5
    resume: Optional[PathLike] = None
    handle_signals: bool = True

    def __post_init__(self):
        check_positive_int("keep_checkpoints", self.keep_checkpoints, example=5)
        if self.save_every is not None:
            check_positive_int("save_every", self.save_every)
            if self.state_dir is None:
                raise ValueError(f"save_every={self.save_every} needs a state_dir to save to: pass state_dir")
