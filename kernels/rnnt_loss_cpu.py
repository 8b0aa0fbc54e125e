"""RNN-T loss and its gradient on the CPU: numba kernels, same maths as rnnt_loss_ref.py.

Three passes over the lattice of each utterance (shape letters: B batch, T frames,
U labels, V vocabulary incl. blank; the lattice has T x (U+1) nodes):

1. `_node_log_probs`, parallel over (b, t) rows: per node the log-softmax denominator
   log sum_v exp(logits[b, t, u, v]) and from it the only two log-probabilities the
   recursions need, blank(t, u) and label(t, u) = log P(y_{u+1} | t, u). Reads logits once.
2. `_alphas_betas`, parallel over the 2B recursions (alpha and beta of every utterance):
   the forward and backward variables of Graves 2012 in float64, from the [B, T, U+1]
   blank/label arrays only.
3. `_gradients`, parallel over (b, t) rows: reads logits a second time and writes the
   gradient straight into the output buffer. With the occupancies of the two transitions
   leaving node (t, u),

       g_blank(t, u) = exp(alpha(t, u) + blank(t, u) + beta(t+1, u) - log P(y|x))
       g_label(t, u) = exp(alpha(t, u) + label(t, u) + beta(t, u+1) - log P(y|x)),

   the gradient of cost = -log P(y|x) is d cost / d log P(v | t, u) = -g_blank [v = blank]
   - g_label [v = y_{u+1}], and through the log-softmax (softmax p_v):

       d cost / d logits[t, u, v] = p_v * (g_blank + g_label) - g_blank [v = blank] - g_label [v = y_{u+1}].

   FastEmit multiplies every g_label above by (1 + lambda). The p_v term is one vectorised
   exp per element (`_exp`); the two special classes are then redone in float64.

No [B, T, U+1, V] temporary exists besides the gradient itself: the work arrays are
[B, T, U+1] float64 (denominators, row maxima, blank/label log-probs, alphas, betas).
float32 logits are read, summed over V (vectorised) and the gradient written in float32;
everything per node (log-denominators, recursions, occupancies, the blank and label
entries of the gradient) is float64.

Entry point: `cost_and_grad` on numpy arrays; `rnnt_loss.py` wraps it for torch.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

NEG_INF = -math.inf

# Flags for the float32 hot loops: reassociation lets LLVM vectorise the sums, FMA
# contraction is free accuracy; no 'nnan'/'ninf', so NaN and inf still propagate.
_FAST = {"reassoc", "contract", "nsz", "arcp"}


# ---------------------------------------------------------------------------
# exp that vectorises: numba's math.exp is a scalar libm call (no SVML here), ~4x slower.
# ---------------------------------------------------------------------------

@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    """Reinterpret the bits of an int32 as a float32 (LLVM bitcast)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # ln 2 split in two (Cody-Waite) so n * ln2 is exact
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_MIN = np.float32(-87.33654)  # below: exp(x) < smallest normal float32 -> 0
_EXP_MAX = np.float32(88.0)  # above: inf (exact overflow is at 88.72; the kernels only pass x <= 0)


@njit(fastmath={"contract"}, cache=True)
def _exp_float32(x):
    """exp(x) for float32 x <= 88, within 2 ulp: exp(x) = 2^n * exp(r), |r| <= ln2 / 2.

    exp(r) is the polynomial of Cephes' expf (degree 7 in r); 2^n is built by placing
    n + 127 in the exponent bits. Branch-free, so LLVM vectorises the callers' loops.
    """
    xc = min(max(x, _EXP_MIN), _EXP_MAX)
    biased = np.int32(xc * _LOG2E + np.float32(127.5))  # floor(x / ln2 + 0.5) + 127 (argument > 0)
    n = np.float32(biased - np.int32(127))
    r = xc - n * _LN2_HI - n * _LN2_LO
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    y = p * _int32_bits_as_float32(biased << np.int32(23))
    y = np.float32(0.0) if x < _EXP_MIN else y
    y = np.float32(math.inf) if x > _EXP_MAX else y
    return x if x != x else y  # NaN stays NaN


def _exp(x):
    """exp for the hot loops: `_exp_float32` for float32, math.exp otherwise."""
    return math.exp(x)


@overload(_exp)
def _exp_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: _exp_float32(x)
    return lambda x: math.exp(x)


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

@njit(cache=True)
def _log_add(a, b):
    """log(exp(a) + exp(b)) in float64; -inf + -inf = -inf, NaN propagates."""
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


@njit(cache=True)
def _beta_after_blank(beta, t, u, n_frames, n_labels):
    """beta of the node a blank at (t, u) leads to: (t+1, u); 0 for the final blank; -inf if none."""
    if t < n_frames - 1:
        return beta[t + 1, u]
    if u == n_labels:
        return 0.0  # the blank leaving the last node of the lattice ends the path
    return NEG_INF  # a blank on the last frame before all labels are out leads nowhere


@njit(fastmath=_FAST, cache=True)
def _row_max_and_log_sum(row):
    """(max_v row[v], log sum_v exp(row[v] - max)) of one [V] row; float64 results.

    A NaN in the row is skipped by the max but makes the sum NaN; +inf makes it NaN too.
    """
    m = row[0]
    for v in range(1, row.shape[0]):
        if row[v] > m:
            m = row[v]
    s = row.dtype.type(0.0)
    for v in range(row.shape[0]):
        s += _exp(row[v] - m)
    return np.float64(m), math.log(np.float64(s))


# ---------------------------------------------------------------------------
# Pass 1: denominators and the blank/label log-probabilities of every node
# ---------------------------------------------------------------------------

@njit(parallel=True, cache=True)
def _node_log_probs(logits, targets, logit_lengths, target_lengths, blank, fused,
                    row_max, denom, blank_lp, label_lp):
    """Fill row_max, denom, blank_lp, label_lp [B, T, U+1] for every node inside the lattice.

    fused=False: logits already are log-probabilities, denom = 0.
    """
    B, T = logits.shape[0], logits.shape[1]
    for bt in prange(B * T):
        b, t = bt // T, bt % T
        if t >= logit_lengths[b]:
            continue
        n_labels = target_lengths[b]
        for u in range(n_labels + 1):
            row = logits[b, t, u]  # [V]
            if fused:
                m, log_sum = _row_max_and_log_sum(row)
                row_max[b, t, u] = m
                denom[b, t, u] = m + log_sum
            else:
                row_max[b, t, u] = 0.0
                denom[b, t, u] = 0.0
            blank_lp[b, t, u] = row[blank] - denom[b, t, u]
            label_lp[b, t, u] = row[targets[b, u]] - denom[b, t, u] if u < n_labels else NEG_INF


# ---------------------------------------------------------------------------
# Pass 2: forward (alpha) and backward (beta) variables, float64
# ---------------------------------------------------------------------------

@njit(cache=True)
def _alpha_recursion(blank_lp, label_lp, n_frames, n_labels, alpha):
    """alpha [T, U+1] of one utterance (Graves 2012 eq. 16); returns log P(y | x)."""
    alpha[0, 0] = 0.0
    for t in range(n_frames):
        for u in range(n_labels + 1):
            if t == 0 and u == 0:
                continue
            by_blank = alpha[t - 1, u] + blank_lp[t - 1, u] if t > 0 else NEG_INF
            by_label = alpha[t, u - 1] + label_lp[t, u - 1] if u > 0 else NEG_INF
            alpha[t, u] = _log_add(by_blank, by_label)
    return alpha[n_frames - 1, n_labels] + blank_lp[n_frames - 1, n_labels]


@njit(cache=True)
def _beta_recursion(blank_lp, label_lp, n_frames, n_labels, beta):
    """beta [T, U+1] of one utterance (Graves 2012 eq. 18); returns beta(0, 0) = log P(y | x)."""
    for t in range(n_frames - 1, -1, -1):
        for u in range(n_labels, -1, -1):
            by_blank = _beta_after_blank(beta, t, u, n_frames, n_labels) + blank_lp[t, u]
            by_label = beta[t, u + 1] + label_lp[t, u] if u < n_labels else NEG_INF
            beta[t, u] = _log_add(by_blank, by_label)
    return beta[0, 0]


@njit(parallel=True, cache=True)
def _alphas_betas(blank_lp, label_lp, logit_lengths, target_lengths, with_betas,
                  alpha, beta, log_likelihood):
    """alpha, beta [B, T, U+1] and log_likelihood [B]; the 2B recursions run in parallel."""
    B = blank_lp.shape[0]
    n_tasks = 2 * B if with_betas else B
    for task in prange(n_tasks):
        b = task % B
        n_frames, n_labels = logit_lengths[b], target_lengths[b]
        if task < B:
            log_likelihood[b] = _alpha_recursion(blank_lp[b], label_lp[b], n_frames, n_labels, alpha[b])
        else:
            _beta_recursion(blank_lp[b], label_lp[b], n_frames, n_labels, beta[b])


# ---------------------------------------------------------------------------
# Pass 3: gradient w.r.t. the logits, written straight into `grads`
# ---------------------------------------------------------------------------

@njit(fastmath=_FAST, cache=True)
def _softmax_times(row, m, k, upper, scale, out):
    """out[v] = min(exp(row[v] - m) * k, upper) * scale: the softmax term of one node."""
    for v in range(row.shape[0]):
        out[v] = min(_exp(row[v] - m) * k, upper) * scale


@njit(cache=True)
def _clamp_and_scale(g, clamp, scale):
    if clamp > 0.0:
        g = min(max(g, -clamp), clamp)
    return g * scale


@njit(parallel=True, cache=True)
def _gradients(logits, targets, logit_lengths, target_lengths, blank, fused, fastemit_lambda,
               clamp, scale, row_max, denom, blank_lp, label_lp, alpha, beta, log_likelihood, grads):
    """grads [B, T, U+1, V] = scale * clamp(d cost_b / d logits); zero outside the lattice."""
    B, T, U1 = logits.shape[0], logits.shape[1], logits.shape[2]
    label_weight = 1.0 + fastemit_lambda
    upper = clamp if clamp > 0.0 else math.inf
    for bt in prange(B * T):
        b, t = bt // T, bt % T
        n_frames, n_labels = logit_lengths[b], target_lengths[b]
        if t >= n_frames:
            grads[b, t] = 0.0
            continue
        ll = log_likelihood[b]
        for u in range(U1):
            out = grads[b, t, u]  # [V]
            if u > n_labels:
                out[:] = 0.0
                continue
            a = alpha[b, t, u]
            g_blank = math.exp(a + blank_lp[b, t, u] + _beta_after_blank(beta[b], t, u, n_frames, n_labels) - ll)
            g_label = math.exp(a + label_lp[b, t, u] + beta[b, t, u + 1] - ll) if u < n_labels else 0.0
            g_label *= label_weight
            if fused:
                # p_v * w with p_v = exp(x_v - m) * exp(m - denom) and w the node's gradient mass.
                w = g_blank + g_label
                k = w * math.exp(row_max[b, t, u] - denom[b, t, u])
                row = logits[b, t, u]
                _softmax_times(row, row.dtype.type(row_max[b, t, u]), row.dtype.type(k),
                               row.dtype.type(upper), row.dtype.type(scale), out)
                out[blank] = _clamp_and_scale(math.exp(blank_lp[b, t, u]) * w - g_blank, clamp, scale)
                if u < n_labels:
                    out[targets[b, u]] = _clamp_and_scale(math.exp(label_lp[b, t, u]) * w - g_label, clamp, scale)
            else:
                out[:] = 0.0
                out[blank] = _clamp_and_scale(-g_blank, clamp, scale)
                if u < n_labels:
                    out[targets[b, u]] = _clamp_and_scale(-g_label, clamp, scale)


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------

def cost_and_grad(logits, targets, logit_lengths, target_lengths, blank, clamp=-1.0,
                  fastemit_lambda=0.0, fused_log_softmax=True, grad_scale=1.0, grads=None):
    """Per-utterance RNN-T costs and (optionally) the gradient, on numpy arrays.

    Args:
        logits: [B, T, U+1, V] float32 or float64, C-contiguous.
        targets: [B, >=U] int32/int64 (entries past target_lengths are not read).
        logit_lengths, target_lengths: [B] int32/int64, already validated.
        blank: blank index in [0, V).
        clamp: > 0 clamps each element of d cost_b / d logits to [-clamp, clamp].
        fastemit_lambda: FastEmit weight; costs are reported as (1 + lambda) * NLL.
        fused_log_softmax: logits are raw scores (True) or log-probabilities (False).
        grad_scale: multiplies the (clamped) gradient, e.g. 1/B for a mean reduction.
        grads: None (costs only) or a [B, T, U+1, V] buffer of logits' dtype to write into.

    Returns:
        costs [B] float64.
    """
    B, T, U1, _ = logits.shape
    work = lambda: np.empty((B, T, U1), dtype=np.float64)  # noqa: E731 - [B, T, U+1] work array
    row_max, denom, blank_lp, label_lp = work(), work(), work(), work()
    _node_log_probs(logits, targets, logit_lengths, target_lengths, blank, fused_log_softmax,
                    row_max, denom, blank_lp, label_lp)
    with_grad = grads is not None
    alpha = work()
    beta = work() if with_grad else alpha  # beta unused (and not computed) without a gradient
    log_likelihood = np.empty(B, dtype=np.float64)
    _alphas_betas(blank_lp, label_lp, logit_lengths, target_lengths, with_grad, alpha, beta, log_likelihood)
    if with_grad:
        _gradients(logits, targets, logit_lengths, target_lengths, blank, fused_log_softmax,
                   float(fastemit_lambda), float(clamp), float(grad_scale), row_max, denom,
                   blank_lp, label_lp, alpha, beta, log_likelihood, grads)
    return -(1.0 + fastemit_lambda) * log_likelihood
