"""Data-parallel set-up on MindSpore's own launcher and collectives.

Launch with ``msrun`` (NCCL on GPU, HCCL on Ascend, MCCL on CPU)::

    msrun --worker_num=2 --local_worker_num=2 --master_port=8118 scripts/train.py --distribute ...

``msrun`` starts one process per rank and tells each its role through
environment variables; :func:`init_data_parallel` joins the group
(``mindspore.communication.init()``) and sets the parallel context to
``DATA_PARALLEL``. The gradient all-reduce itself is in
:class:`~mindspore_accum.cells.TrainOptim`, once per window.
"""

import logging
import os

import mindspore as ms

__all__ = ["MSRUN_VARIABLES", "launched_by_msrun", "init_data_parallel", "data_parallel_rank"]

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


def init_data_parallel():
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
