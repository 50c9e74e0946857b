"""Batch size as users state it: the global batch, the micro-batch and the ranks, and schedules of the global batch.

The *global batch* is the samples of one window over all ranks: what one
update is a step on. Any two of the global batch ``N``, the micro-batch ``b``
and ``mini_steps`` give the third, across ``R`` ranks (DeepSpeed's rule, made
exact)::

    mini_steps = ceil(N / (b * R))        N = b * mini_steps * R when only b and mini_steps are given

``N`` need not be a multiple of ``b * R``: :class:`~mindspore_accum.data.windowed_data.WindowedDataset`
cuts the micro-batches at the window's boundary, so N = 100 with b = 32 is micro-batches of 32, 32, 32
and 4, and the update is one step on those 100 samples.

A :class:`BatchSchedule` gives the global batch of each window: constant, ramped up by samples consumed
(Megatron-LM's ``--rampup-batch-size start increment samples``), or set per epoch (Lightning's
``GradientAccumulationScheduler({epoch: factor})``, in ``mini_steps`` of full micro-batches).
"""

import dataclasses
import math
from typing import Dict, Mapping, Optional, Sequence

from .validation import check_positive_int

__all__ = ["BatchSizes", "resolve_batch_sizes", "BatchSchedule", "rank_shares"]

#: The API's argument names; a front end passes its own flags' (``--batch_size`` for the micro-batch).
API_NAMES = {"global_batch_size": "global_batch_size", "micro_batch_size": "micro_batch_size",
             "mini_steps": "mini_steps", "ranks": "ranks"}


@dataclasses.dataclass(frozen=True)
class BatchSizes:
    """A checked triple: ``global_batch_size`` samples per window, in micro-batches of at most
    ``micro_batch_size`` per rank, ``mini_steps`` micro-steps in a full window, over ``ranks`` ranks."""

    global_batch_size: int
    micro_batch_size: int
    mini_steps: int
    ranks: int = 1

    @property
    def exact_multiple(self):
        """True when every micro-batch of a full window is full (N = b x mini_steps x R)."""
        return self.global_batch_size == self.micro_batch_size * self.mini_steps * self.ranks

    def derivation(self):
        """The rule with this run's numbers, for the banner: ``100 = 32 x 4 x 1 ... (last micro-batch 4)``."""
        n, b, m, r = self.global_batch_size, self.micro_batch_size, self.mini_steps, self.ranks
        if self.exact_multiple:
            return f"{n} = {b} x {m} x {r} (micro-batch x mini_steps x ranks)"
        shares = rank_shares(n, r)
        cut = ", ".join(f"{micro_batch_sizes(share, b)}" for share in sorted(set(shares), reverse=True))
        return (f"{n} samples per window over {r} rank(s): mini_steps {m} = ceil({n} / ({b} x {r})); a window's "
                f"micro-batches per rank: {cut}")


def resolve_batch_sizes(global_batch_size=None, micro_batch_size=None, mini_steps=None, ranks=1, *,
                        names: Optional[Mapping[str, str]] = None) -> BatchSizes:
    """Any two of ``global_batch_size``, ``micro_batch_size`` and ``mini_steps`` give the third over ``ranks``.

    All three must agree: ``mini_steps == ceil(global_batch_size / (micro_batch_size x ranks))``. ``names``
    maps the argument names to a front end's flags, for the messages.

    Raises:
        ValueError: fewer than two given, a contradictory triple, or a global batch below the micro-batch
            or below the ranks (a rank would get no sample).
        TypeError: a value that is not a whole number.
    """
    name = {**API_NAMES, **(names or {})}
    ranks = check_positive_int(name["ranks"], ranks)
    given = {key: check_positive_int(name[key], value) for key, value in
             (("global_batch_size", global_batch_size), ("micro_batch_size", micro_batch_size),
              ("mini_steps", mini_steps)) if value is not None}
    if len(given) < 2:
        raise ValueError(f"give two of {name['global_batch_size']}, {name['micro_batch_size']} and "
                         f"{name['mini_steps']} (got {', '.join(name[k] for k in given) or 'none'}): the third "
                         f"is derived")
    n, b, m = (given.get(key) for key in ("global_batch_size", "micro_batch_size", "mini_steps"))
    if n is None:
        return BatchSizes(b * m * ranks, b, m, ranks)
    if b is None:
        b = math.ceil(n / (m * ranks))
    if n < b:
        raise ValueError(f"{name['global_batch_size']} {n} is below the micro-batch, {name['micro_batch_size']} "
                         f"{b}: pass a global batch of at least {b}, or a smaller micro-batch")
    if n < ranks:
        raise ValueError(f"{name['global_batch_size']} {n} is below the {ranks} ranks: every rank needs a sample; "
                         f"pass at least {ranks}")
    derived = math.ceil(n / (b * ranks))
    if m is not None and m != derived:
        raise ValueError(f"{name['global_batch_size']} {n}, {name['micro_batch_size']} {b} and "
                         f"{name['mini_steps']} {m} contradict each other over {ranks} rank(s): {n} samples in "
                         f"micro-batches of {b} x {ranks} take {derived} micro-steps; drop one of the three")
    return BatchSizes(n, b, derived, ranks)


def rank_shares(samples, ranks):
    """Each rank's samples of a window of ``samples``: as equal as can be, the first ranks one more."""
    return [samples // ranks + (rank < samples % ranks) for rank in range(ranks)]


def micro_batch_sizes(samples, micro_batch_size):
    """One rank's share of a window cut into micro-batches: full ones, then the rest (100, 32 -> 32, 32, 32, 4)."""
    full, rest = divmod(samples, micro_batch_size)
    return [micro_batch_size] * full + ([rest] if rest else [])


class BatchSchedule:
    """The global batch of each window: constant, a ramp by samples consumed, or per epoch.

    Args:
        global_batch_size: the global batch (samples per window over all ranks) once any ramp is over.
        rampup: ``(start, increment, samples)``, as Megatron-LM's ``--rampup-batch-size``: the global batch
            starts at ``start`` and grows by ``increment`` in equal stretches of samples consumed, reaching
            ``global_batch_size`` after ``samples``; ``global_batch_size - start`` must be a multiple of
            ``increment``.
        by_epoch: ``{epoch: global batch}`` from that 1-based epoch on (the first key must be 1; epochs
            increasing). :meth:`from_mini_steps` builds it from Lightning's ``{epoch: mini_steps}``.

    A window's size is fixed when it opens, from the samples consumed before it (over all ranks, every
    earlier epoch included), so that the schedule is a pure function of the run's position, and a resume
    recomputes it.
    """

    def __init__(self, global_batch_size: Optional[int] = None, *, rampup: Optional[Sequence[int]] = None,
                 by_epoch: Optional[Mapping[int, int]] = None):
        if by_epoch is not None and (rampup is not None or global_batch_size is not None):
            raise ValueError("by_epoch gives every epoch's global batch: pass it alone, without global_batch_size "
                             "or rampup")
        self.by_epoch = _check_by_epoch(by_epoch) if by_epoch is not None else None
        self.global_batch_size = check_positive_int("global_batch_size", global_batch_size) \
            if by_epoch is None else max(self.by_epoch.values())
        self.rampup = _check_rampup(rampup, self.global_batch_size) if rampup is not None else None

    @classmethod
    def from_mini_steps(cls, mini_steps_by_epoch: Mapping[int, int], micro_batch_size: int, ranks: int = 1):
        """Lightning's ``{epoch: mini_steps}`` as global batches: ``mini_steps x micro_batch_size x ranks``."""
        steps = _check_by_epoch(mini_steps_by_epoch, "mini_steps")
        return cls(by_epoch={epoch: m * micro_batch_size * ranks for epoch, m in steps.items()})

    def window_size(self, epoch: int, samples_consumed: int) -> int:
        """The global batch of a window opening in 1-based ``epoch`` after ``samples_consumed`` samples."""
        if self.by_epoch is not None:
            return self.by_epoch[max(e for e in self.by_epoch if e <= epoch)]
        if self.rampup is None:
            return self.global_batch_size
        start, increment, samples = self.rampup
        if samples == 0:
            return self.global_batch_size
        stretch = samples / ((self.global_batch_size - start) // increment)  # Megatron's samples per increment
        return min(start + int(samples_consumed / stretch) * increment, self.global_batch_size)

    @property
    def smallest(self):
        """The smallest global batch the schedule gives."""
        return min(self.by_epoch.values()) if self.by_epoch is not None else \
            self.rampup[0] if self.rampup is not None else self.global_batch_size

    def settings(self) -> Dict[str, object]:
        """What a resume must match, as JSON values."""
        return {"global_batch_size": self.global_batch_size,
                "batch_rampup": list(self.rampup) if self.rampup is not None else None,
                "batch_by_epoch": {str(k): v for k, v in self.by_epoch.items()} if self.by_epoch is not None
                else None}

    def describe(self):
        """One line for the banner."""
        if self.by_epoch is not None:
            return "per epoch: " + ", ".join(f"from epoch {e}: {n}" for e, n in self.by_epoch.items())
        if self.rampup is not None:
            start, increment, samples = self.rampup
            return f"ramp: {start} + {increment} at a time up to {self.global_batch_size} over {samples} samples"
        return f"constant: {self.global_batch_size}"


def _check_rampup(rampup, final):
    try:
        start, increment, samples = rampup
    except (TypeError, ValueError):
        raise ValueError(f"rampup must be (start, increment, samples), got {rampup!r}") from None
    start, increment = check_positive_int("rampup start", start), check_positive_int("rampup increment", increment)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ValueError(f"rampup samples must be a whole number >= 0, got {samples!r}")
    if start >= final:
        raise ValueError(f"rampup start {start} is not below the global batch {final}: a ramp must increase; "
                         f"pass a smaller start, or no ramp")
    if (final - start) % increment:
        raise ValueError(f"rampup increment {increment} does not step from {start} to the global batch {final} "
                         f"(their difference, {final - start}, is no multiple of it): pass an increment that "
                         f"divides {final - start}")
    return start, increment, samples


def _check_by_epoch(by_epoch, what="global batch"):
    if not isinstance(by_epoch, Mapping) or not by_epoch:
        raise ValueError(f"the schedule must map 1-based epochs to a {what}, e.g. {{1: 1, 3: 4}}, got {by_epoch!r}")
    epochs = list(by_epoch)
    for epoch in epochs:
        check_positive_int(f"the schedule's epoch {epoch!r}", epoch)
        check_positive_int(f"the schedule's {what} at epoch {epoch}", by_epoch[epoch])
    if epochs[0] != 1:
        raise ValueError(f"the schedule starts at epoch {epochs[0]}: it must say the {what} of epoch 1 "
                         f"(epochs count from 1)")
    if epochs != sorted(set(epochs)):
        raise ValueError(f"the schedule's epochs {epochs} are not increasing: list them in order, each once")
    return {int(e): int(by_epoch[e]) for e in epochs}
