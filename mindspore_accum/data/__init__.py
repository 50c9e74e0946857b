"""Data cut into windows: WindowedDataset, micro-batches at each window's size, positioned at any micro-batch."""
