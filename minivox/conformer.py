"""FastConformer encoder with cache-aware streaming (the ASR model's acoustic encoder).

    log-mel [B, M, T_feat] --CausalConvSubsampling (8x)--> [B, T, D] * sqrt(D)
        --ConformerLayer x L--> [B, T, D]

Each `ConformerLayer` is a Macaron block (Gulati et al. 2020, "Conformer"): half a
feed-forward, relative-position self-attention (Transformer-XL, Dai et al. 2019, with
`pos_bias_u`/`pos_bias_v`), a causal depthwise convolution module, the other half
feed-forward and a final LayerNorm. The subsampling is NeMo's FastConformer "dw_striding"
(Rekesh et al. 2023): one 3x3 stride-2 convolution, then depthwise + pointwise pairs,
all causal in time. Module and parameter names and shapes follow NeMo's ConformerEncoder
(`pre_encode.conv.0`, `layers.3.self_attn.linear_pos`, `layers.3.conv.depthwise_conv`, ...)
so a NeMo checkpoint can be mapped onto this file one tensor at a time.

Attention context is NeMo's "chunked_limited" `att_context_size = [left, right]` in encoder
frames: frames are grouped into chunks of `right + 1`; a frame sees every frame of its own
chunk and of the `left // (right + 1)` chunks before it, nothing later. Nothing else in the
encoder looks ahead (causal subsampling, causal convolution), so an encoder that is fed one
chunk at a time with the right caches gives exactly the offline output:

    cache_pre_encode [B, M, 2 * factor]  the last feature frames the subsampling reads again
    cache_last_channel [L, B, left, D]   each layer's attention input for the last `left` frames
    cache_last_time [L, B, D, K - 1]     each layer's depthwise-convolution input, last K - 1 frames

`ConformerEncoder.forward` is the offline (training) path and `stream_step` the streaming
path; both run the same layers, and tests hold them equal.

Deviation from NeMo, on purpose: NeMo's causal subsampling also pads one frame on the right
of time at every stage, which adds a last output frame that depends on padding
(T_out = floor(T / 2) + 1 per stage). Here a stage gives ceil(T / 2) frames, every one a
function of real input only, so streaming and offline agree on every frame. All other
frames are the same computation, and no valid frame reads a padded one, so a batch row
equals the utterance alone (recent NeMo masks between the stages to get the same).

Shape letters: B batch, M mel bins, T frames (feature frames at the input, encoder frames
after the subsampling), D d_model, H heads, K depthwise kernel size, L layers, C
subsampling channels, P relative positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# A masked attention score. NeMo uses -10000 too; it is finite so that a row with every key
# masked (a padded query) gives a finite softmax instead of NaN, and exp(-1e4) == 0 in fp32.
MASKED_SCORE = -10000.0

SUBSAMPLING_KERNEL = 3  # every stage of dw_striding is a 3x3 convolution ...
SUBSAMPLING_STRIDE = 2  # ... with stride 2 in time and frequency
# Causal padding of one stage: kernel - 1 zeros before the first frame, so output t reads
# input frames 2t-2, 2t-1, 2t; in frequency also NeMo's stride - 1 zeros after the last bin.
SUBSAMPLING_LEFT_PAD = SUBSAMPLING_KERNEL - 1  # 2
SUBSAMPLING_FREQ_RIGHT_PAD = SUBSAMPLING_STRIDE - 1  # 1
# Output frame j of the stack reads feature frames 8j - 14 .. 8j. A streaming step re-reads
# 2 * factor feature frames before its first new one; the first two outputs of that window
# saw zeros where earlier frames were and are dropped (see `stream_step`).
STREAM_DROP_FRAMES = 2


# ---------------------------------------------------------------------------------------
# Masks. One helper for lengths, one for the attention context.
# ---------------------------------------------------------------------------------------


def valid_mask(lengths: torch.Tensor, size: int, start: int = 0) -> torch.Tensor:
    """Which of `size` frames, the first at absolute index `start`, are real.

    Frame i (absolute position p = start + i) of batch row b is valid iff 0 <= p < lengths[b].
    `start` is negative when a streaming window begins before the stream (zeros standing for
    the left padding).

    Args:
        lengths: [B] int, frames in each row.
    Returns:
        [B, size] bool.
    """
    positions = torch.arange(start, start + size, device=lengths.device)  # [size]
    return (positions[None, :] >= 0) & (positions[None, :] < lengths[:, None])


def chunked_limited_mask(
    q_positions: torch.Tensor, k_positions: torch.Tensor, att_context_size: tuple[int, int]
) -> torch.Tensor:
    """NeMo's "chunked_limited" attention context: may query frame i attend to key frame j?

    With [left, right] and right >= 0, frames form chunks of right + 1; a query sees the keys
    of its own chunk and of the left // (right + 1) chunks before it. right = -1 means an
    unlimited right context (offline models); left = -1 an unlimited left context.

    Args:
        q_positions: [Tq] absolute frame indices of the queries.
        k_positions: [Tk] absolute frame indices of the keys.
    Returns:
        [Tq, Tk] bool, True where attention is allowed.
    """
    left, right = att_context_size
    if right < 0:
        visible = torch.ones(len(q_positions), len(k_positions), dtype=torch.bool, device=q_positions.device)
        if left >= 0:
            visible &= k_positions[None, :] >= q_positions[:, None] - left
        return visible
    chunk = right + 1
    chunk_diff = q_positions[:, None].div(chunk, rounding_mode="floor") - k_positions[None, :].div(
        chunk, rounding_mode="floor"
    )  # [Tq, Tk]
    left_chunks = left // chunk if left >= 0 else len(k_positions) + 1
    return (chunk_diff >= 0) & (chunk_diff <= left_chunks)


# ---------------------------------------------------------------------------------------
# Subsampling: NeMo "dw_striding", causal in time.
# ---------------------------------------------------------------------------------------


def subsampled_length(lengths: torch.Tensor | int, factor: int) -> torch.Tensor | int:
    """Encoder frames for `lengths` feature frames: ceil(T / 2) per stage = ceil(T / factor)."""
    for _ in range(int(math.log2(factor))):
        lengths = (lengths + 1) // 2
    return lengths


class CausalConvSubsampling(nn.Module):
    """Feature frames [B, M, T] -> encoder frames [B, ceil(T / factor), D].

    Stage 1 is a full 3x3 convolution from 1 to C channels, each later stage a depthwise 3x3
    then a pointwise 1x1, each stage strided by 2 in time and frequency and followed by ReLU.
    `conv` keeps NeMo's layer indices: 0 conv, 1 ReLU, (2 dw, 3 pw, 4 ReLU), (5 dw, 6 pw, 7 ReLU).
    The C channels x remaining frequency bins are flattened per frame and projected to D (`out`).
    """

    def __init__(self, feat_in: int, d_model: int, conv_channels: int, factor: int):
        super().__init__()
        if factor < 2 or factor & (factor - 1):
            raise ValueError(f"subsampling_factor must be a power of 2 >= 2, got {factor}")
        self.factor = factor
        self.stages = int(math.log2(factor))
        k, s = SUBSAMPLING_KERNEL, SUBSAMPLING_STRIDE
        layers: list[nn.Module] = [nn.Conv2d(1, conv_channels, k, stride=s), nn.ReLU()]
        for _ in range(self.stages - 1):
            layers += [
                nn.Conv2d(conv_channels, conv_channels, k, stride=s, groups=conv_channels),  # depthwise
                nn.Conv2d(conv_channels, conv_channels, 1),  # pointwise
                nn.ReLU(),
            ]
        self.conv = nn.Sequential(*layers)
        # Stage s is conv[first:end]: its strided conv, then (pointwise conv and) ReLU.
        self.stage_bounds = [(0, 2)] + [(2 + 3 * s, 5 + 3 * s) for s in range(self.stages - 1)]
        freq = feat_in
        for _ in range(self.stages):
            freq = freq // 2 + 1  # NeMo's causal padding (2 left, 1 right): 80 -> 41 -> 21 -> 11
        self.out = nn.Linear(conv_channels * freq, d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """He (Kaiming) normal init of the convolutions (fan-in, ReLU gain) and a zero-bias `out`.
        PyTorch's default init shrinks the signal ~5x per depthwise + pointwise stage, so at step 0
        the output was almost the constant bias (time-std / mean ~ 0.005 on normalised log-mels)
        and the demo run learned an input-independent encoder; with this init the stages keep
        the input's variation."""
        for module in self.conv:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.out.weight, std=self.out.in_features ** -0.5)
        nn.init.zeros_(self.out.bias)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Subsample a batch, or a streaming window of it.

        Args:
            feats: [B, M, T] log-mel frames; frame 0 has absolute index `start`.
            lengths: [B] int, total feature frames of each utterance (absolute, so a window's
                frames at or beyond it count as padding).
            start: absolute index of feats[:, :, 0]; a multiple of the factor. Negative in the
                first streaming window, whose leading zeros stand for the left padding.
        Returns:
            (out [B, ceil(T / factor), D], out_lengths [B] = ceil(lengths / factor)); out frame 0
            has absolute index start // factor. Frames at or beyond out_lengths hold garbage
            (the caller masks them); frames before them never read padding, because a stage's
            output t < ceil(n / 2) reads inputs 2t - 2 .. 2t <= n - 1 of its n valid inputs.
        """
        assert start % self.factor == 0, (start, self.factor)
        x = feats.transpose(1, 2).unsqueeze(1)  # [B, 1, T, M]: NeMo's layout, time then frequency
        # Channels-last storage (same shapes): the depthwise and 1x1 convolutions run ~1.5x faster.
        x = x.contiguous(memory_format=torch.channels_last)
        for first, end in self.stage_bounds:
            if start < 0:  # a stream's first window: what stands before frame 0 is zero padding
                x = x * (torch.arange(start, start + x.shape[2], device=x.device) >= 0)[:, None]
            # 2 zeros before the first frame: output t reads inputs 2t - 2 .. 2t, ceil(T / 2) outputs.
            # Frequency is padded as NeMo's CausalConv2D: 2 bins before, 1 after.
            x = F.pad(x, (SUBSAMPLING_LEFT_PAD, SUBSAMPLING_FREQ_RIGHT_PAD, SUBSAMPLING_LEFT_PAD, 0))
            x = self.conv[first](x)  # strided conv: [B, C, ceil(T / 2), F // 2 + 1]
            for module in self.conv[first + 1:end]:
                x = module(x)  # pointwise conv and / or ReLU
            start, lengths = start // 2, (lengths + 1) // 2
        B, C, T, Fq = x.shape
        x = x.transpose(1, 2).reshape(B, T, C * Fq)  # [B, T, C * F']: channels outer, as NeMo
        return self.out(x), lengths


# ---------------------------------------------------------------------------------------
# Relative positional encoding and Transformer-XL attention.
# ---------------------------------------------------------------------------------------


def relative_positional_encoding(max_distance: int, min_distance: int, d_model: int,
                                 device=None, dtype=torch.float32) -> torch.Tensor:
    """Sinusoids (Vaswani et al. 2017) for relative distances max_distance, ..., min_distance.

    Row p is distance max_distance - p (NeMo's RelPositionalEncoding order: most positive first).
    Returns [P, D] with P = max_distance - min_distance + 1.
    """
    distance = torch.arange(max_distance, min_distance - 1, -1, device=device, dtype=torch.float32)  # [P]
    inv_freq = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32)
                         * (-math.log(10000.0) / d_model))  # [D / 2]
    angle = distance[:, None] * inv_freq[None, :]  # [P, D / 2]
    pe = torch.stack([angle.sin(), angle.cos()], dim=-1).view(len(distance), d_model)  # sin even, cos odd
    return pe.to(dtype)


def rel_shift_reference(scores: torch.Tensor, num_keys: int) -> torch.Tensor:
    """Readable `rel_shift`: pick each (query, key) pair's relative-distance score.

    The queries are the last Tq of the Tk key frames (Tk - Tq cached frames come first), so
    query i sits at key position Tk - Tq + i and its distance to key j is Tk - Tq + i - j.
    `scores` columns are distances Tk - 1 down to -(Tq - 1) (`relative_positional_encoding`).

    Args:
        scores: [..., Tq, P] with P = Tk + Tq - 1.
    Returns:
        [..., Tq, Tk] with out[i, j] = scores[i, (Tk - 1) - (Tk - Tq + i - j)] = scores[i, Tq - 1 - i + j].
    """
    Tq = scores.shape[-2]
    i = torch.arange(Tq, device=scores.device)[:, None]
    j = torch.arange(num_keys, device=scores.device)[None, :]
    index = (Tq - 1 - i + j).expand(*scores.shape[:-1], num_keys)  # [..., Tq, Tk]
    return scores.gather(-1, index)


def rel_shift(scores: torch.Tensor, num_keys: int) -> torch.Tensor:
    """`rel_shift_reference` as a copy-free view (Transformer-XL's skewing trick).

    out[i, j] = scores[i, Tq - 1 - i + j] is element (Tq - 1) + i * (P - 1) + j of the flattened
    [Tq, P] rows: a slice of the flat buffer viewed with row stride P - 1. Needs P - 1 >= Tk,
    i.e. Tq >= 2; a single query is already aligned (out = scores[..., :Tk]).
    """
    *lead, Tq, P = scores.shape
    assert P == num_keys + Tq - 1, (scores.shape, num_keys)
    if Tq == 1:
        return scores[..., :num_keys]
    flat = scores.reshape(*lead, Tq * P)  # [..., Tq * P]
    skewed = flat[..., Tq - 1 : Tq - 1 + Tq * (P - 1)].view(*lead, Tq, P - 1)  # [..., Tq, P - 1]
    return skewed[..., :num_keys]  # [..., Tq, Tk]


class RelPositionMultiHeadAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (Dai et al. 2019, §3.3).

    score(i, j) = [(q_i + u) . k_j + (q_i + v) . W_pos r_(i-j)] / sqrt(d_k), u = pos_bias_u and
    v = pos_bias_v per head. The content term and the softmax run in
    `F.scaled_dot_product_attention`; the position term and the mask enter as its additive
    float mask.
    """

    def __init__(self, d_model: int, n_heads: int, dropout_att: float):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.h, self.d_k = n_heads, d_model // n_heads
        self.dropout_att = dropout_att
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(n_heads, self.d_k))  # [H, d_k], content bias
        self.pos_bias_v = nn.Parameter(torch.zeros(n_heads, self.d_k))  # [H, d_k], position bias

    def forward(self, x: torch.Tensor, memory: torch.Tensor, pos_emb: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: [B, Tq, D] queries (the new frames).
            memory: [B, Tk, D] keys/values input: cached frames then x (memory is x offline).
            pos_emb: [P, D] encodings of distances Tk - 1 .. -(Tq - 1), P = Tk + Tq - 1.
            mask: [B, Tq, Tk] bool, True where attention is allowed.
        Returns:
            [B, Tq, D]
        """
        B, Tq, D = x.shape
        Tk = memory.shape[1]
        H, d_k = self.h, self.d_k
        q = self.linear_q(x).view(B, Tq, H, d_k)  # [B, Tq, H, d_k]
        k = self.linear_k(memory).view(B, Tk, H, d_k).transpose(1, 2)  # [B, H, Tk, d_k]
        v = self.linear_v(memory).view(B, Tk, H, d_k).transpose(1, 2)  # [B, H, Tk, d_k]
        p = self.linear_pos(pos_emb).view(-1, H, d_k).transpose(0, 1)  # [H, P, d_k]
        q_u = (q + self.pos_bias_u).transpose(1, 2)  # [B, H, Tq, d_k]
        q_v = (q + self.pos_bias_v).transpose(1, 2)  # [B, H, Tq, d_k]
        scale = 1.0 / math.sqrt(d_k)
        matrix_bd = rel_shift(torch.matmul(q_v, p.transpose(1, 2)), Tk)  # [B, H, Tq, Tk]
        bias = (matrix_bd * scale).masked_fill(~mask[:, None], MASKED_SCORE)  # [B, H, Tq, Tk]
        dropout = self.dropout_att if self.training else 0.0
        out = F.scaled_dot_product_attention(q_u, k, v, attn_mask=bias, dropout_p=dropout, scale=scale)
        return self.linear_out(out.transpose(1, 2).reshape(B, Tq, D))  # [B, Tq, D]


# ---------------------------------------------------------------------------------------
# Feed-forward and convolution modules, the Conformer layer.
# ---------------------------------------------------------------------------------------


class ConformerFeedForward(nn.Module):
    """Linear(D, 4D) -> Swish -> dropout -> Linear(4D, D)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, T, D]"""
        return self.linear2(self.dropout(F.silu(self.linear1(x))))


def causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Depthwise 1-D convolution over time, written as K shifted multiply-adds on [B, T, D].

    out[:, t] = bias + sum_k weight[:, 0, k] * x[:, t + k] for t < T_in - K + 1: `F.conv1d(x.transpose(1, 2),
    weight, bias, groups=D)` without the transposes, and several times faster to train on CPU
    (mkldnn's grouped convolution backward is slow for this shape).

    Args:
        x: [B, T_in, D] input, already left-padded / preceded by its cache.
        weight: [D, 1, K] (nn.Conv1d's depthwise weight).
        bias: [D] or None.
    Returns:
        [B, T_in - K + 1, D]
    """
    K = weight.shape[2]
    T = x.shape[1] - K + 1
    taps = weight[:, 0, :].t()  # [K, D]
    out = x[:, 0:T] * taps[0]
    for k in range(1, K):  # K (9) shifted slices; the loop is over the kernel, not over time
        out = out + x[:, k:k + T] * taps[k]
    return out if bias is None else out + bias


class ConformerConvolution(nn.Module):
    """Pointwise conv (D -> 2D) -> GLU -> causal depthwise conv (kernel K) -> norm -> Swish -> pointwise conv.

    Weights keep NeMo's Conv1d shapes ([2D, D, 1], [D, 1, K], [D, D, 1]); the computation runs
    on [B, T, D], the layout the rest of the layer uses. The norm is named `batch_norm` as in
    NeMo even when it is a LayerNorm (NeMo's streaming models use LayerNorm, which also keeps
    padded frames out of the statistics).
    """

    def __init__(self, d_model: int, kernel_size: int, norm_type: str):
        super().__init__()
        self.kernel_size = kernel_size
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise_conv = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model)  # run causally, below
        if norm_type == "layer_norm":
            self.batch_norm: nn.Module = nn.LayerNorm(d_model)
        elif norm_type == "batch_norm":
            self.batch_norm = nn.BatchNorm1d(d_model)
        else:
            raise ValueError(f"conv_norm_type must be 'layer_norm' or 'batch_norm', got {norm_type!r}")
        self.pointwise_conv2 = nn.Conv1d(d_model, d_model, 1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor,
                cache: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: [B, T, D]
            valid: [B, T] bool; padded frames are zeroed before the depthwise convolution.
            cache: [B, D, K - 1] the depthwise input of the K - 1 frames before x (None: zeros,
                the causal left padding).
        Returns:
            (y [B, T, D], new cache [B, D, K - 1]: the depthwise input of the last K - 1 frames)
        """
        h = F.linear(x, self.pointwise_conv1.weight[:, :, 0], self.pointwise_conv1.bias)  # [B, T, 2D]
        h = F.glu(h, dim=-1).masked_fill(~valid[:, :, None], 0.0)  # [B, T, D]
        if cache is None:
            h = F.pad(h, (0, 0, self.kernel_size - 1, 0))  # [B, K - 1 + T, D]
        else:
            h = torch.cat([cache.transpose(1, 2), h], dim=1)  # [B, K - 1 + T, D]
        new_cache = h[:, h.shape[1] - (self.kernel_size - 1):].transpose(1, 2)  # [B, D, K - 1]
        h = causal_depthwise_conv(h, self.depthwise_conv.weight, self.depthwise_conv.bias)  # [B, T, D]
        if isinstance(self.batch_norm, nn.BatchNorm1d):
            h = self.batch_norm(h.transpose(1, 2)).transpose(1, 2)  # BatchNorm1d wants [B, D, T]
        else:
            h = self.batch_norm(h)
        h = F.silu(h)
        return F.linear(h, self.pointwise_conv2.weight[:, :, 0], self.pointwise_conv2.bias), new_cache


class ConformerLayer(nn.Module):
    """x + FF/2 -> + MHSA -> + Conv -> + FF/2 -> LayerNorm (NeMo's order: attention before convolution)."""

    FC_FACTOR = 0.5  # Macaron half-step feed-forward (Lu et al. 2019, as in the Conformer paper)

    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        d = cfg.d_model
        self.norm_feed_forward1 = nn.LayerNorm(d)
        self.feed_forward1 = ConformerFeedForward(d, d * cfg.ff_expansion_factor, cfg.dropout)
        self.norm_conv = nn.LayerNorm(d)
        self.conv = ConformerConvolution(d, cfg.conv_kernel_size, cfg.conv_norm_type)
        self.norm_self_att = nn.LayerNorm(d)
        self.self_attn = RelPositionMultiHeadAttention(d, cfg.n_heads, cfg.dropout_att)
        self.norm_feed_forward2 = nn.LayerNorm(d)
        self.feed_forward2 = ConformerFeedForward(d, d * cfg.ff_expansion_factor, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm_out = nn.LayerNorm(d)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Zero the last projection of each residual branch (feed-forwards, attention output,
        convolution), so a new layer is x -> norm_out(x) and a new encoder passes its subsampled
        input through (SkipInit, De & Smith 2020; zero-gamma, Goyal et al. 2017). With the default
        init the 8 random layers of the demo model scrambled the input: the CTC head first saw
        noise, and training drove the encoder to an input-independent output within ~600 steps
        (minivox/pretrained/MODEL_CARD.md)."""
        for out in (self.feed_forward1.linear2, self.feed_forward2.linear2, self.self_attn.linear_out,
                    self.conv.pointwise_conv2):
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, att_mask: torch.Tensor, valid: torch.Tensor,
                cache_channel: torch.Tensor | None = None, cache_time: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            x: [B, T, D] the new frames.
            pos_emb: [P, D] see `RelPositionMultiHeadAttention`.
            att_mask: [B, T, Tc + T] bool over (cached + new) keys; Tc = 0 offline.
            valid: [B, T] bool, real (unpadded) frames of x.
            cache_channel: [B, Tc, D] attention inputs of earlier frames, or None (offline).
            cache_time: [B, D, K - 1] depthwise-conv inputs of earlier frames, or None (zeros).
        Returns:
            (y [B, T, D], attention inputs [B, Tc + T, D], depthwise cache [B, D, K - 1]);
            the caller keeps what it needs of the last two.
        """
        residual = x + self.FC_FACTOR * self.dropout(self.feed_forward1(self.norm_feed_forward1(x)))
        h = self.norm_self_att(residual)  # [B, T, D]
        memory = h if cache_channel is None else torch.cat([cache_channel, h], dim=1)  # [B, Tc + T, D]
        residual = residual + self.dropout(self.self_attn(h, memory, pos_emb, att_mask))
        h, new_cache_time = self.conv(self.norm_conv(residual), valid, cache_time)
        residual = residual + self.dropout(h)
        residual = residual + self.FC_FACTOR * self.dropout(self.feed_forward2(self.norm_feed_forward2(residual)))
        return self.norm_out(residual), memory, new_cache_time


# ---------------------------------------------------------------------------------------
# Config, streaming state and the encoder.
# ---------------------------------------------------------------------------------------


@dataclass
class ConformerConfig:
    """FastConformer encoder hyper-parameters (NeMo ConformerEncoder argument names)."""

    feat_in: int = 80  # mel bins of the input features (DESIGN §4)
    n_layers: int = 8  # conformer blocks; NeMo FastConformer-small/medium use 16, the demo fewer for CPU
    d_model: int = 176  # width; 176 is FastConformer-small's, 256 medium's, 512 large's
    n_heads: int = 4  # attention heads; d_model / n_heads = 44 per head at 176
    ff_expansion_factor: int = 4  # feed-forward hidden = 4 * d_model, as in the Conformer paper
    conv_kernel_size: int = 9  # depthwise kernel; FastConformer uses 9 (720 ms of context at 80 ms frames)
    conv_norm_type: str = "layer_norm"  # "layer_norm" (NeMo streaming models) or "batch_norm" (offline NeMo)
    subsampling_factor: int = 8  # 10 ms features -> 80 ms encoder frames (FastConformer)
    subsampling_conv_channels: int = -1  # channels of the subsampling convs; -1 = d_model (NeMo's default)
    att_context_size: tuple[int, int] = (70, 1)  # [left, right] encoder frames, chunked_limited;
    #   [70, 1] = 160 ms chunks (80 ms look-ahead on average) with 5.6 s of left context; right = -1: offline
    train_att_contexts: list[tuple[int, int]] = field(default_factory=list)  # more [left, right] contexts to
    #   train on (NeMo's multi-look-ahead training): each batch draws one of these or att_context_size,
    #   uniformly; the model then streams with any of them (Transducer.set_att_context)
    xscaling: bool = True  # scale the subsampled frames by sqrt(d_model) before the layers (NeMo default)
    dropout: float = 0.1  # residual and feed-forward dropout (NeMo default)
    dropout_pre_encoder: float = 0.1  # dropout on the subsampled frames (NeMo default)
    dropout_emb: float = 0.0  # dropout on the relative positional encodings (FastConformer configs: 0)
    dropout_att: float = 0.1  # dropout on attention weights (NeMo FastConformer configs)

    def __post_init__(self):
        left, right = self.att_context_size
        checks = [
            (self.feat_in > 0 and self.n_layers > 0 and self.d_model > 0, "positive feat_in, n_layers, d_model"),
            (self.n_heads > 0 and self.d_model % self.n_heads == 0, "d_model divisible by n_heads"),
            (self.d_model % 2 == 0, "even d_model (sin/cos positional pairs)"),
            (self.conv_kernel_size >= 1, "conv_kernel_size >= 1"),
            (self.conv_norm_type in ("layer_norm", "batch_norm"), "conv_norm_type 'layer_norm' or 'batch_norm'"),
            (self.subsampling_factor >= 2 and self.subsampling_factor & (self.subsampling_factor - 1) == 0,
             "subsampling_factor a power of 2 >= 2"),
            (len(self.att_context_size) == 2 and left >= -1 and right >= -1, "att_context_size [left, right], each >= -1"),
            (right < 0 or left < 0 or left % (right + 1) == 0,
             "left context a multiple of the chunk size right + 1 (NeMo's rule)"),
            (all(len(c) == 2 and c[0] >= 0 and c[1] >= 0 and c[0] % (c[1] + 1) == 0 for c in self.train_att_contexts),
             "train_att_contexts of streaming [left, right] pairs, left a multiple of right + 1"),
        ]
        for ok, expected in checks:
            if not ok:
                raise ValueError(f"ConformerConfig: expected {expected}, got {self}")

    @property
    def chunk_size(self) -> int:
        """Encoder frames per attention chunk (right + 1); 0 when the right context is unlimited."""
        return self.att_context_size[1] + 1 if self.att_context_size[1] >= 0 else 0


@dataclass
class EncoderState:
    """Everything a streaming encoder carries between calls (see the module docstring).

    Streams in a batch advance together (the same number of frames per call).
    """

    cache_pre_encode: torch.Tensor  # [B, M, 2 * factor] the last feature frames received
    cache_last_channel: torch.Tensor  # [L, B, left, D] attention inputs of the last `left` encoder frames
    cache_last_time: torch.Tensor  # [L, B, D, K - 1] depthwise-conv inputs of the last K - 1 frames
    frames_in: int = 0  # feature frames received so far
    frames_out: int = 0  # encoder frames emitted so far (= absolute index of the next one)


class ConformerEncoder(nn.Module):
    """log-mel [B, M, T] -> encoder frames [B, ceil(T / 8), D], offline or streaming."""

    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        self.cfg = cfg
        channels = cfg.subsampling_conv_channels if cfg.subsampling_conv_channels > 0 else cfg.d_model
        self.pre_encode = CausalConvSubsampling(cfg.feat_in, cfg.d_model, channels, cfg.subsampling_factor)
        self.xscale = math.sqrt(cfg.d_model) if cfg.xscaling else 1.0
        self.dropout_pre_encoder = nn.Dropout(cfg.dropout_pre_encoder)
        self.dropout_emb = nn.Dropout(cfg.dropout_emb)
        self.layers = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.n_layers))
        # Fixed per-mel input normalisation (a streaming model cannot use per-utterance statistics):
        # train/asr.py sets them from training features before step 0; identity until then. Raw
        # log-mels sit far from 0 (digital silence is log(guard) = -16.6), which let the first demo
        # run collapse into an input-independent encoder; normalised inputs train.
        self.register_buffer("feat_mean", torch.zeros(cfg.feat_in))  # [M]
        self.register_buffer("feat_std", torch.ones(cfg.feat_in))  # [M]

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        """[B, M, T] log-mel -> (feats - feat_mean) / feat_std per mel bin. Zero padding (offline
        and the streaming caches' initial zeros alike) then stands for the mean frame."""
        return (feats - self.feat_mean[:, None]) / self.feat_std[:, None]

    @torch.no_grad()
    def set_feature_stats(self, feats: torch.Tensor, lengths: torch.Tensor) -> None:
        """Set feat_mean / feat_std from the valid frames of a batch of features [B, M, T]."""
        valid = valid_mask(lengths, feats.shape[2])  # [B, T]
        frames = feats.transpose(1, 2)[valid]  # [N, M]
        self.feat_mean.copy_(frames.mean(0))
        self.feat_std.copy_(frames.std(0).clamp_min(1e-3))

    def _check_features(self, feats: torch.Tensor) -> None:
        if feats.ndim != 3 or feats.shape[1] != self.cfg.feat_in or not feats.is_floating_point():
            raise ValueError(f"ConformerEncoder expects float features [B, {self.cfg.feat_in}, T], "
                             f"got {feats.dtype} {tuple(feats.shape)}")

    def _layers(self, x: torch.Tensor, lengths: torch.Tensor, start: int, state: EncoderState | None
                ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Run the conformer layers on frames start .. start + T - 1 ([B, T, D]) with the
        attention/convolution caches of `state` (None: offline, nothing before `start` = 0)."""
        B, T, D = x.shape
        cached = 0 if state is None else state.cache_last_channel.shape[2]  # Tc
        q_pos = torch.arange(start, start + T, device=x.device)  # [T]
        k_pos = torch.arange(start - cached, start + T, device=x.device)  # [Tc + T]
        att_mask = chunked_limited_mask(q_pos, k_pos, self.cfg.att_context_size)[None] & \
            valid_mask(lengths, cached + T, start - cached)[:, None, :]  # [B, T, Tc + T]
        valid = valid_mask(lengths, T, start)  # [B, T]
        pos_emb = self.dropout_emb(relative_positional_encoding(
            cached + T - 1, -(T - 1), D, device=x.device, dtype=x.dtype))  # [Tc + 2T - 1, D]
        channel, time = [], []
        for i, layer in enumerate(self.layers):
            x, memory, cache_time = layer(
                x, pos_emb, att_mask, valid,
                None if state is None else state.cache_last_channel[i],
                None if state is None else state.cache_last_time[i],
            )
            channel.append(memory)
            time.append(cache_time)
        return x, channel, time

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Offline encoding (training, file transcription).

        Args:
            feats: [B, M, T] log-mel features.
            lengths: [B] int, valid feature frames per row (None: all T).
        Returns:
            (encoded [B, T', D] with T' = ceil(T / factor), encoded_lengths [B] = ceil(lengths / factor));
            frames at or beyond a row's length are zero.
        """
        self._check_features(feats)
        if lengths is None:
            lengths = torch.full((feats.shape[0],), feats.shape[2], dtype=torch.long, device=feats.device)
        if feats.shape[2] == 0:  # empty input: no frames (the convolutions need at least one)
            return feats.new_zeros(feats.shape[0], 0, self.cfg.d_model), torch.zeros_like(lengths)
        x, enc_lengths = self.pre_encode(self.normalize(feats), lengths)  # [B, T', D]
        x = x.masked_fill(~valid_mask(enc_lengths, x.shape[1])[:, :, None], 0.0)  # padding stays finite
        x = self.dropout_pre_encoder(x * self.xscale)
        x, _, _ = self._layers(x, enc_lengths, 0, None)
        return x.masked_fill(~valid_mask(enc_lengths, x.shape[1])[:, :, None], 0.0), enc_lengths

    # ---- streaming --------------------------------------------------------------------

    @property
    def pre_encode_cache_size(self) -> int:
        """Feature frames a streaming step keeps from earlier calls: 2 * factor (module docstring)."""
        return STREAM_DROP_FRAMES * self.cfg.subsampling_factor

    def initial_state(self, batch_size: int = 1, device=None, dtype=torch.float32) -> EncoderState:
        """Caches of a stream that has not started: zeros (they stand for the left padding)."""
        cfg = self.cfg
        left = cfg.att_context_size[0]
        if left < 0 or cfg.att_context_size[1] < 0:
            raise ValueError(f"streaming needs a limited context, got att_context_size={cfg.att_context_size}")
        return EncoderState(
            cache_pre_encode=torch.zeros(batch_size, cfg.feat_in, self.pre_encode_cache_size, device=device, dtype=dtype),
            cache_last_channel=torch.zeros(cfg.n_layers, batch_size, left, cfg.d_model, device=device, dtype=dtype),
            cache_last_time=torch.zeros(cfg.n_layers, batch_size, cfg.d_model, cfg.conv_kernel_size - 1,
                                        device=device, dtype=dtype),
        )

    def feature_frames_for(self, frames_out: int) -> int:
        """Feature frames a stream needs in total before encoder frame `frames_out - 1` exists:
        frame j reads feature frames up to factor * j, so factor * (frames_out - 1) + 1 (0 for none)."""
        return self.cfg.subsampling_factor * (frames_out - 1) + 1 if frames_out > 0 else 0

    def stream_step(self, feats: torch.Tensor, state: EncoderState, last: bool = False
                    ) -> tuple[torch.Tensor, EncoderState]:
        """Encode the next feature frames of B streams, given the state after the earlier ones.

        A call emits every encoder frame whose input is complete: after n feature frames in
        total, frames up to ceil(n / factor) - 1. For the result to equal the offline encoder,
        each call must end on an attention-chunk boundary (total encoder frames a multiple of
        the chunk size: feed `feature_frames_for(k * chunk)` frames in total), except the last
        call of a stream (`last=True`), which may end anywhere.

        Args:
            feats: [B, M, T_new] the next feature frames (T_new >= 0).
            state: from `initial_state` or the previous call (not modified).
            last: this call ends the stream; skips the chunk-boundary check.
        Returns:
            (encoded [B, T_out, D] new encoder frames, the state after this call)
        Raises:
            ValueError: wrong feature shape, or a non-final call that ends inside a chunk.
        """
        self._check_features(feats)
        cfg, factor = self.cfg, self.cfg.subsampling_factor
        B, M, T_new = feats.shape
        if state.cache_pre_encode.shape[0] != B:
            raise ValueError(f"state is for {state.cache_pre_encode.shape[0]} streams, features for {B}")
        frames_in = state.frames_in + T_new
        frames_out = subsampled_length(frames_in, factor)
        if not last and frames_out % cfg.chunk_size:
            raise ValueError(
                f"a streaming step must end on a chunk boundary ({cfg.chunk_size} encoder frames = "
                f"{factor * cfg.chunk_size} feature frames; the first step needs {factor * (cfg.chunk_size - 1) + 1}): "
                f"{frames_in} feature frames give {frames_out} encoder frames")
        # Re-read the feature frames from `start` on: the window's first STREAM_DROP_FRAMES
        # outputs saw zeros instead of earlier frames and are dropped.
        start = factor * (state.frames_out - STREAM_DROP_FRAMES)
        history = torch.cat([state.cache_pre_encode, self.normalize(feats)], dim=2)  # [B, M, 2 * factor + T_new]
        keep = state.frames_in - start  # cached frames the window needs (<= 2 * factor)
        window = history[:, :, self.pre_encode_cache_size - keep:]  # [B, M, keep + T_new], frame 0 at `start`
        lengths = torch.full((B,), frames_in, dtype=torch.long, device=feats.device)
        x, _ = self.pre_encode(window, lengths, start)  # frames start // factor .. frames_out - 1
        x = x[:, STREAM_DROP_FRAMES:] * self.xscale  # [B, frames_out - state.frames_out, D]; no dropout
        history_tail = history[:, :, history.shape[2] - self.pre_encode_cache_size:]  # [B, M, 2 * factor]
        if x.shape[1] == 0:  # not enough new features for a new encoder frame
            return x, EncoderState(history_tail, state.cache_last_channel, state.cache_last_time,
                                   frames_in, state.frames_out)
        enc_lengths = torch.full_like(lengths, frames_out)
        x, channel, time = self._layers(x, enc_lengths, state.frames_out, state)
        left = cfg.att_context_size[0]
        new_state = EncoderState(
            cache_pre_encode=history_tail,
            cache_last_channel=torch.stack([m[:, m.shape[1] - left:] for m in channel]),  # [L, B, left, D]
            cache_last_time=torch.stack(time),  # [L, B, D, K - 1]
            frames_in=frames_in,
            frames_out=frames_out,
        )
        return x, new_state
