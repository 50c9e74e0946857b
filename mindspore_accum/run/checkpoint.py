"""Model checkpoints: the bare network's parameters, written atomically, loaded strictly.

The checkpoint holds exactly what a fresh copy of the network needs and nothing
of the training machinery: no ``grad_mean``, no optimizer moments, no wrapper
prefixes. (The tutorial's checkpoint carried its accumulation buffers.)
"""

import json
import logging
import os
from typing import List

import mindspore as ms
import numpy as np

from ..core.validation import PathLike
from .files import (
    CheckpointError,
    check_writable_directory,
    file_or_newest,
    read_checkpoint,
    write_checkpoint_atomically,
)

__all__ = ["DEFAULT_CKPT_PATH", "kind_of", "not_resumable", "DRIVER", "TRAIN_CELL", "CheckpointError",
           "check_ckpt_path", "check_writable_directory", "save_network_checkpoint", "WEIGHTS", "holds_average",
           "head_classes", "load_network_checkpoint", "load_initial_weights", "write_checkpoint_atomically",
           "read_checkpoint", "mismatches", "summarise_names", "load_strictly"]

logger = logging.getLogger(__name__)

#: Where :meth:`GradientAccumulation.train_process` writes by default, as in the tutorial.
DEFAULT_CKPT_PATH = "gradient_accumulation.ckpt"
#: The entry of a training-state checkpoint that holds its JSON record (see :mod:`.state`).
TRAINING_STATE_KEY = "mindspore_accum_training_state"
#: The entry of 0.4's train-Cell checkpoint that held its global micro-step; 0.5 writes a training state instead.
STEP_KEY = "step_num"
#: 0.4's train-Cell checkpoint: the Cell's Parameters under their own names, with ``step_num``.
OLD_TRAIN_CELL = "train-Cell checkpoint of mindspore-accum 0.4"
#: The two kinds of training state, by the engine that writes one and so resumes it (its record's ``kind``).
DRIVER, TRAIN_CELL = "training state", "train-Cell checkpoint"
RESUMED_BY = {DRIVER: "train.py (the driver)", TRAIN_CELL: "train_model.py (Model.train)"}
#: The prefix of the network's tensors in a training-state checkpoint.
NETWORK_PREFIX = "network/"
#: The prefix of the weights' moving average in a training state.
AVERAGE_PREFIX = "ema/ema."
#: Which weights a training state's network is loaded with: the raw ones, or
#: their moving average (``--ema_decay``). A bare model checkpoint holds one set, the averages if the run had them.
WEIGHTS = ("raw", "ema")
#: A refusal names this many tensors of a kind, and counts the rest.
NAMES_SHOWN = 5


def summarise_names(names):
    """``a, b, c, d, e and 85 more``: a message names a few tensors, not hundreds."""
    names = list(names)
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def check_ckpt_path(path):
    """Fails now, not after an hour of training, if ``path`` cannot be written.

    Returns the path. Creates its directory if needed.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"ckpt_path must be a file path, got {path!r} ({type(path).__name__})")
    path = os.fspath(path)
    if not path.endswith(".ckpt"):
        raise ValueError(f"ckpt_path must end with .ckpt (MindSpore's checkpoint suffix), got {path!r}")
    if os.path.isdir(path):
        raise CheckpointError(f"ckpt_path {path!r} is a directory: give a file path such as {path}/model.ckpt")
    check_writable_directory(os.path.dirname(os.path.abspath(path)), "checkpoint directory")
    return path


def save_network_checkpoint(network: ms.nn.Cell, path: PathLike, ema=None) -> str:
    """Writes ``network``'s parameters to ``path`` atomically.

    The file is written under a temporary name in the same directory, flushed
    to disk, then renamed over ``path``: a crash leaves either the old file or
    the new one, never half of one. Parameters that are not finite are refused,
    so a diverged run never replaces a good checkpoint. With ``ema`` (an
    :class:`~mindspore_accum.core.ema.ExponentialMovingAverage`), the trainable
    weights' averages are written under the weights' own names.

    Raises:
        CheckpointError: a parameter is NaN or infinite, or the file cannot be written.
    """
    path = check_ckpt_path(path)
    entries = ema.network_entries(network) if ema is not None else \
        [{"name": p.name, "data": p} for p in network.get_parameters()]
    for entry in entries:
        if not np.isfinite(entry["data"].asnumpy()).all():
            raise CheckpointError(f"not writing {path!r}: parameter {entry['name']!r} is not finite "
                                  f"(training diverged); the existing file, if any, is kept")
    write_checkpoint_atomically(entries if ema is not None else network, path)
    logger.info("saved checkpoint %s", path)
    return path


def kind_of(saved):
    """What a read checkpoint is: a kind of training state (its record's), 0.4's train Cell, or a model checkpoint."""
    if TRAINING_STATE_KEY in saved:
        try:
            kind = json.loads(saved[TRAINING_STATE_KEY]).get("kind", DRIVER)
        except (ValueError, TypeError, AttributeError):  # read_training_state names what is wrong with it
            return DRIVER
        return kind if kind in RESUMED_BY else DRIVER
    return OLD_TRAIN_CELL if STEP_KEY in saved else "model checkpoint"


def not_resumable(path, kind, wanted):
    """The refusal of ``--resume path`` (a ``kind``) by the engine that resumes a ``wanted``: why, and what to do.

    The train Cell resumes the driver's state too; the driver does not resume the train Cell's, which keeps no
    update counts or records for the driver's to continue.
    """
    weights = f"or start afresh from its weights with --init_ckpt {path}"
    if kind == OLD_TRAIN_CELL:
        return CheckpointError(f"--resume {path!r} is a {kind}, whose format 0.5 does not resume: finish that run "
                               f"with mindspore-accum 0.4, {weights}")
    if kind in RESUMED_BY:
        return CheckpointError(f"--resume {path!r} is a {kind}, which {RESUMED_BY[kind]} writes and resumes; this "
                               f"engine resumes a {wanted}, whose update counts and records a {kind} does not keep: "
                               f"resume it with {RESUMED_BY[kind].split()[0]}, {weights}")
    return CheckpointError(f"--resume {path!r} is a model checkpoint (the network alone, with no optimizer state "
                           f"or position): resume from a {wanted}, {weights}")


def mismatches(expected, saved):
    """What differs between two ``{name: shape}`` maps, as phrases; empty when they fit."""
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    wrong_shape = [f"{name} {tuple(saved[name])} in the file vs {tuple(expected[name])} in the model"
                   for name in sorted(set(expected) & set(saved)) if tuple(saved[name]) != tuple(expected[name])]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: " + summarise_names(missing))
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: " + summarise_names(unexpected))
    if wrong_shape:
        shown = "; ".join(wrong_shape[:NAMES_SHOWN])
        problems.append("shape mismatch " + shown + (f"; and {len(wrong_shape) - NAMES_SHOWN} more"
                                                     if len(wrong_shape) > NAMES_SHOWN else ""))
    return problems


def load_network_checkpoint(network: ms.nn.Cell, path: PathLike, weights: str = "raw") -> ms.nn.Cell:
    """Loads the checkpoint at ``path`` into ``network``, all of it or nothing.

    Names and shapes are compared before anything is loaded, so a checkpoint of
    another model is refused with the mismatched parameters named and the
    network left untouched. A training state (``state-*.ckpt`` or ``train/train-*.ckpt``)
    is accepted too: its network's tensors
    are loaded - its raw weights, or with ``weights="ema"`` their moving
    average (the trainable weights; BatchNorm's statistics are the network's).

    Raises:
        CheckpointError: the file is missing, is not a MindSpore checkpoint, is
            corrupt, does not fit ``network``, or holds no average to load.
    """
    path = os.fspath(path)
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    saved = _network_tensors(read_checkpoint(path), network, weights, path)
    problems = mismatches({param.name: param.shape for param in network.get_parameters()},
                          {name: value.shape for name, value in saved.items()})
    if problems:
        raise CheckpointError(f"checkpoint {path!r} does not fit {type(network).__name__}: " + "; ".join(problems))
    load_strictly(network, saved, f"checkpoint {path!r}")
    logger.info("loaded checkpoint %s", path)
    return network


def load_strictly(network, tensors, source, left=()):
    """``load_param_into_net``, strictly: a parameter it did not load, other than those ``left``, is refused."""
    not_loaded, _ = ms.load_param_into_net(network, tensors, strict_load=True)
    not_loaded = [name for name in not_loaded if name not in left]
    if not_loaded:
        raise CheckpointError(f"{source}: parameters not loaded: {summarise_names(not_loaded)}")


def _network_tensors(saved, network, weights, path):
    """The network's tensors of a read checkpoint: a bare one's, or a state's raw or averaged."""
    kind = kind_of(saved)
    if kind in RESUMED_BY:
        raw = {name[len(NETWORK_PREFIX):]: value for name, value in saved.items() if name.startswith(NETWORK_PREFIX)}
    elif kind == OLD_TRAIN_CELL:  # the network's tensors beside the optimizer's and the buffer's, under their names
        if weights == "ema":
            raise CheckpointError(f"{path!r} is a {kind}: with --weights ema, load the model checkpoint beside it, "
                                  f"which holds the averages")
        names = {param.name for param in network.get_parameters()}
        raw = {name: value for name, value in saved.items() if name in names}
    else:
        if weights == "ema":
            raise CheckpointError(f"{path!r} is a model checkpoint: it holds one set of weights (the averages, if "
                                  f"the run had --ema_decay); drop --weights ema")
        return saved
    if weights == "raw":
        logger.info("%s is a %s: loading the network it holds (its raw weights)", path, kind)
        return raw
    average = _averages(saved)
    if not average:
        raise CheckpointError(f"{path!r} holds no moving average (its run had no --ema_decay): drop --weights ema")
    logger.info("%s is a %s: loading the moving average of its weights", path, kind)
    return {**raw, **average}


def _averages(saved):
    return {name[len(AVERAGE_PREFIX):]: value for name, value in saved.items() if name.startswith(AVERAGE_PREFIX)}


def holds_average(path: PathLike) -> bool:
    """True when ``path`` is a training state that holds a moving average of its weights."""
    saved = read_checkpoint(os.fspath(path))
    return kind_of(saved) != "model checkpoint" and bool(_averages(saved))


def head_classes(network: ms.nn.Cell, path: PathLike):
    """The outputs of ``network``'s head (its last ``nn.Dense``) as ``path`` holds it, or None if it has none."""
    head = _head_parameters(network)
    saved = _network_tensors(read_checkpoint(os.fspath(path)), network, "raw", path)
    shapes = [tuple(saved[name].shape) for name in head if name in saved]
    return shapes[0][0] if shapes else None


def load_initial_weights(network: ms.nn.Cell, path: PathLike) -> List[str]:
    """Starts ``network`` from a checkpoint's weights, for fine-tuning; returns the names left to their own init.

    Accepted: a bare checkpoint (this project's, the model zoo's, mindcv's), or
    a training state of either engine (its network); a directory
    stands for its newest ``.ckpt`` file. Every parameter
    of ``network`` must be in the file with its shape - except the head, the
    last ``nn.Dense``, which keeps its own fresh initialisation when its shape
    differs (a new number of classes) and is named in the log. Entries of the
    file that are no parameter of ``network`` (optimizer moments, counters)
    are left out. Nothing is loaded unless everything else fits.

    Raises:
        CheckpointError: the file is unreadable, or a parameter other than the
            head is missing or of another shape: each is named.
    """
    path = file_or_newest(path, refusal="--init_ckpt {path!r} is a directory with no {pattern} file: give a "
                                        "checkpoint")
    saved = _network_tensors(read_checkpoint(path, "initial checkpoint", "pass a model checkpoint or a training "
                                             "state"), network, "raw", path)
    head = _head_parameters(network)
    params = {param.name: param for param in network.get_parameters()}
    fresh = [name for name in head if name in saved and tuple(saved[name].shape) != tuple(params[name].shape)]
    problems = mismatches({name: param.shape for name, param in params.items() if name not in fresh},
                          {name: value.shape for name, value in saved.items()
                           if name in params and name not in fresh})
    if problems:
        raise CheckpointError(f"--init_ckpt {path!r} does not fit {type(network).__name__}: " + "; ".join(problems)
                              + " (only the head, the last Dense layer, may differ: it is then re-initialised)")
    # The head keeps its own initialisation.
    load_strictly(network, {name: saved[name] for name in params if name not in fresh}, f"--init_ckpt {path!r}", fresh)
    if fresh:
        logger.info("initialised from %s; re-initialised the head, whose shape differs: %s", path,
                    ", ".join(f"{name} {tuple(saved[name].shape)} -> {tuple(params[name].shape)}" for name in fresh))
    else:
        logger.info("initialised from %s", path)
    return fresh


def _head_parameters(network):
    """The parameter names of the last ``nn.Dense`` in ``network``: its classifier head."""
    dense = [cell for _, cell in network.cells_and_names() if isinstance(cell, ms.nn.Dense)]
    return [param.name for param in dense[-1].get_parameters()] if dense else []
