"""Cost of ``weighting="items"`` against ``"samples"``: the same micro-steps of the same network, in one run.

Two ``GradientAccumulationCell``s over twin gpt_tiny networks run the same
micro-batches of the pydoc text (batch 8 by default, up to 64 bytes, padded
per micro-batch), held in memory so the pipeline is not measured. Each round calls
each Cell once per micro-batch, in an order rotated every round; the figure is
the median of the per-round ratios (the machine is two shared cores). The
target is items <= 1.02 x samples: counting the labels and guarding an empty
micro-batch are a few scalar operations against a transformer's micro-step.

    python benchmarks/weighting.py [--rounds 21] [--micro_batches 32] [--batch_size 8]
"""

import argparse
import os
import sys

os.environ.setdefault("GLOG_v", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mindspore import nn  # noqa: E402

from mindspore_accum import GradientAccumulationCell  # noqa: E402
from model_zoo_adapters import text  # noqa: E402
from model_zoo_adapters.transformer import TokenCrossEntropy, create_text_model  # noqa: E402
from rounds import report_ratio, set_up_cpu_graph_mode, time_cells  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--micro_batches", type=int, default=32)
    parser.add_argument("--mini_steps", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=8, help="sequences per micro-batch (train.py's is 32)")
    args = parser.parse_args()
    set_up_cpu_graph_mode()
    dataset = text.create_lm_dataset("pydoc", args.batch_size, train=True, seq_len=64, shuffle=False)
    batches = [batch for _, batch in zip(range(args.micro_batches), dataset.create_tuple_iterator(num_epochs=1))]

    cells = {}
    first = None
    for weighting in ("samples", "items"):
        network = create_text_model("gpt_tiny", max_len=64)
        if first is None:
            first = network
        else:
            for mine, theirs in zip(network.get_parameters(), first.get_parameters()):
                mine.set_data(theirs.data.copy())
        cells[weighting] = GradientAccumulationCell(
            nn.WithLossCell(network, TokenCrossEntropy()), nn.AdamWeightDecay(network.trainable_params(), 1e-3),
            args.mini_steps, micro_batches_per_epoch=len(batches), weighting=weighting)

    report_ratio(time_cells(cells, batches, args.rounds), "items", "samples")


if __name__ == "__main__":
    main()
