"""RNN-T loss and its gradient on CUDA: numba kernels, same maths as rnnt_loss_cpu.py.

Three launches on the caller's stream (shape letters: B batch, T frames, U labels,
V classes; node (t, u) of utterance b is one "row" logits[b, t, u, :]):

1. `_node_log_probs_kernel`, one block per row: the block strides over V, reduces the
   row max and then sum exp(x - max) in shared memory, and thread 0 stores the
   denominator and the blank/label log-probabilities of the node.
2. `_alphas_betas_kernel`, one block per recursion (blocks 0..B-1 alpha, B..2B-1 beta),
   one thread per u: node (t, u) depends only on (t-1, u) and (t, u-1), so every
   anti-diagonal t + u = n is computed at once, with a barrier between diagonals.
3. `_gradients_kernel`, one block per row again, striding over V and writing
   p_v * (g_blank + g_label) - g_blank [v = blank] - g_label [v = y_{u+1}] (see
   rnnt_loss_cpu.py for the derivation), clamped and scaled, straight into `grads`.

Work arrays are float64: [6, B, T, U+1] (row max, denominator, blank and label
log-probs, alpha, beta) and [2, B] (log-likelihood, cost).

`cost_and_grad` takes numba device arrays, or plain numpy arrays under the CUDA simulator
(NUMBA_ENABLE_CUDASIM=1), which is how the tests run it without a GPU;
`cost_and_grad_torch` wraps torch CUDA tensors (via __cuda_array_interface__) and launches
on torch's current stream.
"""

from __future__ import annotations

import math

import numba
from numba import cuda

MAX_THREADS_V = 128  # threads per block of the row kernels (they stride over V)
MAX_THREADS_U = 1024  # threads per block of the recursion kernel (they stride over u)
NEG_INF = -math.inf

# Indices into the [6, B, T, U+1] work array and the [2, B] per-utterance array.
ROW_MAX, DENOM, BLANK_LP, LABEL_LP, ALPHA, BETA = range(6)
LOG_LIKELIHOOD, COST = range(2)


@cuda.jit(device=True, inline=True)
def _log_add(a, b):
    """log(exp(a) + exp(b)); -inf + -inf = -inf, NaN propagates."""
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


@cuda.jit(device=True, inline=True)
def _row_of_block(T, U1):
    """(b, t, u) of the row this block works on; the grid has one block per row."""
    row = cuda.blockIdx.x
    return row // (T * U1), (row // U1) % T, row % U1


@cuda.jit(device=True, inline=True)
def _beta_after_blank(beta, b, t, u, n_frames, n_labels):
    """beta of the node a blank at (t, u) leads to: (t+1, u); 0 for the final blank; -inf if none."""
    if t < n_frames - 1:
        return beta[b, t + 1, u]
    if u == n_labels:
        return 0.0
    return NEG_INF


@cuda.jit(device=True, inline=True)
def _block_reduce(shared, tid, n_threads, is_max):
    """Tree-reduce shared[0:n_threads] (a power of two) into shared[0], by max or by sum."""
    stride = n_threads // 2
    while stride > 0:
        if tid < stride:
            other = shared[tid + stride]
            if is_max:
                if other > shared[tid]:
                    shared[tid] = other
            else:
                shared[tid] += other
        cuda.syncthreads()
        stride //= 2


@cuda.jit(cache=True)
def _node_log_probs_kernel(logits, targets, logit_lengths, target_lengths, blank, fused, work):
    """Fill work[ROW_MAX, DENOM, BLANK_LP, LABEL_LP] for the row of this block."""
    B, T, U1, V = logits.shape
    b, t, u = _row_of_block(T, U1)
    n_labels = target_lengths[b]
    if t >= logit_lengths[b] or u > n_labels:
        return  # outside the lattice (the whole block leaves together)
    tid, n_threads = cuda.threadIdx.x, cuda.blockDim.x
    shared = cuda.shared.array(MAX_THREADS_V, numba.float64)
    m = 0.0
    log_sum = 0.0
    if fused:
        local = NEG_INF
        for v in range(tid, V, n_threads):
            if logits[b, t, u, v] > local:
                local = logits[b, t, u, v]
        shared[tid] = local
        cuda.syncthreads()
        _block_reduce(shared, tid, n_threads, True)
        m = shared[0]
        cuda.syncthreads()  # everyone has read the max before shared is reused
        local = 0.0
        for v in range(tid, V, n_threads):
            local += math.exp(logits[b, t, u, v] - m)  # a NaN in the row makes the sum NaN
        shared[tid] = local
        cuda.syncthreads()
        _block_reduce(shared, tid, n_threads, False)
        log_sum = math.log(shared[0])
    if tid == 0:
        denom = m + log_sum
        work[ROW_MAX, b, t, u] = m
        work[DENOM, b, t, u] = denom
        work[BLANK_LP, b, t, u] = logits[b, t, u, blank] - denom
        work[LABEL_LP, b, t, u] = logits[b, t, u, targets[b, u]] - denom if u < n_labels else NEG_INF


@cuda.jit(cache=True)
def _alphas_betas_kernel(logit_lengths, target_lengths, fastemit_lambda, work, per_utterance):
    """Block b < B: alpha of utterance b (and its cost); block B + b: beta of utterance b."""
    B = per_utterance.shape[1]
    b = cuda.blockIdx.x % B
    tid, n_threads = cuda.threadIdx.x, cuda.blockDim.x
    n_frames, n_labels = logit_lengths[b], target_lengths[b]
    n_diagonals = n_frames + n_labels  # t + u runs over 0 .. (T_b - 1) + U_b
    blank_lp, label_lp = work[BLANK_LP], work[LABEL_LP]
    alpha, beta = work[ALPHA], work[BETA]
    if cuda.blockIdx.x < B:
        for n in range(n_diagonals):
            for u in range(tid, n_labels + 1, n_threads):
                t = n - u
                if 0 <= t < n_frames:
                    if t == 0 and u == 0:
                        alpha[b, 0, 0] = 0.0
                    else:
                        by_blank = alpha[b, t - 1, u] + blank_lp[b, t - 1, u] if t > 0 else NEG_INF
                        by_label = alpha[b, t, u - 1] + label_lp[b, t, u - 1] if u > 0 else NEG_INF
                        alpha[b, t, u] = _log_add(by_blank, by_label)
            cuda.syncthreads()  # diagonal n is complete before n + 1 reads it
        if tid == 0:
            ll = alpha[b, n_frames - 1, n_labels] + blank_lp[b, n_frames - 1, n_labels]
            per_utterance[LOG_LIKELIHOOD, b] = ll
            per_utterance[COST, b] = -(1.0 + fastemit_lambda) * ll
    else:
        for n in range(n_diagonals - 1, -1, -1):
            for u in range(tid, n_labels + 1, n_threads):
                t = n - u
                if 0 <= t < n_frames:
                    by_blank = _beta_after_blank(beta, b, t, u, n_frames, n_labels) + blank_lp[b, t, u]
                    by_label = beta[b, t, u + 1] + label_lp[b, t, u] if u < n_labels else NEG_INF
                    beta[b, t, u] = _log_add(by_blank, by_label)
            cuda.syncthreads()


@cuda.jit(device=True, inline=True)
def _clamp_and_scale(g, clamp, scale):
    """clamp > 0: g clamped to [-clamp, clamp] (NaN stays NaN); then times scale."""
    if clamp > 0:
        if g > clamp:
            g = clamp
        elif g < -clamp:
            g = -clamp
    return g * scale


@cuda.jit(cache=True)
def _gradients_kernel(logits, targets, logit_lengths, target_lengths, blank, fused, fastemit_lambda,
                      clamp, scale, work, per_utterance, grads):
    """grads[b, t, u, :] = scale * clamp(d cost_b / d logits[b, t, u, :]) for this block's row."""
    B, T, U1, V = logits.shape
    b, t, u = _row_of_block(T, U1)
    tid, n_threads = cuda.threadIdx.x, cuda.blockDim.x
    n_frames, n_labels = logit_lengths[b], target_lengths[b]
    if t >= n_frames or u > n_labels:
        for v in range(tid, V, n_threads):
            grads[b, t, u, v] = 0.0
        return
    ll = per_utterance[LOG_LIKELIHOOD, b]
    a = work[ALPHA, b, t, u]
    blank_lp = work[BLANK_LP, b, t, u]
    label_lp = work[LABEL_LP, b, t, u]
    g_blank = math.exp(a + blank_lp + _beta_after_blank(work[BETA], b, t, u, n_frames, n_labels) - ll)
    g_label = 0.0
    label = -1
    if u < n_labels:
        label = targets[b, u]
        g_label = (1.0 + fastemit_lambda) * math.exp(a + label_lp + work[BETA, b, t, u + 1] - ll)
    w = g_blank + g_label  # the node's gradient mass, shared out by the softmax
    # The common element, p_v * w = exp(x_v - max) * k, is computed in the logits' precision;
    # the blank and label elements (differences of close numbers) in float64.
    m = logits.dtype.type(work[ROW_MAX, b, t, u])
    k = logits.dtype.type(w * math.exp(work[ROW_MAX, b, t, u] - work[DENOM, b, t, u]))
    clamp_, scale_ = logits.dtype.type(clamp), logits.dtype.type(scale)
    zero = logits.dtype.type(0.0)
    for v in range(tid, V, n_threads):
        if v == blank:
            g = logits.dtype.type((math.exp(blank_lp) * w if fused else 0.0) - g_blank)
        elif v == label:
            g = logits.dtype.type((math.exp(label_lp) * w if fused else 0.0) - g_label)
        elif fused:
            g = math.exp(logits[b, t, u, v] - m) * k
        else:
            g = zero
        grads[b, t, u, v] = _clamp_and_scale(g, clamp_, scale_)


def _threads_for(n, limit):
    """Smallest power of two >= n, capped at limit (the block reductions need a power of two)."""
    threads = 1
    while threads < n and threads < limit:
        threads *= 2
    return threads


def cost_and_grad(logits, targets, logit_lengths, target_lengths, blank, clamp, fastemit_lambda,
                  fused_log_softmax, grad_scale, grads, work, per_utterance, stream=0):
    """Launch the three kernels; fills per_utterance[COST] and (if grads is not None) grads.

    Args (device arrays, or numpy arrays under the simulator):
        logits: [B, T, U+1, V] float32/float64, C-contiguous.
        targets: [B, >=U] int32; logit_lengths, target_lengths: [B] int32 (validated).
        blank: index in [0, V); clamp, fastemit_lambda, grad_scale: as in rnnt_loss_cpu.
        grads: [B, T, U+1, V] output of logits' dtype, or None for costs only.
        work: [6, B, T, U+1] float64 scratch; per_utterance: [2, B] float64 output
            (log-likelihood, cost).
        stream: numba stream to launch on (0: the default stream).
    """
    B, T, U1, V = logits.shape
    n_rows = B * T * U1
    threads_v = _threads_for(V, MAX_THREADS_V)
    threads_u = _threads_for(U1, MAX_THREADS_U)
    _node_log_probs_kernel[n_rows, threads_v, stream](
        logits, targets, logit_lengths, target_lengths, blank, fused_log_softmax, work)
    n_recursions = 2 * B if grads is not None else B
    _alphas_betas_kernel[n_recursions, threads_u, stream](
        logit_lengths, target_lengths, float(fastemit_lambda), work, per_utterance)
    if grads is not None:
        _gradients_kernel[n_rows, threads_v, stream](
            logits, targets, logit_lengths, target_lengths, blank, fused_log_softmax,
            float(fastemit_lambda), float(clamp), float(grad_scale), work, per_utterance, grads)


def cost_and_grad_torch(logits, targets, logit_lengths, target_lengths, blank, clamp, fastemit_lambda,
                        fused_log_softmax, grad_scale, grads):
    """`cost_and_grad` on torch CUDA tensors, on torch's current stream. Returns costs [B] float64."""
    import torch

    B, T, U1, _ = logits.shape
    work = torch.empty((6, B, T, U1), dtype=torch.float64, device=logits.device)
    per_utterance = torch.empty((2, B), dtype=torch.float64, device=logits.device)

    def device_array(x):
        return cuda.as_cuda_array(x, sync=False)  # same stream as the launch: no extra sync

    with cuda.gpus[logits.device.index]:
        stream = cuda.external_stream(torch.cuda.current_stream(logits.device).cuda_stream)
        cost_and_grad(
            device_array(logits), device_array(targets), device_array(logit_lengths),
            device_array(target_lengths), blank, clamp, fastemit_lambda, fused_log_softmax,
            grad_scale, None if grads is None else device_array(grads), device_array(work),
            device_array(per_utterance), stream)
    return per_utterance[COST]
