"""mindcv's zoo at this project's defaults: does each network train, keep its names, and load natively?

For each network, in a process of its own with a time limit, at MNIST's shape
(1 channel, 32x32, 10 classes):

1. the reference: the network built with ``conv_impl="native"`` takes one
   ``nn.TrainOneStepCell`` step; a network that fails here does not build at
   32x32 (too small for its pooling, or mindcv ignores ``in_channels``), which
   is mindcv's matter, not ours, and is listed as such;
2. the default (``conv_impl="auto"``, the CPU fast path) must have the
   reference's parameter names, exactly; take one micro-step of the driver;
   its checkpoint must load strictly into the native network, whose logits
   (batch statistics, dropout off) must then match to 1e-3 of the largest
   logit (another summation order, carried through up to 50 layers).

    python benchmarks/zoo.py                 # one network per family (about 70)
    python benchmarks/zoo.py --all           # every network mindcv registers (275 in 0.3.0)
    python benchmarks/zoo.py resnet18 densenet121

Prints one line per network and the counts; docs/recipes.md has the last run.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


#: Size words in mindcv's names, smallest first: a family's smallest member is the one checked.
SIZES = ("atto", "femto", "pico", "nano", "xx", "x_small", "xs", "tiny", "ti", "mini", "small", "s", "lite", "base",
         "b", "m", "medium", "l", "large", "h", "huge", "xl")


def size_of(name):
    """A sort key for a network's size from its name: its size word, then its numbers (RegNet's in mflops)."""
    rank = min((SIZES.index(word) for word in name.split("_") if word in SIZES), default=len(SIZES) // 2)
    flops = re.search(r"(\d+)(?:_(\d+))?([gm])f$", name)
    if flops:
        whole, tenths, unit = flops.groups()
        return rank, [int(whole) * (1000 if unit == "g" else 1) + int(tenths or 0) * 100]
    return rank, [int(number) for number in re.findall(r"\d+", name)]


def families(names):
    """The smallest network of each family (the name without its sizes), in mindcv's order."""
    chosen = {}
    for name in names:
        head = name.split("_")
        two = head[0] in {"mobilenet", "efficientnet", "regnet", "mlp", "shufflenet"}
        family = "_".join(head[:2]) if two else re.sub(r"\d+$", "", head[0])
        if family not in chosen or size_of(name) < size_of(chosen[family]):
            chosen[family] = name
    return list(chosen.values())


def check_one(name):
    """The checks of the module docstring for ``name``; returns a dict (run in a child process)."""
    os.environ.setdefault("GLOG_v", "3")
    import tempfile

    import mindspore as ms
    import numpy as np
    from mindspore import Tensor, nn

    from mindspore_accum import GradientAccumulation, SaveConfig, load_network_checkpoint, save_network_checkpoint
    from model_zoo_adapters.mindcv_models import create_mindcv_model, disable_dropout

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(0)
    images = Tensor(rng.standard_normal((8, 1, 32, 32)).astype(np.float32))
    labels = Tensor(np.arange(8, dtype=np.int32))
    # log-softmax's loss: some networks start with logits in the thousands, where the CPU's
    # SoftmaxCrossEntropyWithLogits reads inf; a small rate, since the step checks plumbing, not learning.
    loss = nn.CrossEntropyLoss()

    def build(conv_impl):
        ms.set_seed(1)
        return create_mindcv_model(name, 10, in_channels=1, conv_impl=conv_impl)

    try:
        native = build("native")
        nn.TrainOneStepCell(nn.WithLossCell(native, loss), nn.SGD(native.trainable_params(), 0.0))(images, labels)
    except Exception as error:  # noqa: BLE001 - any failure here is the network's own at 32x32
        return {"name": name, "status": "no-32x32", "why": str(error).strip().splitlines()[0][:120]}
    default = build("auto")
    swapped = sum(type(cell).__name__ == "Im2ColConv2d" for _, cell in default.cells_and_names())
    names = [p.name for p in default.get_parameters()]
    if names != [p.name for p in native.get_parameters()]:
        return {"name": name, "status": "RENAMED", "swapped": swapped}
    GradientAccumulation(default, loss, nn.SGD(default.trainable_params(), 1e-4)).train_process(
        1, [(images, labels)], mini_steps=1, save=SaveConfig(ckpt_path=None))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "net.ckpt")
        save_network_checkpoint(default, path)
        load_network_checkpoint(native, path)  # strict: every name, every shape
    for network in (default, native):
        # Batch statistics, dropout off: in eval mode an untrained network's moving statistics blow
        # some of them up (DenseNet-121 reaches logits of 1e11 at 32x32), where float32 gives way.
        disable_dropout(network)
        network.set_train(True)
    ours, theirs = default(images).asnumpy(), native(images).asnumpy()
    # Relative to the largest logit. 1e-3: batch statistics over 8 images carry a summation order's
    # rounding through 50 layers (ResNeXt-50, with only its stem on im2col: 1.0e-4); a wrong
    # convolution moves the logits by their own size.
    gap = float(np.abs(ours - theirs).max() / max(1.0, np.abs(theirs).max()))
    return {"name": name, "status": "ok" if gap <= 1e-3 else "LOGITS", "swapped": swapped, "why": f"gap {gap:.1e}"}


def run_in_child(name, timeout):
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "GLOG_v": "3"})
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        result = json.loads(lines[-1]) if lines else {
            "name": name, "status": "FAILED", "why": (done.stderr.strip().splitlines() or ["?"])[-1][:160]}
    except subprocess.TimeoutExpired:
        result = {"name": name, "status": "timeout"}
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="mindcv names (default: one per family)")
    parser.add_argument("--all", action="store_true", help="every network mindcv registers")
    parser.add_argument("--timeout", type=float, default=180, help="seconds per network")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(check_one(args.child)))
        return
    import mindcv.models
    names = args.names or (mindcv.models.list_models() if args.all else families(mindcv.models.list_models()))
    print(f"{len(names)} networks, {args.timeout:.0f} s each at most, 1x32x32, 10 classes", flush=True)
    counts = {}
    started = time.perf_counter()
    for name in names:
        result = run_in_child(name, args.timeout)
        counts[result["status"]] = counts.get(result["status"], 0) + 1
        extra = f" ({result['swapped']} convolutions on im2col)" if "swapped" in result else ""
        print(f"{name:28s} {result['status']:9s} {result['seconds']:6.1f} s{extra} {result.get('why', '')}",
              flush=True)
    print(f"{sum(counts.values())} networks in {time.perf_counter() - started:.0f} s: "
          + ", ".join(f"{count} {status}" for status, count in sorted(counts.items())))


if __name__ == "__main__":
    main()
