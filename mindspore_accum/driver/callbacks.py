"""What the driver tells the outside: progress, a metrics log, gradient-flow pictures.

:meth:`GradientAccumulation.train_process` calls each callback's methods;
subclass :class:`DriverCallback` and override the ones you need. ``update`` runs
after ``TrainOptim`` and before ``TrainClear``, so ``driver.buffer.grad_mean``
still holds the window's gradient.
"""

import json
import logging
import os
import shutil
import sys
import time
from typing import TYPE_CHECKING, Callable, Optional, TextIO

from ..core.validation import PathLike, check_positive_int
from ..run.files import replacing

if TYPE_CHECKING:  # only for the annotations: training_state imports MindSpore
    from ..run.state import TrainingState

__all__ = ["DriverCallback", "MetricsLog", "ProgressBar", "GradFlowSaver"]

logger = logging.getLogger(__name__)


class DriverCallback:
    """No-op hooks; override what you need."""

    def epoch_begin(self, epoch, micro_batches, schedule, start=0):
        """``micro_batches`` is the epoch's size if the dataset knows it, else None.

        ``start`` is the micro-batches of the epoch already consumed: non-zero
        only in the first epoch of a resumed run.
        """

    def micro_step(self, epoch, micro_batch, loss, samples):
        """After each micro-step: ``micro_batch`` counts the epoch's micro-batches from 1.

        ``loss`` is the micro-batch's loss as a device Tensor, not read back:
        ``float(loss)`` waits for the device, which the driver itself does
        only once per window. The window's losses as floats are in the
        :class:`~mindspore_accum.driver.epochs.UpdateRecord` that ``update`` gets.
        """

    def update(self, record, driver):
        """After each optimizer update, before the buffer is cleared."""

    def epoch_end(self, epoch, records):
        """With the epoch's :class:`~mindspore_accum.driver.epochs.UpdateRecord` list."""



class MetricsLog(DriverCallback):
    """Writes ``metrics.jsonl``: one JSON object a line, flushed as it goes, fsynced at each epoch's end.

    A record per update (``"kind": "update"``) and per epoch (``"kind":
    "epoch"``, with whatever ``evaluate(epoch)`` returns). The fields are
    listed in docs/cli.md, which tests/test_docs.py checks against this class.

    Args:
        path: the file, named after the checkpoint it describes (train.py:
            ``<checkpoint stem>_metrics.jsonl``). It is opened at the first
            record, so a run that fails before its first update leaves an
            earlier file as it was; it is then replaced, or, with ``resume``,
            continued.
        evaluate: optional ``callable(epoch) -> dict`` run at each epoch's end.
        resume: the :class:`~mindspore_accum.run.state.TrainingState` the
            run resumes from. The records it covers are kept, and those written
            after it (by a run killed before its next state), any line cut
            short and any line of another run (its ``run`` differs from the
            state's ``run_id``) are dropped, so that the file ends up as an
            uninterrupted run's.
    """

    def __init__(self, path: PathLike, evaluate: Optional[Callable[[int], dict]] = None,
                 resume: Optional["TrainingState"] = None):
        self.path = os.fspath(path)
        self.evaluate = evaluate
        self.resume = resume
        self._file = None
        self._run_id = resume.run_id if resume is not None else None

    def _open(self):
        kept = []
        if self.resume is not None and os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as existing:
                kept = [line for line in existing if _covered(line, self.resume)]
        with replacing(self.path) as tmp_path, open(tmp_path, "w", encoding="utf-8") as fresh:
            fresh.writelines(kept)  # replaced whole, never half-filtered
        self._file = open(self.path, "a", encoding="utf-8")

    def _write(self, record, durable=False):
        try:
            if self._file is None:
                self._open()
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
            if durable:
                os.fsync(self._file.fileno())
        except OSError as error:  # a full disk says "No space left on device" and names no file
            failed = OSError(f"cannot write the metrics file {self.path!r}: {error.strerror or error}")
            failed.errno = error.errno  # kept for callers; str() without the "[Errno 28]" an (errno, text) pair gives
            raise failed from None

    def update(self, record, driver):
        self._run_id = driver.run_id
        self._write({"kind": "update", "epoch": record.epoch, "update": record.update,
                     "total_updates": record.total_updates, "micro_batches": record.micro_batches,
                     "samples": record.samples, "items": record.items, "samples_seen": record.samples_seen,
                     "loss": record.loss,
                     "lr": record.lr, "skipped": record.skipped, "loss_scale": record.loss_scale,
                     "skipped_updates": driver.skipped_updates, "run": driver.run_id})

    def epoch_end(self, epoch, records):
        skipped = sum(r.skipped for r in records)
        records = [r for r in records if not r.skipped]  # an overflowing window's loss may be inf
        items = sum(r.items for r in records)  # samples, or valid tokens with weighting="items"
        entry = {"kind": "epoch", "epoch": epoch, "run": self._run_id, "updates": len(records), "skipped": skipped,
                 "train_loss": sum(r.loss * r.items for r in records) / items if items else None}
        if self.evaluate is not None:
            entry.update(self.evaluate(epoch))
        self._write(entry, durable=True)  # the epoch's lines on disk, as its training state is

    def close(self):
        if self._file is not None:
            self._file.close()


def _covered(line, state):
    """True if a metrics line is whole, of ``state``'s run, and its record comes before ``state``'s position."""
    if not line.endswith("\n"):
        return False  # cut short by a kill
    try:
        record = json.loads(line)
    except ValueError:
        return False
    if not isinstance(record, dict) or record.get("run") != state.run_id:
        return False  # another run's file, beside the checkpoint this run writes
    if record.get("epoch") != state.epoch:
        return record.get("epoch", 0) < state.epoch
    if record.get("kind") == "update":
        return record.get("update", 0) <= len(state.epoch_records)
    return state.epoch_done


class ProgressBar(DriverCallback):
    """A ``tqdm`` bar per epoch over micro-batches, or plain lines where there is no terminal.

    The bar shows the last window's loss, the learning rate, images per second
    and the update count. When ``stream`` is not a terminal (a CI log, a file)
    or ``enabled`` is False, no bar is drawn - no carriage returns - and the
    driver's periodic log lines are the progress.

    Args:
        stream: where the bar goes (default ``sys.stderr``).
        enabled: False to never draw a bar.
    """

    def __init__(self, stream: Optional[TextIO] = None, enabled: bool = True):
        self.stream = stream if stream is not None else sys.stderr
        self.active = bool(enabled) and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._bar = None
        self._postfix = {}

    def epoch_begin(self, epoch, micro_batches, schedule, start=0):
        if not self.active:
            return
        from tqdm import tqdm  # only where a bar is drawn
        # A terminal that reports no size (0 x 0) makes tqdm draw nothing; get_terminal_size falls back to 80 x 24.
        size = shutil.get_terminal_size()
        self._bar = tqdm(total=micro_batches, desc=f"epoch {epoch}", unit="batch", file=self.stream,
                         ncols=size.columns, nrows=size.lines, leave=True, initial=start)
        self._start, self._samples = time.perf_counter(), 0

    def micro_step(self, epoch, micro_batch, loss, samples):
        if self._bar is None:
            return
        self._samples += samples
        self._postfix["img/s"] = f"{self._samples / max(time.perf_counter() - self._start, 1e-9):.0f}"
        self._bar.set_postfix(self._postfix, refresh=False)
        self._bar.update(1)

    def update(self, record, driver):
        if self._bar is None:
            return
        self._postfix.update(loss=f"{record.loss:.4f}", update=record.total_updates)
        if record.loss_scale is not None:
            self._postfix.update(scale=f"{record.loss_scale:g}", skipped=driver.skipped_updates)
        if record.lr is not None:
            self._postfix["lr"] = f"{record.lr:.3g}"

    def epoch_end(self, epoch, records):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @property
    def replaces_log_lines(self):
        """True when the bar shows progress, so per-update log lines would only interleave with it."""
        return self.active


class GradFlowSaver(DriverCallback):
    """Saves a gradient-flow PNG (see :func:`~mindspore_accum.nets.grad_flow.plot_grad_flow`) every ``every`` updates.

    The gradients are the window's mean, read from ``grad_mean`` before it is cleared.
    Files: ``<directory>/grad_flow_<update>.png``.
    """

    def __init__(self, directory: PathLike, every: int):
        self.every = check_positive_int("grad_flow_every", every)
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.saved = []

    def update(self, record, driver):
        if record.total_updates % self.every:
            return
        from ..nets.grad_flow import plot_grad_flow
        prefix = "grad_sum."
        named = [(p.name[len(prefix):] if p.name.startswith(prefix) else p.name, p.asnumpy())
                 for p in driver.buffer.grad_mean]
        path = os.path.join(self.directory, f"grad_flow_{record.total_updates:06d}.png")
        plot_grad_flow(named, path, title=f"gradient flow, update {record.total_updates}")
        self.saved.append(path)
        logger.info("saved %s", path)
