"""The accumulation itself: the buffer and the three Cells, the step and when a window closes, window and
batch sizes, the Accumulator, precision, the EMA, optimizers and weighting."""
