"""Peak memory of accumulation: ResNet-50 at 224x224, each configuration in its own process.

    python benchmarks/memory.py [--updates 2] [--norm group] [--conv_impl auto]

Configurations (the same driver and Cells in each; only the batch and the
window change):

    (a) batch_size 8,  mini_steps 4  - effective batch 32, accumulated
    (b) batch_size 32, mini_steps 1  - effective batch 32, in one step
    (c) batch_size 8,  mini_steps 1  - the micro-batch alone

Targets: (a) <= 0.5 x (b), and (a) <= 1.15 x (c).

Each configuration runs in a fresh process, so that one's peak cannot hide in
another's: on the CPU the figure is the process's peak resident set size
(``getrusage`` ``ru_maxrss``), which includes the MindSpore runtime, the
graph compiler and the model; on a GPU it is MindSpore's own
``mindspore.runtime.max_memory_allocated()``. The data is one synthetic batch
held in memory and fed again and again, so the data pipeline is not measured.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("GLOG_v", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = (("a", 8, 4), ("b", 32, 1), ("c", 8, 1))


def _rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child(args):
    """One configuration; prints one JSON line."""
    import mindspore as ms
    import numpy as np
    from mindspore import Tensor, nn

    sys.path.insert(0, REPO)
    from mindspore_accum import GradientAccumulation, SaveConfig
    from mindspore_accum.run.device import resolve_device_target
    from model_zoo_adapters.resnet import resnet50

    device = resolve_device_target(args.device_target)
    ms.set_device(device)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(1)
    network = resnet50(num_classes=10, norm=args.norm, conv_impl=args.conv_impl)
    optimizer = nn.Momentum(network.trainable_params(), 0.01, 0.9)
    model = GradientAccumulation(network, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"),
                                 optimizer)
    rng = np.random.default_rng(0)
    batch = (Tensor(rng.standard_normal((args.batch_size, 3, 224, 224)).astype(np.float32)),
             Tensor(rng.integers(0, 10, args.batch_size).astype(np.int32)))
    built = _rss_mib()
    start = time.perf_counter()
    model.train_process(1, [batch] * (args.updates * args.mini_steps), mini_steps=args.mini_steps,
                        save=SaveConfig(ckpt_path=None, handle_signals=False), log_every=None)
    seconds = time.perf_counter() - start
    result = {"device": device, "rss_built_mib": built, "rss_peak_mib": _rss_mib(), "seconds": seconds,
              "updates": model.total_updates}
    if device != "CPU":
        result["device_peak_mib"] = ms.runtime.max_memory_allocated() / 2 ** 20
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=2, help="optimizer updates per configuration")
    parser.add_argument("--norm", default="group", choices=("batch", "group"))
    parser.add_argument("--conv_impl", default="auto", choices=("auto", "native", "im2col"))
    parser.add_argument("--device_target", default="auto")
    parser.add_argument("--child", nargs=2, type=int, metavar=("BATCH_SIZE", "MINI_STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.batch_size, args.mini_steps = args.child
        return child(args)

    print(f"ResNet-50, 224x224, norm={args.norm}, conv_impl={args.conv_impl}, {args.updates} updates each, "
          f"one process per configuration")
    results = {}
    for name, batch_size, mini_steps in CONFIGS:
        command = [sys.executable, os.path.abspath(__file__), "--child", str(batch_size), str(mini_steps),
                   "--updates", str(args.updates), "--norm", args.norm, "--conv_impl", args.conv_impl,
                   "--device_target", args.device_target]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"configuration ({name}) failed:\n{done.stderr[-3000:]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  ({name}) done in {results[name]['seconds']:.0f} s", flush=True)

    key = "device_peak_mib" if "device_peak_mib" in results["a"] else "rss_peak_mib"
    what = "peak device memory (max_memory_allocated)" if key == "device_peak_mib" else "peak RSS"
    print(f"\ndevice: {results['a']['device']}, measure: {what}\n")
    print("| config | batch_size | mini_steps | effective batch | RSS after build, MiB | peak, MiB | s per update |")
    print("|---|---|---|---|---|---|---|")
    for name, batch_size, mini_steps in CONFIGS:
        r = results[name]
        print(f"| ({name}) | {batch_size} | {mini_steps} | {batch_size * mini_steps} | {r['rss_built_mib']:.0f} | "
              f"{r[key]:.0f} | {r['seconds'] / r['updates']:.1f} |")
    a, b, c = (results[n][key] for n in "abc")
    print()
    print(f"(a)/(b) = {a / b:.3f}  target <= 0.5   {'met' if a / b <= 0.5 else 'NOT met'}")
    print(f"(a)/(c) = {a / c:.3f}  target <= 1.15  {'met' if a / c <= 1.15 else 'NOT met'}")


if __name__ == "__main__":
    main()
