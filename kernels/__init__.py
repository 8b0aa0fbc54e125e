"""Numba kernels (RNN-T loss, monotonic alignment search). Importing this package compiles nothing.

The modules imported here need only torch; the numba kernels (rnnt_loss_cpu,
rnnt_loss_cuda) are imported, and compiled or loaded from numba's cache, on first use.
The function `rnnt_loss` is bound here after its module, so `minivox.kernels.rnnt_loss`
is the function, not the module of the same name.
"""

from .rnnt_loss import RNNTLoss, rnnt_loss
from .rnnt_loss_ref import rnnt_loss_reference

__all__ = ["RNNTLoss", "rnnt_loss", "rnnt_loss_reference"]
