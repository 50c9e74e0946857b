"""The scripts' argument parser and argument types: every refusal one line, every number bounded.

No MindSpore here, so that plot.py starts at once.
"""

import argparse

__all__ = ["EXIT_BAD_INPUT", "INT32_MAX", "SEED_MAX", "Parser", "positive_int", "non_negative_int", "seed_int",
           "positive_float", "non_negative_float", "ema_decay"]

#: The exit status of bad input, argparse's own.
EXIT_BAD_INPUT = 2


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose refusal is one line and a pointer to ``--help``, not the usage block."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: The largest count a flag takes: the device's counters (micro-steps, samples, updates) are int32.
INT32_MAX = 2 ** 31 - 1
#: The largest seed: MindSpore's and NumPy's seeds are unsigned 32-bit.
SEED_MAX = 2 ** 32 - 1


def _whole_number(minimum, maximum=INT32_MAX):
    """An argparse type: a whole number in ``[minimum, maximum]``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be a whole number from {minimum} to {maximum}, got {text!r}")
        return value
    return parse


positive_int = _whole_number(1)
non_negative_int = _whole_number(0)
seed_int = _whole_number(0, SEED_MAX)


def _float_in(low, high, low_open, what):
    """An argparse type: a number in ``[low, high)`` (or ``(low, high)`` with ``low_open``); ``what`` says so."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not (low < value if low_open else low <= value) or not value < high:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    return parse


positive_float = _float_in(0, float("inf"), True, "a finite number > 0")
#: A momentum, a weight decay.
non_negative_float = _float_in(0, float("inf"), False, "a finite number >= 0")
ema_decay = _float_in(0, 1, False, "a number in [0, 1), e.g. 0.999")
