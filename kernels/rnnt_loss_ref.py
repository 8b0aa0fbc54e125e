"""Readable pure-PyTorch RNN-T loss: the oracle the numba kernels are tested against.

The transducer (Graves 2012, "Sequence Transduction with Recurrent Neural Networks",
arXiv 1211.3711, section 2) scores every alignment of T acoustic frames with the U target
labels y_1..y_U on a T x (U+1) lattice. At node (t, u) the model has emitted the first u
labels and reads frame t; it either emits blank (move to frame t+1) or emits y_{u+1}
(stay on frame t). With the per-node log-probabilities

    blank(t, u) = log P(blank | t, u),   label(t, u) = log P(y_{u+1} | t, u),

the forward variable alpha(t, u) = log P(y_1..y_u emitted while reading frames 0..t) obeys

    alpha(0, 0) = 0
    alpha(t, u) = logaddexp(alpha(t-1, u) + blank(t-1, u),      # arrive by a blank
                            alpha(t, u-1) + label(t, u-1))      # arrive by emitting y_u

and the sequence log-likelihood is log P(y | x) = alpha(T-1, U) + blank(T-1, U): the last
step is the blank that leaves the final frame. The cost is -log P(y | x); autograd gives
the gradient, so this file needs no backward recursion at all.

Shape letters: B batch, T frames (max), U target labels (max), V vocabulary incl. blank.

Two training extras follow what torchaudio and NeMo report and are written as explicit,
separate steps:
- FastEmit (Yu et al. 2021, arXiv 2010.11148, eq. 9-10, in NeMo's form): the gradient through
  every label transition is scaled by (1 + lambda); the reported cost is (1 + lambda) * NLL.
- clamp > 0: each utterance's gradient d(cost_b)/d(logits) is clamped to [-clamp, clamp]
  element-wise before it is scaled by the incoming grad_output (torchaudio's meaning).
"""

from __future__ import annotations

import torch
from torch import Tensor


class _ScaleGrad(torch.autograd.Function):
    """Identity in forward; multiplies the gradient by `scale` in backward (FastEmit)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


class _ClampedUtteranceGrad(torch.autograd.Function):
    """costs = cost_fn(logits); backward clamps each utterance's d(cost_b)/d(logits) first.

    The utterances are independent, so the gradient of costs.sum() holds d(cost_b)/d(logits[b])
    in slice b; it is clamped there and only then scaled by grad_output[b].
    """

    @staticmethod
    def forward(ctx, logits: Tensor, clamp: float, cost_fn) -> Tensor:
        with torch.enable_grad():
            x = logits.detach().requires_grad_()
            costs = cost_fn(x)  # [B]
            (grad,) = torch.autograd.grad(costs.sum(), x)  # [B, T, U+1, V]
        ctx.save_for_backward(grad.clamp(-clamp, clamp))
        return costs.detach()

    @staticmethod
    def backward(ctx, grad_costs: Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_costs.view(-1, 1, 1, 1), None, None


def _utterance_costs(
    logits: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int,
    fused_log_softmax: bool,
    fastemit_lambda: float,
) -> Tensor:
    """Per-utterance costs [B] by the alpha recursion; differentiable by autograd."""
    B, T, U1, V = logits.shape
    U = U1 - 1
    log_probs = torch.log_softmax(logits, dim=-1) if fused_log_softmax else logits  # [B, T, U+1, V]

    # Padded target positions may hold anything; point them at class 0 for the gather.
    # They only feed lattice nodes u > target_lengths[b], which never reach the final node.
    positions = torch.arange(U, device=targets.device)  # [U]
    labels = targets[:, :U].long().masked_fill(positions >= target_lengths[:, None], 0)  # [B, U]

    blank_lp = log_probs[..., blank]  # [B, T, U+1]
    label_lp = log_probs[:, :, :U].gather(-1, labels[:, None, :, None].expand(B, T, U, 1))  # [B, T, U, 1]
    label_lp = label_lp.squeeze(-1)  # [B, T, U]
    if fastemit_lambda > 0:
        label_lp = _ScaleGrad.apply(label_lp, 1.0 + fastemit_lambda)

    # Per-node views blank_at[t][u], label_at[t][u]: [B]. (unbind keeps backward to one stack
    # per row; indexing blank_lp[:, t, u] node by node would make a full-size gradient per node.)
    blank_at = [row.unbind(1) for row in blank_lp.unbind(1)]
    label_at = [row.unbind(1) for row in label_lp.unbind(1)]

    # alpha[t][u]: [B], one lattice node for the whole batch at a time.
    alpha = [[None] * U1 for _ in range(T)]
    alpha[0][0] = log_probs.new_zeros(B)
    for t in range(T):
        for u in range(U1):
            if t == 0 and u == 0:
                continue
            arrivals = []
            if t > 0:
                arrivals.append(alpha[t - 1][u] + blank_at[t - 1][u])  # blank from (t-1, u)
            if u > 0:
                arrivals.append(alpha[t][u - 1] + label_at[t][u - 1])  # emit y_u from (t, u-1)
            alpha[t][u] = torch.logsumexp(torch.stack(arrivals), dim=0)

    alphas = torch.stack([torch.stack(row, dim=1) for row in alpha], dim=1)  # [B, T, U+1]
    batch = torch.arange(B, device=logits.device)
    t_last = logit_lengths.long() - 1  # [B]
    u_last = target_lengths.long()  # [B]
    log_likelihood = alphas[batch, t_last, u_last] + blank_lp[batch, t_last, u_last]  # [B]
    nll = -log_likelihood
    # FastEmit reports (1 + lambda) * NLL; the extra part carries no gradient of its own.
    return nll + fastemit_lambda * nll.detach()


def rnnt_loss_reference(
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
    """RNN-T loss by the textbook recursion; same arguments as `minivox.kernels.rnnt_loss`.

    Args:
        logits: [B, T, U+1, V] joint outputs (log-probabilities if fused_log_softmax=False).
        targets: [B, >=U] integer labels, padded with anything past target_lengths.
        logit_lengths: [B] frames per utterance, 1..T.
        target_lengths: [B] labels per utterance, 0..U.
        blank: blank index; negative counts from the end (-1 = last class).
        clamp: if > 0, clamp each utterance's gradient w.r.t. logits to [-clamp, clamp].
        reduction: "none" -> [B] costs, "sum" -> their sum, "mean" -> their mean over B.
        fused_log_softmax: apply log_softmax over V here (True) or take log-probs (False).
        fastemit_lambda: FastEmit regulariser weight (0 = plain RNN-T).

    Inputs are not validated here (the public function does that); use float64 for an oracle.
    Runs T * (U+1) small autograd steps, so keep T and U small.
    """
    V = logits.shape[-1]
    blank_index = blank % V

    def cost_fn(x: Tensor) -> Tensor:
        return _utterance_costs(
            x, targets, logit_lengths, target_lengths, blank_index, fused_log_softmax, fastemit_lambda
        )

    costs = _ClampedUtteranceGrad.apply(logits, clamp, cost_fn) if clamp > 0 else cost_fn(logits)  # [B]
    if reduction == "none":
        return costs
    if reduction == "sum":
        return costs.sum()
    return costs.mean()
