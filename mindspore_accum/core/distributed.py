"""Data-parallel set-up on MindSpore's own launcher and collectives.

Launch with ``msrun`` (NCCL on GPU, HCCL on Ascend, MCCL on CPU)::

    msrun --worker_num=2 --local_worker_num=2 --master_port=8118 scripts/train.py --distribute ...

``msrun`` starts one process per rank and tells each its role through
environment variables; :func:`init_data_parallel` joins the group
(``mindspore.communication.init()``) and sets the parallel context to
``DATA_PARALLEL``. The gradient all-reduce itself is in
:class:`~mindspore_accum.core.cells.TrainOptim`, once per window.
"""

import ctypes
import json
import logging
import os
import signal
import sys
from typing import Tuple

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

__all__ = ["MSRUN_VARIABLES", "launched_by_msrun", "init_data_parallel", "data_parallel_rank", "check_same_settings"]

logger = logging.getLogger(__name__)

#: Environment variables ``msrun`` gives every worker it starts.
MSRUN_VARIABLES = ("MS_ROLE", "MS_WORKER_NUM", "MS_SCHED_HOST", "MS_SCHED_PORT")


def launched_by_msrun(environ=None):
    """True if this process was started by ``msrun``: as a worker, or as the scheduler.

    ``msrun`` runs the script in its scheduler process too (``MS_ROLE=MS_SCHED``),
    where ``init()`` serves the cluster until the workers are done.
    """
    environ = os.environ if environ is None else environ
    return all(name in environ for name in MSRUN_VARIABLES) and environ["MS_ROLE"] in ("MS_WORKER", "MS_SCHED")


def init_data_parallel() -> Tuple[int, int]:
    """Joins the ranks started by ``msrun`` and sets ``DATA_PARALLEL``; returns ``(rank, ranks)``.

    Set the device (``ms.set_device``) first.

    Raises:
        ValueError: this process was not started by ``msrun``.
    """
    if not launched_by_msrun():
        missing = [name for name in MSRUN_VARIABLES if name not in os.environ]
        raise ValueError(f"--distribute needs MindSpore's launcher, and this process has no "
                         f"{'/'.join(missing) or 'MS_ROLE=MS_WORKER'} in its environment: run it as "
                         f"'msrun --worker_num=2 --local_worker_num=2 --master_port=8118 <script> --distribute ...', "
                         f"or drop --distribute")
    from mindspore.communication import get_group_size, get_rank, init
    _end_with_the_launcher()
    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL)
    rank, ranks = get_rank(), get_group_size()
    logger.debug("data parallel: rank %d of %d", rank, ranks)
    return rank, ranks


def data_parallel_rank():
    """``(rank, ranks)`` of an initialised group; refuses if ``init()`` has not run."""
    from mindspore.communication import get_group_size, get_rank
    try:
        return get_rank(), get_group_size()
    except RuntimeError as error:
        raise ValueError(f"distributed=True needs the ranks joined first: call "
                         f"mindspore_accum.init_data_parallel() (or mindspore.communication.init()) in a process "
                         f"started by msrun ({str(error).splitlines()[0]})") from None


#: Room for one rank's settings, as JSON bytes, in the all-gather.
_SETTINGS_BYTES = 4096


class _AllGather(nn.Cell):
    def __init__(self):
        super().__init__()
        self.gather = ops.AllGather()

    def construct(self, x):
        return self.gather(x)


def check_same_settings(settings):
    """Refuses, on every rank, a run whose ``settings`` (a JSON-able dict) differ between ranks.

    One all-gather of every rank's settings, at start: ranks launched with
    different flags (two msrun launches, one per node) would otherwise train
    on unequal windows until an all-reduce fails minutes later. Every rank
    compares every rank with rank 0, in the same order, so every rank names
    the same first difference.

    Raises:
        ValueError: ``"<name> is <value> on rank <r> but <value> on rank 0: ..."`` (the scripts' names are
            their flags, ``--mini_steps``).
    """
    rank, ranks = data_parallel_rank()
    encoded = np.frombuffer(json.dumps(settings, sort_keys=True).encode(), np.uint8)
    if encoded.size > _SETTINGS_BYTES:
        raise ValueError(f"settings take {encoded.size} bytes as JSON, more than the {_SETTINGS_BYTES} compared")
    padded = np.zeros(_SETTINGS_BYTES, np.int32)  # int32: a type every collective backend sums and gathers
    padded[:encoded.size] = encoded
    rows = _AllGather()(Tensor(padded)).asnumpy().reshape(ranks, _SETTINGS_BYTES)
    every = [json.loads(bytes(row[row != 0].astype(np.uint8)).decode()) for row in rows]  # JSON has no NUL
    for other in range(1, ranks):
        for name in sorted(set(every[0]) | set(every[other])):
            if every[0].get(name) != every[other].get(name):
                raise ValueError(f"{name} is {every[other].get(name)!r} on rank {other} but "
                                 f"{every[0].get(name)!r} on rank 0: launch every rank with the same flags")
    logger.debug("rank %d of %d: settings agree with every rank", rank, ranks)


#: Linux's prctl option: the signal this process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def _end_with_the_launcher():
    """Asks the kernel to send this worker SIGTERM when ``msrun``, its parent, dies.

    msrun puts each worker in a process group of its own. On SIGINT it ends
    them, but on SIGTERM (a job scheduler's stop, ``kill``) it exits alone, and
    its workers went on training as orphans. Linux only; elsewhere nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return
    launcher = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl in this C library
        return
    if os.getppid() != launcher:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
