"""Do the seed recipes learn, and is accumulation the large batch? Three runs per recipe, the same updates.

Each recipe is run by ``scripts/train.py`` as a user runs it, three times, with
the same number of updates and the same learning rate:

- ``accumulated``: micro-batches of b, k to a window (b x k);
- ``large``: one batch of b*k per update (b*k x 1), on the same samples;
- ``small``: batches of b alone (b x 1), on 1/k of the samples so that the
  epochs end at the same updates.

``--eval_every_epoch`` scores the held-out split after each epoch. For each
recipe the script draws train and held-out loss (``docs/img/convergence_<recipe>.png``),
and prints each run's wall time and final held-out figures, and the largest
per-update difference between the accumulated and the large-batch loss, with
the first update where it exceeds 1e-3: the two are the same computation up
to float32 summation order, whose rounding compounds over a run. A recipe
with dropout (EfficientNet) draws other masks for a micro-batch than for a
batch, so its two curves agree in distribution, not to the bit; with
``--no_dropout`` (train.py's flag, passed to every run) they coincide.

MNIST recipes hold out the first 2,000 of the 10,000 test images (so that an
evaluation after every epoch stays cheap); the text recipes hold out pydoc's
held-out topics.

    python benchmarks/convergence.py                      # every recipe (about 30 minutes on 2 cores)
    python benchmarks/convergence.py --recipes lenet bert_tiny
    python benchmarks/convergence.py --recipes efficientnet_b0 --no_dropout --runs accumulated large
"""

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "scripts", "train.py")
MNIST = os.path.join(REPO, "data", "mnist")
HELD_OUT_IMAGES = 2000

#: name: (train.py flags, micro-batch b, window k, samples for the accumulated and large runs, epochs).
RECIPES = {
    # Seed 004: the tutorial's LeNet5 with Momentum(0.01, 0.9).
    "lenet": (["--model", "lenet"], 32, 4, 16384, 8),
    # Seed 000: EfficientNet-B0, GroupNorm(1, C), torch-semantics AdamW 3e-4, decay 0.05, 4 x 32.
    "efficientnet_b0": (["--model", "efficientnet_b0", "--dataset", "mnist", "--image_size", "32", "--norm", "group",
                         "--gn_groups", "1", "--optimizer", "adamw", "--lr", "3e-4", "--weight_decay", "0.05"],
                        32, 4, 4096, 4),
    # Seed 002: BERT on its 110 labelled samples, 8 x 4, every sample every epoch (windows 32, 32, 32, 14).
    "bert_tiny": (["--model", "bert_tiny", "--optimizer", "adamw", "--lr", "1e-3"], 8, 4, None, 15),
    # Seed 003 on MNIST: a ResNet (GroupNorm) with Adam, flips and 90-degree rotations, 8 x 4, from scratch.
    "resnet18": (["--model", "resnet18", "--dataset", "mnist", "--image_size", "32", "--norm", "group",
                  "--optimizer", "adam", "--lr", "1e-3", "--augment", "hflip,rot90"], 8, 4, 1024, 4),
    # A GPT with per-token losses: windows weighted by their valid tokens.
    "gpt_tiny": (["--model", "gpt_tiny", "--weighting", "items", "--optimizer", "adamw", "--lr", "1e-3"],
                 32, 4, 2048, 4),
}
RUNS = ("accumulated", "large", "small")
MNIST_RECIPES = ("lenet", "efficientnet_b0", "resnet18")


def held_out_mnist(directory):
    """The shipped training files and the first HELD_OUT_IMAGES test images, as an MNIST directory."""
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        os.symlink(os.path.join(MNIST, name), os.path.join(directory, name))
    for name, offset, dims in (("t10k-images-idx3-ubyte", 16, (28, 28)), ("t10k-labels-idx1-ubyte", 8, ())):
        with gzip.open(os.path.join(MNIST, name + ".gz")) as packed:
            header, body = packed.read(offset), packed.read()
        header = header[:4] + HELD_OUT_IMAGES.to_bytes(4, "big") + header[8:]
        with open(os.path.join(directory, name), "wb") as raw:
            raw.write(header + body[:HELD_OUT_IMAGES * int(np.prod(dims, dtype=int))])
    return directory


def run_flags(recipe, run, data_path, extra_flags=()):
    """train.py's flags for one run of ``recipe``."""
    flags, batch, window, samples, epochs = RECIPES[recipe]
    flags = [*flags, *extra_flags]
    micro_batch, mini_steps = {"accumulated": (batch, window), "large": (batch * window, 1),
                               "small": (batch, 1)}[run]
    extra = ["--data_path", data_path] if recipe in MNIST_RECIPES else []
    if samples is not None:
        extra += ["--num_samples", str(samples // window if run == "small" else samples)]
    elif run == "small":
        extra += ["--num_samples", str(28)]  # 110 / 4, rounded to whole micro-batches: 4 updates an epoch
    return [*flags, *extra, "--batch_size", str(micro_batch), "--mini_steps", str(mini_steps),
            "--epochs", str(epochs), "--eval_every_epoch", "--no_progress", "--log_every", "1000000"]


def train(recipe, run, data_path, out, extra_flags=()):
    ckpt = os.path.join(out, f"{recipe}-{run}.ckpt")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, TRAIN, *run_flags(recipe, run, data_path, extra_flags), "--ckpt_path", ckpt],
                          capture_output=True, text=True, cwd=out, env=dict(os.environ, GLOG_v="3"))
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{recipe} {run} failed:\n{done.stderr[-3000:]}")
    with open(os.path.join(out, f"{recipe}-{run}_metrics.jsonl"), encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines]
    return {"seconds": seconds, "updates": [r for r in records if r["kind"] == "update"],
            "epochs": [r for r in records if r["kind"] == "epoch"]}


def divergence(first, second, threshold=1e-3):
    """Largest per-update loss difference, and the first update (1-based) where it exceeds ``threshold``."""
    gaps = np.abs(np.array([r["loss"] for r in first]) - np.array([r["loss"] for r in second]))
    over = np.nonzero(gaps > threshold)[0]
    return float(gaps.max()), (int(over[0]) + 1 if over.size else None)


def plot(recipe, results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(7, 4))
    colours = {"accumulated": "tab:blue", "large": "tab:orange", "small": "tab:green"}
    for run, result in results.items():
        updates = [r["total_updates"] for r in result["updates"]]
        axis.plot(updates, [r["loss"] for r in result["updates"]], color=colours[run], alpha=0.6, lw=1,
                  ls=":" if run == "large" else "-", label=f"{run}: train")
        ends = np.cumsum([r["updates"] for r in result["epochs"]])
        axis.plot(ends, [r["test_loss"] for r in result["epochs"]], color=colours[run], marker="o", lw=2,
                  ls="--" if run == "large" else "-", label=f"{run}: held out")
    axis.set_xlabel("update")
    axis.set_ylabel("loss" + (" per token (nats)" if recipe.startswith("gpt") else ""))
    axis.set_title(f"{recipe}: accumulated (b x k) against one large batch (bk x 1) and the small batch (b x 1)",
                   fontsize=8)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def final(result):
    last = result["epochs"][-1]
    figure = (f"held-out accuracy {last['test_accuracy']:.4f}" if "test_accuracy" in last
              else f"held-out {last['test_bits_per_byte']:.3f} bits per byte")
    return f"{figure}, held-out loss {last['test_loss']:.4f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    parser.add_argument("--no_dropout", action="store_true",
                        help="train.py --no_dropout on every run: the accumulated and large curves then coincide "
                             "for networks with dropout too (EfficientNet); the plots are named *_no_dropout.png")
    parser.add_argument("--plots", default=os.path.join(REPO, "docs", "img"), help="where the pictures go")
    args = parser.parse_args()
    extra = ["--no_dropout"] if args.no_dropout else []
    os.makedirs(args.plots, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        data_path = held_out_mnist(tempfile.mkdtemp(dir=out))
        for recipe in args.recipes:
            flags, batch, window, samples, epochs = RECIPES[recipe]
            print(f"{recipe}: {' '.join(flags + extra)}; b={batch}, k={window}, {epochs} epochs", flush=True)
            results = {run: train(recipe, run, data_path, out, extra) for run in args.runs}
            for run, result in results.items():
                print(f"  {run:11s} {len(result['updates']):4d} updates in {result['seconds']:6.1f} s: "
                      f"{final(result)}", flush=True)
            if {"accumulated", "large"} <= set(results):
                largest, first = divergence(results["accumulated"]["updates"], results["large"]["updates"])
                print(f"  accumulated vs large: largest per-update loss difference {largest:.2e}; "
                      + (f"first above 1e-3 at update {first}" if first else "never above 1e-3"), flush=True)
            suffix = "_no_dropout" if args.no_dropout else ""
            plot(recipe, results, os.path.join(args.plots, f"convergence_{recipe}{suffix}.png"))
    print(f"wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
