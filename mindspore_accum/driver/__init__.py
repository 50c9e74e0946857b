"""The GradientAccumulation driver: the epoch loop around the step, and its callbacks."""
