"""``mindspore.train`` callbacks for ``Model(GradientAccumulationCell)``: what the driver shows, on the Model path.

* :class:`CountOnFrom` sets ``cur_step_num`` to a resumed run's micro-step, so
  that ``LossMonitor``'s and ``ModelCheckpoint``'s step numbers (file names,
  ``step_num``) are the uninterrupted run's. Put it first.
* :class:`EvaluateEachEpoch` calls ``evaluate(epoch)`` at every real epoch end
  (not at a stop mid-epoch), as ``--eval_every_epoch`` does on both scripts.
* :class:`ModelProgressBar` is the driver's :class:`~mindspore_accum.driver.callbacks.ProgressBar`
  (a ``tqdm`` bar on a terminal, nothing elsewhere) over ``Model.train``'s micro-steps.

They are ``mindspore.train.Callback`` subclasses; the driver's own hooks are
:class:`~mindspore_accum.driver.callbacks.DriverCallback`.
"""

from typing import Callable, Optional, TextIO

from mindspore.train import Callback

from ..driver.callbacks import ProgressBar

__all__ = ["CountOnFrom", "EvaluateEachEpoch", "ModelProgressBar", "ran_to_epoch_end"]


def ran_to_epoch_end(params):
    """True at an epoch's real end; False where a stop mid-epoch (a signal) ended ``Model.train``'s epoch early."""
    return params.cur_step_num % params.batch_num == 0


class CountOnFrom(Callback):
    """``Model.train`` counts micro-steps from 0; after a resume, count on from the resumed one (``step``).

    ``micro_batches_per_epoch``: the epoch's size, when the dataset's first pass is only the resumed rest of an
    epoch (``WindowedDataset.as_dataset(epoch, start)``): ``Model`` would take that pass's length for every
    epoch's, and name the checkpoints' steps by it.
    """

    def __init__(self, step: int, micro_batches_per_epoch: Optional[int] = None):
        super().__init__()
        self.step = int(step)
        self.micro_batches_per_epoch = micro_batches_per_epoch

    def on_train_begin(self, run_context):
        params = run_context.original_args()
        params.cur_step_num = self.step
        if self.micro_batches_per_epoch is not None:
            params.batch_num = self.micro_batches_per_epoch


class EvaluateEachEpoch(Callback):
    """Calls ``evaluate(epoch)`` after each epoch that ran to its end; :attr:`results` keeps what it returned."""

    def __init__(self, evaluate: Callable[[int], dict]):
        super().__init__()
        self.evaluate = evaluate
        self.results = {}

    def on_train_epoch_end(self, run_context):
        params = run_context.original_args()
        if ran_to_epoch_end(params):
            self.results[params.cur_epoch_num] = self.evaluate(params.cur_epoch_num)


class ModelProgressBar(Callback):
    """:class:`~mindspore_accum.driver.callbacks.ProgressBar` per epoch over ``Model.train``'s micro-steps.

    Args:
        batch_size: samples per micro-batch, for the bar's samples per second.
        stream: where the bar goes (default ``sys.stderr``); no bar where it is no terminal.
        enabled: False (``--no_progress``) to never draw one.
    """

    def __init__(self, batch_size: int, stream: Optional[TextIO] = None, enabled: bool = True):
        super().__init__()
        self.batch_size = int(batch_size)
        self.bar = ProgressBar(stream, enabled)

    def on_train_epoch_begin(self, run_context):
        params = run_context.original_args()
        # Model.train sets cur_epoch_num before this hook; a resumed epoch starts part-way.
        self.bar.epoch_begin(params.cur_epoch_num, params.batch_num, None, start=params.cur_step_num % params.batch_num)

    def on_train_step_end(self, run_context):
        params = run_context.original_args()
        self.bar.micro_step(params.cur_epoch_num, params.cur_step_num, None, self.batch_size)

    def on_train_epoch_end(self, run_context):
        self.bar.epoch_end(run_context.original_args().cur_epoch_num, ())
