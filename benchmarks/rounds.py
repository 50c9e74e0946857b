"""What the timing benchmarks share: their common flags, CPU graph mode, and rotated rounds.

The machine these run on is two shared cores, so no path's time means much
alone. Every path runs once per round, in an order rotated each round so that
none always goes first, and the benchmarks compare per-round ratios.
"""

import argparse
import os
import statistics
import time

import mindspore as ms

__all__ = ["lenet_parser", "set_up_cpu_graph_mode", "time_rotated", "time_cells", "report_ratio"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lenet_parser(doc):
    """An argument parser with the flags every LeNet5 timing takes; add the benchmark's own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default=os.path.join(REPO, "data", "mnist"))
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--mini_steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--conv_impl", default="auto", choices=("auto", "native", "im2col"))
    return parser


def set_up_cpu_graph_mode():
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(1)


def time_rotated(runs, rounds, micro_steps):
    """``{name: [ms per micro-step, one per round]}`` for ``{name: run}``, each run once first to compile and warm."""
    for run in runs.values():
        run()
    names = list(runs)
    times = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runs[name]()
            times[name].append((time.perf_counter() - start) * 1000 / micro_steps)
    return times


def time_cells(cells, batches, rounds):
    """:func:`time_rotated` for train Cells called once per micro-batch, read back once at a round's end."""
    def runner(cell):
        def run():
            for inputs in batches:
                out = cell(*inputs)
            out.asnumpy()  # wait for the device once, at the end of the round
        return run
    return time_rotated({name: runner(cell) for name, cell in cells.items()}, rounds, len(batches))


def report_ratio(times, path, baseline, what="micro-step", quiet=False):
    """Prints each path's median time (unless ``quiet``) and ``path / baseline`` as the median of per-round ratios,
    with quartiles."""
    for name, values in ({} if quiet else times).items():
        print(f"{name:>8}: {statistics.median(values):.2f} ms per {what} (median of {len(values)} rounds)")
    ratios = [t / b for t, b in zip(times[path], times[baseline])]
    low, _, high = statistics.quantiles(ratios, n=4)
    print(f"{path} / {baseline}: {statistics.median(ratios):.3f} (median of per-round ratios; quartiles "
          f"{low:.3f}-{high:.3f})")
