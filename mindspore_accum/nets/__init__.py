"""Helpers for networks: BatchNorm to GroupNorm, swapping layers, metrics, gradient flow."""
