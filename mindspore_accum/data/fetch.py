"""Fetching micro-batches in chunks: on a CPU, the pipeline works in bursts between micro-steps, not beside each.

On a CPU the step's kernels and the ``mindspore.dataset`` pipeline's threads share the cores. Fed one
micro-batch at a time, the pipeline wakes beside every micro-step and costs the step more than its own work
(docs/performance.md measures it). Fetched a chunk at a time, it runs alone on every core while no step runs,
then sleeps on its full queues. On a GPU the step leaves the CPU free and the pipeline's work overlaps it, so
there it streams.

The micro-batches and their order are the pipeline's; a run that stops mid-chunk drops only what it fetched
and did not train on, since its position counts micro-batches trained.
"""

import itertools

__all__ = ["CHUNK_MOST", "CHUNK_BYTES", "chunk_for", "in_chunks"]

#: The most micro-batches a chunk holds.
CHUNK_MOST = 64
#: The most bytes a chunk holds: MNIST's micro-batches of 32 fit 64 to a chunk, 224x224 images only a few.
CHUNK_BYTES = 64 << 20


def chunk_for(device_target):
    """The micro-batches to fetch at a time on ``device_target``: a chunk on the CPU, one (streaming) elsewhere."""
    return CHUNK_MOST if device_target == "CPU" else 1


def in_chunks(micro_batches, most=CHUNK_MOST, budget=CHUNK_BYTES):
    """``micro_batches`` as they come, fetched up to ``most`` (and ``budget`` bytes) at a time.

    Reads the epoch once, to its end and not past it: a MindSpore iterator over several epochs ends each
    epoch once, and a chunk that comes back short is the epoch's last. An error of the pipeline comes after
    the micro-batches fetched before it, as it would streaming.
    """
    iterator = iter(micro_batches)
    first = next(iterator, None)
    if first is None:
        return
    yield first
    size = max(1, min(most, budget // max(1, _bytes_of(first))))
    if size == 1:
        yield from iterator
        return
    while True:
        chunk, error = [], None
        try:
            for micro_batch in itertools.islice(iterator, size):
                chunk.append(micro_batch)
        except Exception as caught:  # noqa: BLE001 - raised again below, after what came before it
            error = caught
        yield from chunk
        if error is not None:
            raise error
        if len(chunk) < size:
            return


def _bytes_of(columns):
    return sum(int(getattr(column, "nbytes", 0)) for column in columns)
