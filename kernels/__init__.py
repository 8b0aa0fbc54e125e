"""Numba kernels (RNN-T loss, monotonic alignment search). Importing this package compiles nothing."""
