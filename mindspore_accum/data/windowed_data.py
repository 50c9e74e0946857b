"""Micro-batches cut at the windows' boundaries, so that every window holds exactly its global batch.

:class:`WindowedDataset` reads a dataset of single samples and yields one rank's micro-batches, planned
epoch by epoch from a :class:`~mindspore_accum.core.batch_size.BatchSchedule`:

* the epoch's samples, in the order every rank reads alike, are cut into windows of the schedule's global
  batch ``N`` (the last one shorter, or dropped: ``remainder``);
* each window is dealt to the ranks as evenly as can be (:func:`~mindspore_accum.core.batch_size.rank_shares`),
  and each rank cuts its share into micro-batches of ``micro_batch_size`` and one shorter rest;
* every micro-batch carries, as its last column, the number of micro-batches of its window on this rank: the
  step Cell closes the window on that count, on the device (``windows_from_data``), so a window of another
  size needs no new graph; only a micro-batch of a new shape compiles, once.

Each rank reads every sample and keeps its own (Megatron's global order, sliced): the ranks' shares of one
window are then exactly that window's samples, whatever their sizes. The plan is a pure function of the
epoch, so a resume recomputes it and starts at any micro-batch.
"""

import dataclasses
import itertools
import logging
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..core.batch_size import BatchSchedule, micro_batch_sizes, rank_shares
from ..core.schedule import REMAINDER_POLICIES
from ..core.validation import check_choice, check_positive_int
from .cursor import iterator_from

__all__ = ["WindowedDataset", "EpochPlan", "WINDOW_COLUMN"]

logger = logging.getLogger(__name__)

#: The name of the last column: the micro-batches of the micro-batch's window, on this rank.
WINDOW_COLUMN = "window_micro_batches"


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """One epoch's windows: their global sizes, where they start, and the samples left out at its end."""

    epoch: int
    #: Samples trained on before this epoch, over all ranks (the ramp's position).
    consumed_before: int
    #: Each window's global batch.
    windows: tuple
    #: Samples at the epoch's end in no window (``remainder="drop"``, or fewer than the ranks).
    dropped: int

    @property
    def samples(self):
        """Samples trained on in this epoch, over all ranks."""
        return sum(self.windows)

    def micro_batches(self, rank, ranks, micro_batch_size):
        """This rank's micro-batches: ``(first row in the epoch, rows, window index, window's micro-batches)``."""
        out, start = [], 0
        for index, size in enumerate(self.windows):
            shares = rank_shares(size, ranks)
            row = start + sum(shares[:rank])
            sizes = micro_batch_sizes(shares[rank], micro_batch_size)
            for rows in sizes:
                out.append((row, rows, index, len(sizes)))
                row += rows
            start += size
        return out


class WindowedDataset:
    """A dataset of single samples as one rank's micro-batches, each window exactly its global batch.

    Args:
        samples: a ``mindspore.dataset`` Dataset batched by one (``dataset.batch(1)``, every column with a
            leading dimension of 1), or a sequence of such tuples of NumPy arrays. A shuffled dataset
            reshuffles every epoch, alike on every rank under the same seed.
        micro_batch_size: the most samples a rank runs in one micro-step.
        global_batch_size: every window's samples over all ranks (a constant global batch), or
        schedule: a :class:`~mindspore_accum.core.batch_size.BatchSchedule` (a ramp, per epoch) instead.
        rank, ranks: this rank and the number of ranks (data parallel).
        remainder: ``"flush"`` trains the epoch's last, shorter window; ``"drop"`` leaves it out.
        pad_values: ``{column index: value}`` for columns whose samples differ in length (token ids): a
            micro-batch is padded to its longest sample with that value.
    """

    def __init__(self, samples, micro_batch_size: int, global_batch_size: Optional[int] = None, *,
                 schedule: Optional[BatchSchedule] = None, rank: int = 0, ranks: int = 1, remainder: str = "flush",
                 pad_values: Optional[Mapping[int, object]] = None):
        if (global_batch_size is None) == (schedule is None):
            raise ValueError("pass one of global_batch_size (a constant global batch) and schedule (a "
                             "BatchSchedule)")
        if schedule is not None and not isinstance(schedule, BatchSchedule):
            raise TypeError(f"schedule must be a mindspore_accum.BatchSchedule, got {schedule!r}")
        self.samples = samples
        self.micro_batch_size = check_positive_int("micro_batch_size", micro_batch_size)
        self.schedule = schedule or BatchSchedule(global_batch_size)
        self.ranks = check_positive_int("ranks", ranks)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.ranks:
            raise ValueError(f"rank must be in 0..{self.ranks - 1}, got {rank!r}")
        self.rank = rank
        self.remainder = check_choice("remainder", remainder, REMAINDER_POLICIES)
        self.pad_values = dict(pad_values or {})
        self.rows = samples.get_dataset_size() if hasattr(samples, "get_dataset_size") else len(samples)
        if self.schedule.smallest < self.ranks:
            raise ValueError(f"the global batch {self.schedule.smallest} is below the {self.ranks} ranks: every "
                             f"rank needs a sample of every window")
        self._plans: List[EpochPlan] = []
        self._micro_batches = {}  # epoch -> this rank's micro-batches

    # The plan.

    def plan(self, epoch: int) -> EpochPlan:
        """The windows of 1-based ``epoch`` (computed once; every earlier epoch's are computed first)."""
        while len(self._plans) < epoch:
            done = len(self._plans)
            consumed = self._plans[-1].consumed_before + self._plans[-1].samples if done else 0
            self._plans.append(self._plan_epoch(done + 1, consumed))
        return self._plans[epoch - 1]

    def _plan_epoch(self, epoch, consumed):
        windows, position = [], 0
        while position < self.rows:
            size = self.schedule.window_size(epoch, consumed + position)
            left = self.rows - position
            if left < size and (self.remainder == "drop" or left < self.ranks):
                break
            windows.append(min(size, left))
            position += windows[-1]
        if not windows:
            raise ValueError(f"the {self.rows} samples of an epoch are fewer than the global batch "
                             f"{self.schedule.window_size(epoch, consumed)}, and remainder='drop' leaves no window:"
                             f" pass a smaller global batch or remainder='flush'")
        return EpochPlan(epoch, consumed, tuple(windows), self.rows - position)

    def micro_batches_in(self, epoch: int) -> int:
        """This rank's micro-batches in ``epoch``."""
        return len(self._mine(epoch))

    def updates_in(self, epoch: int) -> int:
        """Windows (updates) in ``epoch``."""
        return len(self.plan(epoch).windows)

    def total_updates(self, epochs: int) -> int:
        """Updates in epochs 1..``epochs``: what a learning-rate schedule counts."""
        return sum(self.updates_in(epoch) for epoch in range(1, epochs + 1))

    def window_ends(self, epoch: int) -> Tuple[int, ...]:
        """This rank's 1-based micro-batches of ``epoch`` that close a window: where a loss line belongs."""
        mine = self._mine(epoch)
        return tuple(i + 1 for i, (_, _, window, _) in enumerate(mine)
                     if i + 1 == len(mine) or mine[i + 1][2] != window)

    def window_samples(self, epoch: int, micro_batch: int) -> int:
        """The global batch of the window of this rank's 1-based ``micro_batch`` of ``epoch``."""
        return self.plan(epoch).windows[self._mine(epoch)[micro_batch - 1][2]]

    def _mine(self, epoch):
        if epoch not in self._micro_batches:
            self._micro_batches[epoch] = self.plan(epoch).micro_batches(self.rank, self.ranks, self.micro_batch_size)
        return self._micro_batches[epoch]

    def settings(self):
        """What a resume must match: the schedule, the micro-batch, the remainder policy."""
        return {**self.schedule.settings(), "batch_size": self.micro_batch_size, "remainder": self.remainder}

    # The micro-batches.

    def iterate(self, epoch: int, start: int = 0):
        """This rank's micro-batches of ``epoch`` from its ``start``-th (0-based): tuples of NumPy arrays,
        the samples' columns and then the window's micro-batches (int32)."""
        mine = self._mine(epoch)[start:]
        if not mine:
            return
        rows = self._rows_from(epoch, mine[0][0])
        position = mine[0][0]
        for first, count, _, window in mine:
            for _ in range(first - position):  # the other ranks' samples
                next(rows)
            taken = list(itertools.islice(rows, count))
            position = first + count
            yield (*self._stack(taken), np.array(window, np.int32))

    def _rows_from(self, epoch, row):
        """The epoch's samples from ``row`` on, as tuples of arrays."""
        if not hasattr(self.samples, "create_tuple_iterator"):
            return iter(self.samples[row:])
        # The cursor at a sample (batches of one); one pass of the iterator stops at that epoch's end.
        return iter(iterator_from(self.samples, epoch, row, num_epochs=epoch, output_numpy=True))

    def _stack(self, rows):
        columns = []
        for index, parts in enumerate(zip(*rows)):
            shapes = {part.shape[1:] for part in parts}
            if len(shapes) > 1:
                if index not in self.pad_values:
                    raise ValueError(f"column {index}'s samples differ in shape ({sorted(shapes)}): give its "
                                     f"pad value in pad_values")
                longest = np.max([part.shape[1:] for part in parts], axis=0)
                parts = [np.pad(part, [(0, 0)] + [(0, int(n - s)) for n, s in zip(longest, part.shape[1:])],
                                constant_values=self.pad_values[index]) for part in parts]
            columns.append(np.concatenate(parts))
        return columns

    def column_names(self) -> Sequence[str]:
        """The samples' column names and :data:`WINDOW_COLUMN`."""
        names = self.samples.get_col_names() if hasattr(self.samples, "get_col_names") else \
            [f"column_{i}" for i in range(len(self.samples[0]))]
        return [*names, WINDOW_COLUMN]

    def as_dataset(self, first_epoch: int = 1, start: int = 0):
        """A ``mindspore.dataset.GeneratorDataset`` of the micro-batches from ``first_epoch``'s ``start``-th on,
        one epoch per pass: for ``mindspore.train.Model`` with ``GradientAccumulationCell(windows_from_data=True)``."""
        import mindspore.dataset as ds
        return ds.GeneratorDataset(_Epochs(self, first_epoch, start), self.column_names(), shuffle=False)


class _Epochs:
    """GeneratorDataset's source: each pass is the next epoch (the first from ``start``)."""

    def __init__(self, windowed, epoch, start):
        self.windowed, self.epoch, self.start = windowed, epoch, start

    def __len__(self):
        # This pass's: a resumed first pass is shorter (GeneratorDataset checks the count read against it), so
        # Model must be told the epoch's size apart: CountOnFrom(step, micro_batches_per_epoch).
        return self.windowed.micro_batches_in(self.epoch) - self.start

    def __iter__(self):
        # A generator takes its epoch when first read: GeneratorDataset's validator calls iter() once to check.
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0
        yield from self.windowed.iterate(epoch, start)
