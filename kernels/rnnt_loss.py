"""RNN-T loss for training: input validation, autograd Function and CPU/CUDA dispatch.

`rnnt_loss` has the arguments and meaning of `torchaudio.functional.rnnt_loss`, plus
`fastemit_lambda` (FastEmit, as NeMo implements it). The kernels compute the gradient
during the forward pass (it falls out of the same alphas and betas), so backward only
scales it by grad_output. The numba kernels are imported on first use:

    rnnt_loss_ref.py   readable pure-torch recursion (the test oracle)
    rnnt_loss_cpu.py   numba CPU kernels (parallel over batch and frames)
    rnnt_loss_cuda.py  numba CUDA kernels (anti-diagonal recursions, one thread per u)

Shape letters: B batch, T frames, U target labels, V classes incl. blank.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

REDUCTIONS = ("none", "sum", "mean")
_UPCAST = (torch.float16, torch.bfloat16)  # computed in float32, gradient returned in the input dtype
SMALL_PROBLEM = 1 << 18  # logits elements (1 MiB of float32) below which the CPU kernel uses one thread


def _validate(
    logits: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int,
    reduction: str,
    fastemit_lambda: float,
) -> int:
    """Raise ValueError on any malformed input; return blank as an index in [0, V)."""
    if not isinstance(logits, Tensor) or logits.ndim != 4:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a 4-D tensor [B, T, U+1, V], got {got}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    B, T, U1, V = logits.shape
    if B == 0 or T == 0 or V == 0:
        raise ValueError(f"logits [B, T, U+1, V] must have B, T, V >= 1, got {tuple(logits.shape)}")
    for name, x, ndim in (("targets", targets, 2), ("logit_lengths", logit_lengths, 1),
                          ("target_lengths", target_lengths, 1)):
        if not isinstance(x, Tensor) or x.ndim != ndim or x.shape[0] != B:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            want = "[B, max target length]" if ndim == 2 else "[B]"
            raise ValueError(f"{name} must have shape {want} with B={B}, got {got}")
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, got {x.dtype}")
        if x.device != logits.device:
            raise ValueError(f"{name} is on {x.device} but logits are on {logits.device}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not -V <= blank < V:
        raise ValueError(f"blank must be in [-V, V) = [{-V}, {V}), got {blank}")
    blank = blank % V
    if not fastemit_lambda >= 0.0:
        raise ValueError(f"fastemit_lambda must be >= 0, got {fastemit_lambda}")

    # One device->host transfer for all the length statistics.
    logit_min, logit_max, target_min, target_max = torch.stack([
        logit_lengths.min(), logit_lengths.max(), target_lengths.min(), target_lengths.max()
    ]).tolist()
    if logit_min < 1:
        raise ValueError(f"logit_lengths must be >= 1, got min {logit_min}")
    if logit_max != T:
        raise ValueError(f"logits have T={T} frames but max(logit_lengths) = {logit_max}; they must match")
    if target_min < 0:
        raise ValueError(f"target_lengths must be >= 0, got min {target_min}")
    if target_max + 1 != U1:
        raise ValueError(f"logits have U+1={U1} but max(target_lengths)+1 = {target_max + 1}; they must match")
    if target_max > targets.shape[1]:
        raise ValueError(f"target_lengths reach {target_max} but targets have only {targets.shape[1]} columns")

    # Targets inside each utterance's length must be real classes other than blank.
    inside = torch.arange(targets.shape[1], device=targets.device) < target_lengths[:, None]  # [B, U]
    bad = inside & ((targets < 0) | (targets >= V) | (targets == blank))  # [B, U]
    if bool(bad.any()):
        b, u = (int(i) for i in bad.nonzero()[0])
        value = int(targets[b, u])
        raise ValueError(f"targets must be in [0, {V}) and != blank ({blank}); got targets[{b}, {u}] = {value}")
    return blank


def _cost_and_grad(logits, targets, logit_lengths, target_lengths, blank, clamp, fastemit_lambda,
                   fused_log_softmax, grad_scale, grads) -> Tensor:
    """Run the kernel for logits' device. Returns costs [B] float64; fills grads if given."""
    targets = targets.to(torch.int32).contiguous()
    logit_lengths = logit_lengths.to(torch.int32).contiguous()
    target_lengths = target_lengths.to(torch.int32).contiguous()
    if logits.is_cuda:
        from . import rnnt_loss_cuda

        return rnnt_loss_cuda.cost_and_grad_torch(
            logits, targets, logit_lengths, target_lengths, blank, clamp, fastemit_lambda,
            fused_log_softmax, grad_scale, grads)
    if logits.device.type != "cpu":
        raise ValueError(f"rnnt_loss runs on CPU or CUDA tensors, got device {logits.device}")

    import numba

    from . import rnnt_loss_cpu

    # Follow torch's thread setting (e.g. 1 per process under torchrun), up to numba's pool size;
    # small problems run on one thread: waking the pool costs more than it saves (and far more
    # when another process holds a core: the barrier then waits for a descheduled thread).
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(1 if logits.numel() < SMALL_PROBLEM else max(1, threads))
    costs = rnnt_loss_cpu.cost_and_grad(
        logits.numpy(), targets.numpy(), logit_lengths.numpy(), target_lengths.numpy(), blank,
        clamp=clamp, fastemit_lambda=fastemit_lambda, fused_log_softmax=fused_log_softmax,
        grad_scale=grad_scale, grads=None if grads is None else grads.numpy())
    return torch.from_numpy(costs)


def _empty_like(x: Tensor) -> Tensor:
    """Uninitialised buffer like x. On the CPU it comes from numpy, which asks Linux for
    transparent huge pages on large arrays (torch does not by default): writing a fresh
    83 MB gradient then takes ~40 page faults instead of ~20,000."""
    if x.device.type != "cpu":
        return torch.empty_like(x)
    import numpy as np

    return torch.from_numpy(np.empty(x.shape, dtype=x.numpy().dtype))


def _costs_and_grads(logits, targets, logit_lengths, target_lengths, blank, clamp, fused_log_softmax,
                     fastemit_lambda, grad_scale, with_grad):
    """Costs [B] float64 and (if with_grad) grad_scale * clamp(d cost_b / d logits) in logits' dtype."""
    x = logits.detach()
    x = (x.float() if x.dtype in _UPCAST else x).contiguous()  # [B, T, U+1, V], upcast once
    grads = _empty_like(x) if with_grad else None
    costs = _cost_and_grad(x, targets, logit_lengths, target_lengths, blank, clamp, fastemit_lambda,
                           fused_log_softmax, grad_scale, grads)
    return costs, None if grads is None else grads.to(logits.dtype)


class _RNNTLossFunction(torch.autograd.Function):
    """costs = RNN-T loss; the gradient is made in forward and only scaled in backward."""

    @staticmethod
    def forward(ctx, logits, targets, logit_lengths, target_lengths, blank, clamp, reduction,
                fused_log_softmax, fastemit_lambda):
        # The usual loss.backward() passes grad_output = 1, so the mean's 1/B goes in now and
        # backward has nothing left to do; another grad_output costs one more pass there.
        grad_scale = 1.0 / logits.shape[0] if reduction == "mean" else 1.0
        ctx.kernel_args = (blank, clamp, fused_log_softmax, fastemit_lambda, grad_scale)
        ctx.reduction = reduction
        ctx.save_for_backward(logits, targets, logit_lengths, target_lengths)
        costs, ctx.grads = _costs_and_grads(logits, targets, logit_lengths, target_lengths,
                                            *ctx.kernel_args, with_grad=ctx.needs_input_grad[0])
        if reduction == "sum":
            costs = costs.sum()
        elif reduction == "mean":
            costs = costs.mean()
        return costs.to(logits.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        # Hand the buffer over (autograd can then adopt it as .grad without a copy). A second
        # backward through a retained graph (retain_graph=True, gradcheck) recomputes it.
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            _, grads = _costs_and_grads(*ctx.saved_tensors, *ctx.kernel_args, with_grad=True)
        scale = grad_output.view(-1, 1, 1, 1) if ctx.reduction == "none" else grad_output  # [B,1,1,1] or []
        if grads.is_cuda or not bool((scale == 1).all()):
            grads.mul_(scale.to(grads.dtype))
        return grads, None, None, None, None, None, None, None, None


def rnnt_loss(
    logits: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = -1,
    clamp: float = -1.0,
    reduction: str = "mean",
    fused_log_softmax: bool = True,
    fastemit_lambda: float = 0.0,
) -> Tensor:
    """RNN Transducer loss (Graves 2012), as `torchaudio.functional.rnnt_loss`, on CPU or CUDA.

    Args:
        logits: [B, T, U+1, V] joint network outputs (float16/bfloat16/float32/float64;
            half types are computed in float32). Log-probabilities if fused_log_softmax=False.
        targets: [B, >=U] integer labels, padded with anything past target_lengths.
        logit_lengths: [B] integer frames per utterance; max must equal T, min >= 1.
        target_lengths: [B] integer labels per utterance; max must equal U.
        blank: blank class index; negative counts from the end (default -1: the last class).
        clamp: if > 0, every element of each utterance's gradient d(cost_b)/d(logits) is
            clamped to [-clamp, clamp] before being scaled by grad_output.
        reduction: "none" -> costs [B]; "sum" -> their sum; "mean" -> their mean over the
            batch (sum / B, not per token).
        fused_log_softmax: True: the loss applies log_softmax over V itself. False: logits
            are already log-probabilities and the gradient flows only into the blank and
            target entries (torchaudio's convention).
        fastemit_lambda: FastEmit weight (Yu et al. 2021) as in NeMo: the gradient through
            label emissions is scaled by (1 + lambda) and the reported cost is
            (1 + lambda) * NLL. 0 gives the plain RNN-T loss.

    Returns:
        costs [B] (reduction "none") or a scalar, in logits' dtype. A NaN/inf in an
        utterance's logits inside its lengths gives that utterance a NaN/inf cost and
        gradient and leaves the other utterances untouched.
    """
    blank = _validate(logits, targets, logit_lengths, target_lengths, blank, reduction, fastemit_lambda)
    return _RNNTLossFunction.apply(logits, targets, logit_lengths, target_lengths, blank,
                                   float(clamp), reduction, bool(fused_log_softmax), float(fastemit_lambda))


class RNNTLoss(torch.nn.Module):
    """Module form of `rnnt_loss`; the constructor takes its keyword arguments."""

    def __init__(self, blank: int = -1, clamp: float = -1.0, reduction: str = "mean",
                 fused_log_softmax: bool = True, fastemit_lambda: float = 0.0):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if not fastemit_lambda >= 0.0:
            raise ValueError(f"fastemit_lambda must be >= 0, got {fastemit_lambda}")
        self.blank = blank
        self.clamp = clamp
        self.reduction = reduction
        self.fused_log_softmax = fused_log_softmax
        self.fastemit_lambda = fastemit_lambda

    def forward(self, logits: Tensor, targets: Tensor, logit_lengths: Tensor, target_lengths: Tensor) -> Tensor:
        """logits [B, T, U+1, V], targets [B, U], lengths [B] -> loss (see `rnnt_loss`)."""
        return rnnt_loss(logits, targets, logit_lengths, target_lengths, blank=self.blank,
                         clamp=self.clamp, reduction=self.reduction,
                         fused_log_softmax=self.fused_log_softmax, fastemit_lambda=self.fastemit_lambda)

    def extra_repr(self) -> str:
        return (f"blank={self.blank}, clamp={self.clamp}, reduction={self.reduction!r}, "
                f"fused_log_softmax={self.fused_log_softmax}, fastemit_lambda={self.fastemit_lambda}")
