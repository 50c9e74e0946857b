"""The ``GradientAccumulation`` driver: runs the three Cells over a dataset."""

import logging
import uuid
from typing import Dict, Iterable, List, Mapping, Optional, Union

import mindspore as ms
from mindspore import Parameter, amp, nn

from ..core.distributed import data_parallel_rank
from ..core.engine import (
    AMP_LEVELS,
    AccumulationEngine,
    AccumulationStep,
    amp_network,
    default_loss_scaler,
    warn_if_longer_than_epoch,
)
from ..core.schedule import WindowSchedule
from ..core.validation import check_choice, check_positive_int
from ..data.fetch import chunk_for
from ..data.windowed_data import WindowedDataset
from ..nets.norm import warn_if_batchnorm
from ..run.checkpoint import check_ckpt_path
from ..run.lock import own_outputs
from ..run.save_config import SaveConfig
from ..run.signals import StopSignals
from ..run.state import (
    DRIVER,
    Progress,
    StateDirectory,
    TrainingState,
    find_resume_file,
    read_training_state,
    restore_training_state,
)
from .callbacks import DriverCallback
from .epochs import EpochLoop, UpdateRecord

__all__ = ["GradientAccumulation", "AMP_LEVELS"]

logger = logging.getLogger(__name__)


def _fixed_batch_size(dataset):
    """The dataset's micro-batch, or None where it has none fixed (bucket_batch_by_length says 1)."""
    import mindspore.dataset as ds
    bucketed = getattr(ds.engine.datasets, "BucketBatchByLengthDataset", ())
    if not hasattr(dataset, "get_batch_size") or isinstance(dataset, bucketed):
        return None
    return dataset.get_batch_size()


def _micro_batches_of(train_dataset):
    """The micro-batches of one epoch: the dataset's size, or a list's length; None for an unsized iterable."""
    if hasattr(train_dataset, "get_dataset_size"):
        return train_dataset.get_dataset_size()
    return len(train_dataset) if hasattr(train_dataset, "__len__") else None


class GradientAccumulation:
    """Trains ``network`` with an optimizer update every ``mini_steps`` micro-batches.

    One update equals one ordinary training step on the concatenation of the
    window's micro-batches (for networks without BatchNorm): the gradients are
    averaged over the window's samples, not summed.

    Each micro-step is one graph: forward and backward, and, when it closes a
    window, the update stage too. Nothing is read back from the device until
    the window closes. Then the window's losses, the record and the callbacks
    are handled once, ``TrainClear`` empties the buffer, and a partial window
    at an epoch's end is flushed through ``TrainOptim``.

    Args:
        network: the bare network; its parameters are what the checkpoint holds.
        loss_fn: a loss Cell reducing to the *mean* over the micro-batch, such
            as ``nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")``.
        optimizer: a MindSpore optimizer over ``network``'s parameters.
        amp_level: ``"O0"`` (float32), ``"O1"``, ``"O2"`` or ``"O3"``, applied
            with ``mindspore.amp.auto_mixed_precision``. The parameters, the
            checkpoint and the accumulation buffer stay float32.
        loss_scaler: ``"auto"`` (a ``DynamicLossScaler(2**16, 2, 2000)`` -
            MindSpore's ``DynamicLossScaleManager`` defaults - for O1 to O3,
            none for O0), None, or a ``mindspore.amp.DynamicLossScaler`` /
            ``StaticLossScaler``. The loss is scaled every micro-step; overflow
            is checked once per window, on the accumulated gradient. With a
            dynamic scaler an overflowing window is skipped (no update, buffer
            cleared, scale lowered, :attr:`skipped_updates` + 1); otherwise a
            non-finite window stops training (:class:`NonFiniteError`).
        clip_grad_norm: clip the window's mean gradient to this global norm
            (``ops.clip_by_global_norm``), once per update, after unscaling.
        distributed: data parallel over every rank of
            ``mindspore.communication`` (call ``init()`` first, under
            ``msrun``; see :mod:`~mindspore_accum.core.distributed`). Each rank
            accumulates its own shard's micro-batches with no communication;
            once per window the update stage all-reduces the window's
            gradient, samples and loss in one call, and every rank applies the
            same update: one step on all ranks' micro-batches of the window,
            weighted by samples. Only rank 0 writes the checkpoint and the
            training states; every rank reads a state to resume. The update
            records then give the window's samples and loss over all ranks.
        weighting: ``"samples"`` (each micro-batch weighted by its rows) or
            ``"items"`` (by its labels that are not ``ignore_index``: per-token
            losses over padded sequences); see :mod:`~mindspore_accum.core.weighting`.
        ignore_index: the label that is no item, as the loss's own
            (``nn.CrossEntropyLoss``: -100); a loss ignoring another is refused.
        ema_decay: None, or a decay in [0, 1): a moving average of the
            trainable weights, updated once per applied update (see
            :mod:`~mindspore_accum.core.ema`). The model checkpoint then holds the
            averages under the weights' names; training states hold both.

    Example::

        model = GradientAccumulation(network, net_loss, net_opt)
        model.train_process(10, ds_train, mini_steps=4)
    """

    def __init__(self, network: nn.Cell, loss_fn: nn.Cell, optimizer: nn.Optimizer, *, amp_level: str = "O0",
                 loss_scaler: Union[str, amp.LossScaler, None] = "auto", clip_grad_norm: Optional[float] = None,
                 distributed: bool = False, weighting: str = "samples", ignore_index: int = -100,
                 ema_decay: Optional[float] = None):
        for name, cell in (("network", network), ("loss_fn", loss_fn)):
            if not isinstance(cell, nn.Cell):
                raise TypeError(f"{name} must be a mindspore.nn.Cell, got {type(cell).__name__}")
        self.amp_level = check_choice("amp_level", amp_level, AMP_LEVELS)
        #: This process's rank and the number of ranks (0 and 1 unless ``distributed``).
        self.rank, self.ranks = data_parallel_rank() if distributed else (0, 1)
        self.distributed = bool(distributed)
        #: The network as given: its parameters are what checkpoints hold.
        self.network = network
        #: Where ``amp_level`` put its casts; the same Parameter objects as ``network``.
        self.compute_network = amp_network(network, amp_level)
        self.network_with_loss = nn.WithLossCell(self.compute_network, loss_fn)
        #: The Cells, shared with GradientAccumulationCell's kind: see :mod:`~mindspore_accum.core.engine`.
        self.engine = AccumulationEngine(self.network_with_loss, optimizer,
                                         loss_scaler=default_loss_scaler(amp_level, loss_scaler),
                                         clip_grad_norm=clip_grad_norm, all_reduce=distributed, weighting=weighting,
                                         ignore_index=ignore_index, ema_decay=ema_decay, loss_fn=loss_fn)
        engine = self.engine
        self.optimizer, self.loss_scaler, self.clip_grad_norm = optimizer, engine.loss_scaler, engine.clip_grad_norm
        #: What windows are weighted by, and the label that is no item.
        self.weighting, self.ignore_index = weighting, ignore_index
        #: The weights' moving average, updated once per applied update; None without ``ema_decay``.
        self.ema = engine.ema
        self.buffer = engine.buffer
        self.train_forward_backward, self.train_optim, self.train_clear = \
            engine.forward_backward, engine.optim, engine.clear
        #: The run's counters, over all calls and across a resume; saved in every training state.
        self.progress = Progress()
        self._steps = {}  # (mini_steps, remainder, micro_batches) -> AccumulationStep
        self.run_id = None
        self._warned_batchnorm = False

    # The counters live in ``progress``; these read them.
    total_updates = property(lambda self: self.progress.total_updates, doc="Optimizer updates applied, over all calls.")
    total_micro_steps = property(lambda self: self.progress.total_micro_steps,
                                 doc="Micro-batches run through forward and backward, over all calls.")
    total_samples = property(lambda self: self.progress.total_samples, doc="Samples in those micro-batches.")
    skipped_updates = property(lambda self: self.progress.skipped_updates,
                               doc="Windows skipped because their gradient overflowed (dynamic loss scaling).")

    def state_parameters(self) -> Dict[str, List[Parameter]]:
        """What a training state saves and a resume restores, in named groups (see :mod:`..run.state`)."""
        return self.engine.state_parameters(self.network)

    def train_process(self, epoch: int, train_dataset: Iterable, mini_steps: int = 4, *, remainder: str = "flush",
                      save: Optional[SaveConfig] = None, log_every: Optional[int] = 1,
                      callbacks: Iterable[DriverCallback] = (), seed: Optional[int] = None,
                      settings: Optional[Mapping] = None) -> List[UpdateRecord]:
        """Trains until ``epoch`` epochs are done, saving the checkpoint at each epoch's end.

        Args:
            epoch: the number of passes over ``train_dataset`` - in all, counting
                those before a resume.
            train_dataset: a ``mindspore.dataset`` Dataset (or any re-iterable of
                input tuples) yielding micro-batches; the last input is the label.
                Or a :class:`~mindspore_accum.data.windowed_data.WindowedDataset`:
                a global batch of any size, or a batch schedule, each window
                exactly its samples; ``mini_steps`` is then its own.
            mini_steps: micro-batches per optimizer update.
            remainder: ``"flush"`` applies a partial window at the end of each
                epoch with its true weighting; ``"drop"`` discards it.
            save: a :class:`~mindspore_accum.run.save_config.SaveConfig`: the model
                checkpoint, the training states, resuming and signals. The
                default writes ``gradient_accumulation.ckpt`` at each epoch's end. On a
                resume, a MindSpore dataset is positioned with
                ``set_init_step``, so the micro-batches already consumed are
                skipped, not re-read.
            log_every: log one line every this many updates; None logs none
                (a progress bar shows them instead).
            callbacks: :class:`~mindspore_accum.driver.callbacks.DriverCallback` objects,
                told of every epoch, micro-step and update.
            seed: the seed the caller set, recorded in the state and checked on
                resume; the driver itself draws no random numbers.
            settings: what else changes training, as ``{name: JSON value}``
                (a front end's flags, a data fingerprint): recorded in every
                state beside the driver's own (a ``--flag`` the driver records
                itself is not written twice: :meth:`~mindspore_accum.run.settings.RunSettings.with_flags`);
                a resume that changes one is refused by name.

        Returns:
            A list of :class:`UpdateRecord`, one per optimizer update of this call.

        Raises:
            NonFiniteError: a micro-batch's loss, or a window's accumulated
                gradient, is NaN or infinite. No update is applied from it, and
                the last saved state and the checkpoint are left as they were.
            TrainingInterrupted: a signal stopped training (after saving).
        """
        save = SaveConfig() if save is None else save
        if not isinstance(save, SaveConfig):
            raise TypeError(f"save must be a mindspore_accum.SaveConfig or None, got {save!r}: pass "
                            f"save=SaveConfig(ckpt_path=..., state_dir=...)")
        run = self._begin(epoch, train_dataset, WindowSchedule(mini_steps, remainder), save, log_every, callbacks,
                          seed, settings)
        outputs = own_outputs(run.ckpt_path, run.states and run.states.directory)
        with StopSignals(save.handle_signals) as run.stop, outputs:
            return run.run(train_dataset, epoch)

    # Set-up and resume.

    def _begin(self, epoch, train_dataset, schedule, save, log_every, callbacks, seed, settings):
        """Checks the arguments and the outputs, resumes or starts afresh; returns the call's :class:`EpochLoop`."""
        epoch = check_positive_int("epoch", epoch, example=10)
        if log_every is not None:
            log_every = check_positive_int("log_every", log_every)
        writer = self.rank == 0  # data parallel: one copy of every file, from rank 0
        ckpt_path = check_ckpt_path(save.ckpt_path) if save.ckpt_path is not None and writer else None
        states = None
        if save.state_dir is not None and writer:
            states = StateDirectory(save.state_dir, save.keep_checkpoints)
        micro_batches = _micro_batches_of(train_dataset)
        windowed = train_dataset if isinstance(train_dataset, WindowedDataset) else None
        step = self._step(schedule, micro_batches, windowed is not None)
        run = EpochLoop(self, schedule, self._new_state(step, train_dataset, seed, settings), states, ckpt_path,
                        micro_batches, tuple(callbacks), log_every, save.save_every, step, windowed=windowed,
                        fetch=chunk_for(ms.get_context("device_target")))
        self._warn_about(schedule, micro_batches, run.states, save.resume)
        if save.resume is not None:
            run.state = self._resume(save.resume, epoch, run.state)
            # The open window's micro-batches, from the buffer the state restored: the host's count for window_end.
            run.window = int(self.buffer.window_micro_steps.asnumpy())
        else:
            self.train_clear()  # a window left by an interrupted earlier call must not leak in
            if self.ema is not None:
                self.ema.reset()  # from the weights training starts from: loaded ones too (--init_ckpt)
        step.place_in_epoch(run.state.micro_batch)
        #: The run's identity: new for a fresh run, the resumed state's for a resumed one (see TrainingState).
        self.run_id = run.state.run_id
        return run

    def _new_state(self, step, train_dataset, seed, settings):
        """This call's settings, at the start, with the driver's counters."""
        data = train_dataset.settings() if isinstance(train_dataset, WindowedDataset) else \
            {"batch_size": _fixed_batch_size(train_dataset)}  # a WindowedDataset's plan is its windows' settings
        recorded = step.settings(model=type(self.network).__name__, seed=seed, amp_level=self.amp_level,
                                 ranks=self.ranks, **data)
        return TrainingState(settings=recorded.with_flags(settings or {}), progress=self.progress,
                             run_id=uuid.uuid4().hex)

    def _warn_about(self, schedule, micro_batches, states, resume):
        """Settings that run, but not as the user probably meant."""
        if not self._warned_batchnorm:  # once per driver: it is about the network, not the call
            self._warned_batchnorm = warn_if_batchnorm(self.network, schedule.mini_steps)
        warn_if_longer_than_epoch(schedule.mini_steps, micro_batches, schedule.remainder)
        earlier = StateDirectory.files_in(states.directory) if resume is None and states is not None else []
        if earlier:
            # Lightning's choice: warn, not refuse, so that running the same command twice works.
            logger.warning("the training-state directory %s holds %d states of an earlier run, which this run's "
                           "states will push out (newest %d kept); to continue that run instead, pass "
                           "resume=%s (--resume)", states.directory, len(earlier), states.keep, states.directory)

    def _resume(self, path, epoch, expected):
        """Loads the state at ``path`` (checked against ``expected``) and its counters; returns its position."""
        path = find_resume_file(path, DRIVER)
        loaded = read_training_state(path)
        saved = loaded[0]
        epochs_started = saved.epoch if saved.micro_batch or saved.epoch_done else saved.epoch - 1
        if epochs_started > epoch:
            raise ValueError(f"epoch={epoch} but the state {path} is already at {saved.where()}: "
                             f"pass an epoch of at least {epochs_started} (epoch counts the epochs before "
                             f"the resume too)")
        state = restore_training_state(self, path, expected, loaded)
        self.progress = state.progress
        if state.epoch_done:
            state.next_epoch()
        return state

    def _step(self, schedule, micro_batches, windows_from_data):
        """The one-graph micro-step for this window and epoch, built once and kept."""
        key = (None, schedule.remainder, None) if windows_from_data else \
            (schedule.mini_steps, schedule.remainder, micro_batches)
        if key not in self._steps:
            self._steps[key] = AccumulationStep(self.engine, schedule, micro_batches, clears=False,
                                                windows_from_data=windows_from_data)
        return self._steps[key]
