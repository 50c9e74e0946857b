"""Plot a training run's metrics (<checkpoint>_metrics.jsonl): the loss curve and the test accuracy.

    python scripts/plot.py --metrics gradient_accumulation_metrics.jsonl --out plots

Writes loss.png (the window loss per update, with the per-epoch train and test
losses at each epoch's last update), batch.png (each update's samples: the
effective batch over training, which a batch schedule changes) and, when the
run evaluated every epoch, accuracy.png (test accuracy per epoch).
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only; training never imports matplotlib
import matplotlib.pyplot as plt  # noqa: E402

from flags import Parser  # noqa: E402

#: The fields each kind of record must have for the plots.
REQUIRED = {"update": ("epoch", "total_updates", "loss"), "epoch": ("epoch", "train_loss")}


def read_metrics(path):
    """(update records, epoch records) of a metrics file; a line cut short by a kill, at the end, is skipped."""
    updates, epochs = [], []
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.readlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a text file ({error.reason} at byte {error.start}): give the "
                         f"<checkpoint>_metrics.jsonl train.py wrote") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines) and not line.endswith("\n"):  # a killed run's last line: the rest is whole
                print(f"plot.py: skipped {path}:{number}, cut short (a killed run's last line)", file=sys.stderr)
                continue
            raise ValueError(f"{path}:{number}: not a JSON line ({error.msg})") from None
        if not isinstance(record, dict) or record.get("kind") not in REQUIRED:
            raise ValueError(f"{path}:{number}: not a metrics record (a JSON object whose kind is update or epoch)")
        missing = [field for field in REQUIRED[record["kind"]] if field not in record]
        if missing:
            raise ValueError(f"{path}:{number}: a {record['kind']} record without {', '.join(missing)}")
        (updates if record["kind"] == "update" else epochs).append(record)
    if not updates:
        raise ValueError(f"{path} has no update records: is it a <checkpoint>_metrics.jsonl written by train.py?")
    return updates, [e for e in epochs if e["train_loss"] is not None]


def plot_loss(updates, epochs, path):
    figure, axes = plt.subplots(figsize=(8, 4.5))
    axes.plot([u["total_updates"] for u in updates], [u["loss"] for u in updates], lw=0.8, alpha=0.6,
              label="window loss (per update)")
    last_update = {}
    for u in updates:
        last_update[u["epoch"]] = u["total_updates"]
    at = [last_update[e["epoch"]] for e in epochs]
    axes.plot(at, [e["train_loss"] for e in epochs], "o-", label="train loss (epoch mean)")
    if any("test_loss" in e for e in epochs):
        axes.plot(at, [e.get("test_loss") for e in epochs], "s-", label="test loss")
    axes.set_xlabel("optimizer update")
    axes.set_ylabel("loss")
    axes.set_yscale("log")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_batch(updates, path):
    """Each update's window in samples against the samples consumed; returns the ``(x, y)`` drawn."""
    x = [u.get("samples_seen", i) for i, u in enumerate(updates, start=1)]
    y = [u["samples"] for u in updates]
    figure, axes = plt.subplots(figsize=(8, 3.5))
    axes.step(x, y, where="post")
    axes.set_xlabel("samples consumed")
    axes.set_ylabel("samples in the update's window")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return x, y


def plot_accuracy(epochs, path):
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot([e["epoch"] for e in epochs], [e["test_accuracy"] for e in epochs], "o-")
    axes.set_xlabel("epoch")
    axes.set_ylabel("test accuracy")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main():
    parser = Parser(description=__doc__)
    parser.add_argument("--metrics", default="gradient_accumulation_metrics.jsonl",
                        help="the <checkpoint>_metrics.jsonl train.py wrote beside its checkpoint")
    parser.add_argument("--out", default="plots", help="directory for the PNG files")
    args = parser.parse_args()
    try:
        updates, epochs = read_metrics(args.metrics)
        os.makedirs(args.out, exist_ok=True)
    except (OSError, ValueError) as error:
        print(f"plot.py: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    written = [os.path.join(args.out, "loss.png")]
    plot_loss(updates, epochs, written[0])
    if all("samples" in u for u in updates):
        written.append(os.path.join(args.out, "batch.png"))
        plot_batch(updates, written[-1])
    with_accuracy = [e for e in epochs if "test_accuracy" in e]
    if with_accuracy:
        written.append(os.path.join(args.out, "accuracy.png"))
        plot_accuracy(with_accuracy, written[-1])
    print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
