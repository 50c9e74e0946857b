"""The tiny language model's default run: tokens per second, and held-out bits per byte against a unigram baseline.

Runs ``scripts/train.py --model gpt_tiny`` (with its defaults, plus any flags
given after ``--``) and ``scripts/eval.py`` on its checkpoint, as a user does,
and prints:

- tokens (valid bytes, the items the windows were weighted by) trained per
  second of the whole run, from its metrics file and its wall time;
- the held-out bits per byte eval.py reports;
- the unigram baseline: the bits per byte of the training text's byte
  frequencies (add-one smoothed) on the same held-out labels. A model that
  learned nothing beyond byte frequencies scores about this.

    python benchmarks/text_lm.py [--out DIR] [-- --epochs 2 ...]
"""

import argparse
import ast
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from model_zoo_adapters import text  # noqa: E402


def unigram_bits_per_byte(data_path, seq_len):
    """Add-one smoothed byte frequencies of the training labels, scored on the held-out labels (bits per byte)."""
    def labels(train):
        rows = text._lm_rows(text.read_corpus(data_path, train), seq_len)
        return np.concatenate([label for _, label in rows])
    counts = np.bincount(labels(True), minlength=text.VOCAB_SIZE) + 1.0
    probabilities = counts / counts.sum()
    held_out = labels(False)
    return float(-np.log2(probabilities[held_out]).mean()), len(held_out)


def run(script, *args, cwd):
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", script), *map(str, args)], cwd=cwd,
                            capture_output=True, text=True, env=dict(os.environ, GLOG_v="3"))
    if result.returncode:
        sys.exit(f"{script} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="where the run writes (default: a temporary directory)")
    parser.add_argument("train_flags", nargs="*", help="more train.py flags, after --")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="text_lm_")
    flags = ["--model", "gpt_tiny", "--no_progress", "--ckpt_path", "gpt.ckpt", *args.train_flags]
    print(f"train.py {' '.join(flags)}  (in {out})", flush=True)
    start = time.perf_counter()
    run("train.py", *flags, cwd=out)
    seconds = time.perf_counter() - start
    with open(os.path.join(out, "gpt_metrics.jsonl"), encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    updates = [r for r in records if r["kind"] == "update"]
    tokens = sum(r["items"] for r in updates)
    evaluated = run("eval.py", "--model", "gpt_tiny", "--ckpt_path", "gpt.ckpt", cwd=out)
    scores = ast.literal_eval(evaluated.strip().splitlines()[-1])
    baseline, held_out = unigram_bits_per_byte("pydoc", 64)
    print(f"updates: {len(updates)}, epochs: {updates[-1]['epoch']}, first window loss {updates[0]['loss']:.3f}, "
          f"last {updates[-1]['loss']:.3f} nats per byte")
    print(f"wall time: {seconds:.0f} s, tokens trained: {tokens}, tokens per second: {tokens / seconds:.0f} "
          f"(the whole run: start-up, compilation, epoch evaluations and saving included)")
    print(f"held-out bits per byte: {scores['BitsPerByte']:.3f} (gpt_tiny), {baseline:.3f} (unigram baseline, "
          f"{held_out} held-out bytes), {math.log2(text.VOCAB_SIZE - 2):.3f} (uniform over 256 bytes)")


if __name__ == "__main__":
    main()
