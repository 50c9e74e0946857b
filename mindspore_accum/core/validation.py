"""Argument checks shared by the Cells, the driver and the adapters.

Every message names the argument, the bad value and the fix, in one line, so
that the command-line scripts can print it as it is.
"""

import numbers
import os
from typing import Union

__all__ = ["check_positive_int", "check_positive_float", "check_choice", "PathLike"]

#: What a path argument accepts: a string or an ``os.PathLike``.
PathLike = Union[str, "os.PathLike[str]"]


def check_positive_int(name, value, example=None):
    """Returns ``value`` if it is an int >= 1 (``bool`` is refused); raises otherwise.

    Raises:
        TypeError: ``value`` is not an integer (e.g. 2.5, "4", True).
        ValueError: ``value`` is an integer below 1.
    """
    example = f", e.g. {name}={example}" if example is not None else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a whole number >= 1, got {value!r} ({type(value).__name__}){example}")
    if value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}{example}")
    return int(value)


def check_positive_float(name, value, alternative=None):
    """Returns ``value`` as a float if it is a finite real number > 0 (``bool`` is refused); raises otherwise.

    ``alternative`` names what else is accepted, e.g. "or None for no clipping".
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < float("inf"):
        also = f" ({alternative})" if alternative else ""
        raise ValueError(f"{name} must be a finite number > 0{also}, got {value!r}")
    return float(value)


def check_choice(name, value, choices):
    """Returns ``value`` if it is one of ``choices``; raises ``ValueError`` naming them otherwise."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
