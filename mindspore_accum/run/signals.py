"""What stops a run, on both engines: SIGINT and SIGTERM at a micro-step boundary, and divergence.

Divergence: a window whose loss or gradient is not finite, with no dynamic
loss scaler to skip it, stops the run with :class:`NonFiniteError`, and
nothing is saved after it: the driver raises it when it closes the window,
and on the Model path ``ResumableLossMonitor`` when the Cell outputs the NaN
it gives for such a window.

A killed job on a shared GPU should lose nothing. While training,
:class:`StopSignals` turns the first SIGINT or SIGTERM into a request: the
micro-step in flight finishes, the driver saves the training state and raises
:class:`TrainingInterrupted`, whose message says how to resume. A second
signal aborts at once, as users expect of a second Ctrl-C.

MindSpore 2.10 installs a C-level SIGINT handler of its own at every graph
run (``GraphScheduler::Run`` calls ``RegisterGlobalSignalHandler``), and that
handler turns SIGINT into a SIGTERM to the process; Python's
``signal.getsignal`` does not see it. So the driver calls
:meth:`StopSignals.rearm` after every graph run. A Ctrl-C that lands *during*
a graph run still stops training cleanly - through the SIGTERM handler - and
is then reported as SIGTERM.
"""

import logging
import signal
import threading

__all__ = ["StopSignals", "TrainingInterrupted", "AbortedBySignal", "NonFiniteError"]

logger = logging.getLogger(__name__)


class NonFiniteError(ArithmeticError):
    """Training diverged: a window's loss or gradient was NaN or infinite.

    The message gives the epoch and micro-batch, and the saved state that is
    kept (nothing is saved after the divergence).
    """


class TrainingInterrupted(Exception):
    """Training stopped on a signal; the state was saved to ``state_path`` (None if there was nowhere to save).

    Attributes:
        signum: the signal number.
        state_path: the training-state file to resume from, or None.
    """

    def __init__(self, signum, state_path, where):
        self.signum = signum
        self.state_path = state_path
        name = signal.Signals(signum).name
        if state_path is None:
            message = f"interrupted by {name} at {where}; no training state was saved (no state directory given)"
        else:
            message = f"interrupted by {name} at {where}; training state saved to {state_path}: resume from it"
        super().__init__(message)


class AbortedBySignal(KeyboardInterrupt):
    """A second signal aborted at once, saving nothing more; ``signum`` is that signal (a shell exits 128 + it)."""

    def __init__(self, signum):
        self.signum = signum
        super().__init__(f"aborted by a second signal, {signal.Signals(signum).name}")


class StopSignals:
    """A context manager that records SIGINT/SIGTERM instead of dying mid-step.

    Signal handlers can only be installed from the main thread; elsewhere this
    does nothing and the signals keep their usual effect.

    Attributes:
        signum: the first signal received, or None.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled=True):
        self.enabled = bool(enabled) and threading.current_thread() is threading.main_thread()
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            # The second signal: stop now, without saving. Any signal, not only SIGINT:
            # MindSpore may deliver the second Ctrl-C as SIGTERM too. A KeyboardInterrupt, as Python's own.
            raise AbortedBySignal(signum)
        self.signum = signum
        logger.warning("%s received%s: finishing the micro-step in flight, then saving the training state "
                       "(Ctrl-C again to abort without saving)", signal.Signals(signum).name,
                       " (a Ctrl-C during a MindSpore graph run arrives as SIGTERM)"
                       if signum == signal.SIGTERM else "")

    def __enter__(self):
        if self.enabled:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def rearm(self):
        """Takes SIGINT back from a handler installed behind Python's back (MindSpore's graph compiler)."""
        if self._previous:
            signal.signal(signal.SIGINT, self._handle)

    def poll(self):
        """The first signal received, or None; SIGINT taken back first (:meth:`rearm`): call it after graph runs."""
        self.rearm()
        return self.signum

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        return False
