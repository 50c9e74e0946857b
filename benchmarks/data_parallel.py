"""Data parallel: all-reduce calls per window, and time per window, 2 ranks against 1.

    python benchmarks/data_parallel.py [--windows 20] [--batch_size 32] [--mini_steps 4]

Two runs, in one invocation:

* 2 ranks under ``msrun`` (MCCL on loopback on the CPU), each doing
  ``mini_steps`` micro-batches of ``batch_size`` per window;
* 1 process, no communication, doing the same total work per window:
  ``2 x mini_steps`` micro-batches of ``batch_size``.

Both train LeNet5 on one synthetic batch held in memory, after one window of
warm-up (graph compilation). The all-reduce count is read from the compiled
graphs: MindSpore dumps each Cell's final frontend IR
(``MS_DEV_SAVE_GRAPHS``), and the ``AllReduce`` nodes of
``TrainForwardBackward`` (run ``mini_steps`` times per window), ``TrainOptim``
and ``TrainClear`` (once each) are counted.

On a 2-core CPU two ranks share the two cores that one process had to itself:
the timing shows what communication and coordination cost, not scaling.
"""

import argparse
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("GLOG_v", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CELLS = ("TrainForwardBackward", "TrainOptim", "TrainClear")


def count_all_reduce(ir_dir):
    """``{cell name: AllReduce nodes}`` from the final frontend IR (``*_validate_*.ir``) of each compiled Cell."""
    counts = {}
    for path in sorted(glob.glob(os.path.join(ir_dir, "**", "*validate*.ir"), recursive=True)):
        text = open(path, encoding="utf-8", errors="replace").read()
        cell = max(CELLS, key=text.count)
        counts[cell] = len(re.findall(r"= PrimFunc_AllReduce\(|= AllReduce\(", text))
    return counts


def worker(args):
    """One training process: times ``--windows`` windows, counts all-reduces, writes JSON to ``--out``."""
    rank_id = os.environ.get("RANK_ID", "0")
    ir_dir = os.path.join(args.out_dir, f"ir{rank_id}")
    os.environ["MS_DEV_SAVE_GRAPHS"] = "1"  # before MindSpore compiles anything
    os.environ["MS_DEV_SAVE_GRAPHS_PATH"] = ir_dir

    import mindspore as ms
    import numpy as np
    from mindspore import Tensor, nn

    sys.path.insert(0, REPO)
    from mindspore_accum import GradientAccumulation, SaveConfig, init_data_parallel
    from model_zoo_adapters.lenet import LeNet5

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    rank, ranks = init_data_parallel() if args.distributed else (0, 1)
    ms.set_seed(1)
    network = LeNet5()
    model = GradientAccumulation(network, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"),
                                 nn.Momentum(network.trainable_params(), 0.01, 0.9), distributed=args.distributed)
    rng = np.random.default_rng(rank)
    batch = (Tensor(rng.standard_normal((args.batch_size, 1, 32, 32)).astype(np.float32)),
             Tensor(rng.integers(0, 10, args.batch_size).astype(np.int32)))

    def train(windows):
        model.train_process(1, [batch] * (windows * args.mini_steps), mini_steps=args.mini_steps,
                            save=SaveConfig(ckpt_path=None, handle_signals=False),
                            log_every=None)

    train(1)  # compiles the three graphs
    start = time.perf_counter()
    train(args.windows)
    seconds = time.perf_counter() - start
    if rank == 0:
        counts = count_all_reduce(ir_dir)
        with open(args.out, "w", encoding="utf-8") as out:
            json.dump({"ranks": ranks, "seconds_per_window": seconds / args.windows, "all_reduce": counts}, out)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=20, help="timed windows per run")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--mini_steps", type=int, default=4, help="micro-batches per window per rank (2 ranks)")
    parser.add_argument("--as_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--out_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_worker:
        return worker(args)

    work = tempfile.mkdtemp(prefix="dp_bench_")
    here = os.path.abspath(__file__)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    common = ["--as_worker", "--windows", str(args.windows), "--batch_size", str(args.batch_size)]
    try:
        two = os.path.join(work, "two.json")
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "msrun"), "--worker_num=2",
                        "--local_worker_num=2", f"--master_port={free_port()}", f"--log_dir={work}/logs",
                        "--join=True", here, *common, "--mini_steps", str(args.mini_steps), "--distributed",
                        "--out", two, "--out_dir", work], env=env, check=True, capture_output=True)
        one = os.path.join(work, "one.json")
        os.makedirs(os.path.join(work, "single"))
        subprocess.run([sys.executable, here, *common, "--mini_steps", str(2 * args.mini_steps), "--out", one,
                        "--out_dir", os.path.join(work, "single")], env=env, check=True, capture_output=True)
        results = [json.load(open(path, encoding="utf-8")) for path in (two, one)]
    except subprocess.CalledProcessError as failed:
        sys.exit(f"run failed: {' '.join(failed.cmd[:3])}...\n{failed.stderr.decode()[-2000:]}\n(logs in {work})")
    shutil.rmtree(work, ignore_errors=True)

    k, b = args.mini_steps, args.batch_size
    print(f"LeNet5, batch_size {b}; a window is {2 * k * b} samples in both runs; {args.windows} windows timed\n")
    print("| run | micro-batches per window per process | AllReduce in TrainForwardBackward / TrainOptim / "
          "TrainClear | all-reduces per window | s per window |")
    print("|---|---|---|---|---|")
    for name, result, micro in (("2 ranks (msrun)", results[0], k), ("1 process", results[1], 2 * k)):
        counts = result["all_reduce"]
        per_window = micro * counts.get("TrainForwardBackward", 0) + counts.get("TrainOptim", 0) \
            + counts.get("TrainClear", 0)
        print(f"| {name} | {micro} | {counts.get('TrainForwardBackward')} / {counts.get('TrainOptim')} / "
              f"{counts.get('TrainClear')} | {per_window} | {result['seconds_per_window']:.3f} |")
    ratio = results[0]["seconds_per_window"] / results[1]["seconds_per_window"]
    print(f"\ntime ratio, 2 ranks / 1 process: {ratio:.2f} (2 cores shared by 2 processes: communication cost, "
          f"not scaling)")


if __name__ == "__main__":
    main()
