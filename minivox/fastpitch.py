"""FastPitch with a learned aligner: text symbols -> log-mel spectrogram, parallel (non-autoregressive).

    symbols [B, N] --Embedding + FFT encoder--> h [B, N, D]
        duration predictor(h) -> log(1 + frames) per symbol      pitch predictor(h) -> normalised F0 per symbol
        h + pitch embedding(pitch)          (target pitch while training, predicted pitch at inference)
        --length regulator (durations / pace)--> [B, M, D] --FFT decoder--> Linear --> mel [B, 80, M]

FastPitch: Lancucki 2021, "FastPitch: Parallel text-to-speech with pitch prediction" (arXiv 2006.06873).
Aligner: Badlani et al. 2021, "One TTS Alignment To Rule Them All" (arXiv 2108.10447): a soft
attention of mel frames over symbols from small conv encoders, with a beta-binomial prior that
favours the diagonal, trained with a forward-sum (CTC) loss; the durations are its hard
alignment by monotonic alignment search (kernels/mas.py), and a binarisation loss pulls the soft
attention towards that hard one once it is switched on (after a warm-up).

Training: the decoder sees the encoder output stretched by the aligner's durations, and the pitch
embedding of the target pitch averaged per symbol; the predictors learn those durations and
pitches (teacher forcing). Inference uses the predictors.

Module names and parameter shapes follow NeMo's FastPitchModule (`encoder.layers.0.dec_attn.qkv_net`,
`pos_ff.CoreNet.0`, `duration_predictor.layers.0.conv`, `pitch_emb`, `proj`, `aligner.key_proj.0`)
where that costs nothing. Three deliberate differences, all for padding invariance (a batch row
equals the item run alone, tested): the conv feed-forward re-zeroes padding between its two convs
(NeMo's does not, so there the last k // 2 symbols of a shorter item see the hidden layer's bias
from the padding), the predictors do the same between their conv layers, and the aligner masks
its inputs.

Pitch is in Hz per mel frame from minivox.pitch (0 = unvoiced), averaged over the voiced frames
of each symbol and normalised with the corpus mean and std stored in the config.

Shape letters: B batch, N symbols, M mel frames, D model width, H heads, K head width, C channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minivox.audio import TTS_FEATURES
from minivox.checkpoint import load_checkpoint, load_state_dict, save_checkpoint
from minivox.config import from_dict, load_config
from minivox.text import TTS_PAD_ID, TTS_SYMBOLS

__all__ = [
    "FastPitchConfig", "FastPitchLossWeights", "FastPitch", "FastPitchOutput", "FastPitchInference",
    "lengths_to_mask", "regulate_length", "average_pitch", "beta_binomial_prior", "forward_sum_loss",
    "binarization_loss", "fastpitch_losses", "load_model_config",
]

LOG_PRIOR_GUARD = 1e-8  # log(prior + guard): the prior is 0 far off the diagonal (NeMo's value)
CTC_BLANK_LOGPROB = -1.0  # score of the forward-sum "blank" column before the log-softmax (NeMo's value)
CTC_PAD_LOGPROB = -1e4  # padded symbols in the forward-sum loss: exp(-1e4) == 0 in float32


# ---------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------


@dataclass
class FastPitchConfig:
    """Everything that defines a FastPitch model. Defaults are NeMo's FastPitch (LJSpeech) sizes."""

    n_symbols: int = len(TTS_SYMBOLS)  # input alphabet: minivox.text.TTS_SYMBOLS (id 0 = padding)
    n_mels: int = TTS_FEATURES.n_mels  # output mel bands (the TTS features of DESIGN §4)
    d_model: int = 384  # D: symbol embedding and transformer width
    n_heads: int = 1  # H attention heads (NeMo: 1)
    d_head: int = 64  # K: width per head
    d_inner: int = 1536  # conv feed-forward hidden channels (4 x D)
    kernel_size: int = 3  # conv feed-forward kernel (FastSpeech's 1-D conv instead of a position-wise MLP)
    encoder_layers: int = 6  # FFT blocks over symbols
    decoder_layers: int = 6  # FFT blocks over mel frames
    dropout: float = 0.1  # on attention and feed-forward outputs
    dropout_attention: float = 0.1  # on attention weights
    dropout_embedding: float = 0.0  # on embedding + positions
    predictor_filters: int = 256  # duration/pitch predictor conv channels
    predictor_kernel: int = 3
    predictor_layers: int = 2  # conv-ReLU-LN-dropout blocks before the Linear
    predictor_dropout: float = 0.1
    pitch_embedding_kernel: int = 3  # Conv1d(1, D) over the per-symbol pitch
    aligner_channels: int = 80  # width where mel frames and symbols are compared
    aligner_temperature: float = 0.0005  # attention logits = -temperature * squared distance (NeMo)
    prior_scaling: float = 1.0  # beta-binomial prior: alpha = scaling * frame, beta = scaling * (M + 1 - frame)
    max_duration: int = 75  # frames; a predicted duration is clamped to this (0.87 s)
    pitch_mean: float = 0.0  # Hz; corpus mean of voiced F0 (set by train/fastpitch.py from the data)
    pitch_std: float = 1.0  # Hz; corpus std of voiced F0

    def __post_init__(self):
        if self.kernel_size % 2 == 0 or self.predictor_kernel % 2 == 0 or self.pitch_embedding_kernel % 2 == 0:
            raise ValueError(f"FastPitchConfig: kernel sizes must be odd (same-length convs), got {self}")
        if self.pitch_std <= 0:
            raise ValueError(f"FastPitchConfig: pitch_std must be > 0, got {self.pitch_std}")


@dataclass
class FastPitchLossWeights:
    """Weights of the training losses (NeMo's FastPitch recipe; Badlani et al. 2021 for the aligner terms)."""

    mel: float = 1.0  # masked MSE of the log-mel frames
    duration: float = 0.1  # MSE of log(1 + frames) per symbol (NeMo dur_loss_scale)
    pitch: float = 0.1  # MSE of normalised pitch per symbol (NeMo pitch_loss_scale)
    forward_sum: float = 1.0  # aligner CTC loss (NeMo aligner_loss_scale)
    binarization: float = 1.0  # final weight of the binarisation loss, after its warm-up
    binarization_start_step: int = 2000  # steps of soft alignment only, before the binarisation loss starts
    binarization_warmup_steps: int = 2000  # then its weight rises linearly to `binarization`

    def binarization_weight(self, step: int) -> float:
        """The binarisation loss weight at optimizer step `step`."""
        if step < self.binarization_start_step:
            return 0.0
        ramp = (step - self.binarization_start_step + 1) / max(1, self.binarization_warmup_steps)
        return self.binarization * min(1.0, ramp)


def load_model_config(path: str | Path, overrides: Sequence[str] = ()) -> FastPitchConfig:
    """The `[model]` table of a preset (configs/fastpitch_*.toml) as a FastPitchConfig; overrides are relative to it."""
    return load_config(FastPitchConfig, path, overrides, section="model")


# ---------------------------------------------------------------------------------------
# Helpers: masks, length regulator, pitch averaging
# ---------------------------------------------------------------------------------------


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """lengths [B] -> mask [B, T] bool, True at valid positions (t < length)."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def regulate_length(x: torch.Tensor, durations: torch.Tensor, pace: float = 1.0,
                    max_frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Length regulator: repeat each symbol's vector for its number of frames.

    Args:
        x: [B, N, D] per-symbol vectors.
        durations: [B, N] frames per symbol (float or int; 0 past each item's symbols).
        pace: speaking rate; frames = round(durations / pace), so pace 2 is twice as fast.
        max_frames: pad/crop the output to this many frames (default: the longest item).
    Returns:
        (frames [B, M, D] with zeros past each item's length, lengths [B] = sum of rounded durations).
    """
    if pace <= 0:
        raise ValueError(f"regulate_length: pace must be > 0, got {pace}")
    B, N, D = x.shape
    repeats = torch.floor(durations.float() / pace + 0.5).long()  # [B, N] (NeMo's rounding)
    ends = torch.cumsum(repeats, dim=1)  # [B, N]: first frame after symbol n
    lengths = ends[:, -1] if N else repeats.new_zeros(B)  # [B]
    if max_frames is None:
        max_frames = int(lengths.max()) if B else 0
    if N == 0:
        return x.new_zeros(B, max_frames, D), lengths
    frames = torch.arange(max_frames, device=x.device)  # [M]
    symbol = torch.searchsorted(ends, frames.expand(B, max_frames).contiguous(), right=True)  # [B, M]: ends <= m
    out = torch.gather(x, 1, symbol.clamp_max(N - 1)[..., None].expand(-1, -1, D))  # [B, M, D]
    valid = frames[None, :] < lengths[:, None]  # [B, M]
    return out * valid[..., None], lengths  # [B, M, D], [B]


def average_pitch(pitch: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
    """Mean F0 over each symbol's voiced frames.

    pitch [B, M] Hz per frame (0 = unvoiced), durations [B, N] int -> [B, N] Hz (0 where a
    symbol has no voiced frame)."""
    ends = torch.cumsum(durations, dim=1)  # [B, N]
    voiced = (pitch > 0).to(pitch.dtype)  # [B, M]
    # Cumulative sums read at the symbol boundaries give per-symbol sums without a loop.
    total = F.pad(torch.cumsum(pitch, dim=1), (1, 0))  # [B, M + 1]
    count = F.pad(torch.cumsum(voiced, dim=1), (1, 0))  # [B, M + 1]
    ends = ends.clamp_max(pitch.shape[1])
    starts = ends - durations.clamp_min(0)
    sums = total.gather(1, ends) - total.gather(1, starts.clamp_min(0))  # [B, N]
    counts = count.gather(1, ends) - count.gather(1, starts.clamp_min(0))  # [B, N]
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.zeros_like(sums))


# ---------------------------------------------------------------------------------------
# FFT blocks (FastSpeech "feed-forward Transformer", post-LN)
# ---------------------------------------------------------------------------------------


class SinusoidalPositions(nn.Module):
    """Transformer positions: position p -> [sin(p w_i), cos(p w_i)], w_i = 10000^(-2i/D) (NeMo PositionalEmbedding)."""

    def __init__(self, d_model: int):
        super().__init__()
        inv_freq = 1.0 / (10000 ** (torch.arange(0.0, d_model, 2.0) / d_model))  # [D / 2]
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, length: int) -> torch.Tensor:
        """-> [T, D] for positions 0..length-1."""
        angles = torch.arange(length, device=self.inv_freq.device, dtype=self.inv_freq.dtype)[:, None] * self.inv_freq
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # [T, D]


class MultiHeadAttention(nn.Module):
    """Self-attention + residual + LayerNorm (post-LN), NeMo's MultiHeadAttn."""

    def __init__(self, cfg: FastPitchConfig):
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        self.qkv_net = nn.Linear(cfg.d_model, 3 * cfg.n_heads * cfg.d_head)
        self.o_net = nn.Linear(cfg.n_heads * cfg.d_head, cfg.d_model, bias=False)
        self.layer_norm = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.dropatt = nn.Dropout(cfg.dropout_attention)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, D], mask [B, T] bool -> [B, T, D]."""
        B, T, _ = x.shape
        q, k, v = self.qkv_net(x).view(B, T, 3, self.n_heads, self.d_head).unbind(2)  # 3 x [B, T, H, K]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, K]
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)  # [B, H, T, T]
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))  # padded keys get no weight
        weights = self.dropatt(torch.softmax(scores, dim=-1))
        attended = (weights @ v).transpose(1, 2).reshape(B, T, self.n_heads * self.d_head)  # [B, T, H*K]
        return self.layer_norm(x + self.drop(self.o_net(attended)))


class ConvFeedForward(nn.Module):
    """Conv1d(D -> d_inner, k) -> ReLU -> Conv1d(d_inner -> D, k) -> dropout, + residual, LayerNorm
    (NeMo's PositionwiseConvFF; `CoreNet` indices 0 and 2 are the convs)."""

    def __init__(self, cfg: FastPitchConfig):
        super().__init__()
        pad = cfg.kernel_size // 2
        self.CoreNet = nn.Sequential(
            nn.Conv1d(cfg.d_model, cfg.d_inner, cfg.kernel_size, padding=pad), nn.ReLU(),
            nn.Conv1d(cfg.d_inner, cfg.d_model, cfg.kernel_size, padding=pad), nn.Dropout(cfg.dropout),
        )
        self.layer_norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] (zeros at padding), mask [B, T] -> [B, T, D]."""
        conv1, relu, conv2, dropout = self.CoreNet
        keep = mask[:, None, :].to(x.dtype)  # [B, 1, T]
        hidden = relu(conv1(x.transpose(1, 2))) * keep  # [B, d_inner, T]; re-zeroed so conv2 reads no padding
        return self.layer_norm(x + dropout(conv2(hidden)).transpose(1, 2))


class FFTBlock(nn.Module):
    """One FFT block: attention then conv feed-forward, padding re-zeroed after each (NeMo TransformerLayer)."""

    def __init__(self, cfg: FastPitchConfig):
        super().__init__()
        self.dec_attn = MultiHeadAttention(cfg)
        self.pos_ff = ConvFeedForward(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, D], mask [B, T] -> [B, T, D]."""
        keep = mask[..., None].to(x.dtype)  # [B, T, 1]
        x = self.dec_attn(x, mask) * keep
        return self.pos_ff(x, mask) * keep


class FFTransformer(nn.Module):
    """Positions + FFT blocks, with a symbol embedding in front for the encoder (NeMo FFTransformerEncoder/Decoder)."""

    def __init__(self, cfg: FastPitchConfig, n_layers: int, n_embed: int | None = None):
        super().__init__()
        self.word_emb = nn.Embedding(n_embed, cfg.d_model, padding_idx=TTS_PAD_ID) if n_embed else None
        self.pos_emb = SinusoidalPositions(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout_embedding)
        self.layers = nn.ModuleList(FFTBlock(cfg) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: symbol ids [B, N] (encoder) or vectors [B, T, D] (decoder); lengths [B] -> ([B, T, D], mask [B, T])."""
        if self.word_emb is not None:
            x = self.word_emb(x)  # [B, N, D]
        mask = lengths_to_mask(lengths, x.shape[1])  # [B, T]
        keep = mask[..., None].to(x.dtype)
        out = self.drop(x + self.pos_emb(x.shape[1]).to(x.dtype) * keep) * keep
        for layer in self.layers:
            out = layer(out, mask)
        return out, mask


# ---------------------------------------------------------------------------------------
# Duration / pitch predictors
# ---------------------------------------------------------------------------------------


class ConvReLUNorm(nn.Module):
    """Conv1d -> ReLU -> LayerNorm over channels -> dropout (NeMo ConvReLUNorm)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(out_channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C_in, N] -> [B, C_out, N]."""
        out = F.relu(self.conv(x))  # [B, C_out, N]
        return self.dropout(self.norm(out.transpose(1, 2)).transpose(1, 2))  # LN over channels


class TemporalPredictor(nn.Module):
    """One value per symbol from the encoder output: (ConvReLUNorm x n) -> Linear(filters, 1)."""

    def __init__(self, cfg: FastPitchConfig):
        super().__init__()
        channels = [cfg.d_model] + [cfg.predictor_filters] * cfg.predictor_layers
        self.layers = nn.ModuleList(
            ConvReLUNorm(c_in, c_out, cfg.predictor_kernel, cfg.predictor_dropout)
            for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        self.fc = nn.Linear(cfg.predictor_filters, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, N, D], mask [B, N] -> [B, N] (0 at padding)."""
        keep = mask[:, None, :].to(x.dtype)  # [B, 1, N]
        out = x.transpose(1, 2) * keep  # [B, D, N]
        for layer in self.layers:
            out = layer(out) * keep  # re-zero padding so the next conv sees what the item alone would
        return self.fc(out.transpose(1, 2)).squeeze(-1) * mask  # [B, N]


# ---------------------------------------------------------------------------------------
# Aligner (Badlani et al. 2021)
# ---------------------------------------------------------------------------------------


def beta_binomial_prior(text_lens: torch.Tensor, mel_lens: torch.Tensor, scaling: float = 1.0,
                        max_text: int | None = None, max_mel: int | None = None) -> torch.Tensor:
    """Beta-binomial alignment prior [B, M, N]: for frame m (1-based) of M, the probability of symbol
    k in 0..N-1 is BetaBinomial(k; n=N-1, a=scaling*m, b=scaling*(M+1-m)); zero outside the lengths.

    Its mass moves along the diagonal from the first symbol at the first frame to the last at the last.
    """
    N = int(text_lens.max()) if max_text is None else max_text
    M = int(mel_lens.max()) if max_mel is None else max_mel
    dev = text_lens.device
    k = torch.arange(N, device=dev, dtype=torch.float64)[None, None, :]  # [1, 1, N]
    m = torch.arange(1, M + 1, device=dev, dtype=torch.float64)[None, :, None]  # [1, M, 1]
    n = (text_lens.double() - 1)[:, None, None]  # [B, 1, 1]
    a = scaling * m  # [1, M, 1]
    b = scaling * (mel_lens.double()[:, None, None] + 1 - m)  # [B, M, 1]

    def log_beta(x, y):
        return torch.lgamma(x) + torch.lgamma(y) - torch.lgamma(x + y)

    # log C(n, k) + log B(k + a, n - k + b) - log B(a, b); clamps keep lgamma finite where masked below
    n_minus_k = (n - k).clamp_min(0)
    log_pmf = (torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n_minus_k + 1)
               + log_beta(k + a, n_minus_k + b.clamp_min(1e-3)) - log_beta(a, b.clamp_min(1e-3)))
    valid = (k < text_lens[:, None, None]) & (m <= mel_lens[:, None, None])  # [B, M, N]
    return torch.where(valid, log_pmf.exp(), torch.zeros_like(log_pmf)).float()


class AlignmentEncoder(nn.Module):
    """Soft attention of mel frames over symbols (NeMo AlignmentEncoder): conv encoders for keys
    (symbol embeddings) and queries (mel frames), logits = -temperature * squared L2 distance."""

    def __init__(self, cfg: FastPitchConfig):
        super().__init__()
        D, M, C = cfg.d_model, cfg.n_mels, cfg.aligner_channels
        self.temperature = cfg.aligner_temperature
        self.key_proj = nn.Sequential(nn.Conv1d(D, 2 * D, 3, padding=1), nn.ReLU(), nn.Conv1d(2 * D, C, 1))
        self.query_proj = nn.Sequential(
            nn.Conv1d(M, 2 * M, 3, padding=1), nn.ReLU(), nn.Conv1d(2 * M, M, 1), nn.ReLU(), nn.Conv1d(M, C, 1))

    def forward(self, mels: torch.Tensor, mel_mask: torch.Tensor, text_emb: torch.Tensor, text_mask: torch.Tensor,
                prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mels [B, n_mels, M], mel_mask [B, M], text_emb [B, N, D], text_mask [B, N], prior [B, M, N]
        -> (soft attention [B, M, N] (rows sum to 1 over valid symbols), log attention [B, M, N] with
        the prior folded in, -inf at padded symbols)."""
        keys = self.key_proj(text_emb.transpose(1, 2) * text_mask[:, None, :])  # [B, C, N]
        queries = self.query_proj(mels * mel_mask[:, None, :])  # [B, C, M]
        # squared distance ||q - k||^2 = ||q||^2 + ||k||^2 - 2 q.k, without a [B, C, M, N] temporary
        distance = (queries.pow(2).sum(1)[:, :, None] + keys.pow(2).sum(1)[:, None, :]
                    - 2 * queries.transpose(1, 2) @ keys)  # [B, M, N]
        logits = -self.temperature * distance.clamp_min(0.0)
        logits = logits.masked_fill(~text_mask[:, None, :], float("-inf"))
        log_attn = torch.log_softmax(logits, dim=-1) + torch.log(prior + LOG_PRIOR_GUARD)  # [B, M, N]
        log_attn = log_attn.masked_fill(~text_mask[:, None, :], float("-inf"))
        return torch.softmax(log_attn, dim=-1), log_attn


def forward_sum_loss(log_attn: torch.Tensor, text_lens: torch.Tensor, mel_lens: torch.Tensor) -> torch.Tensor:
    """Aligner loss: -log of the total probability of all monotonic alignments (every symbol visited
    in order), as CTC with target 1..N over a blank column scored CTC_BLANK_LOGPROB, per item mean
    over symbols (CTC 'mean'), averaged over the batch (NeMo ForwardSumLoss).

    log_attn [B, M, N] (-inf at padded symbols) -> scalar."""
    B, M, N = log_attn.shape
    # Padded symbols: a finite floor instead of -inf (exp() is 0 either way; torch's CTC backward
    # turns -inf inputs into NaN gradients). They lie past every target, so no path uses them.
    finite = log_attn.masked_fill(torch.isneginf(log_attn), CTC_PAD_LOGPROB)
    padded = F.pad(finite, (1, 0), value=CTC_BLANK_LOGPROB)  # [B, M, N + 1]: column 0 = blank
    log_probs = torch.log_softmax(padded, dim=-1).transpose(0, 1)  # [M, B, N + 1] (time first for CTC)
    targets = torch.arange(1, N + 1, device=log_attn.device).expand(B, N)  # [B, N]
    return F.ctc_loss(log_probs, targets, mel_lens, text_lens, blank=0, reduction="mean", zero_infinity=True)


def binarization_loss(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """-mean log soft attention on the hard path: hard [B, M, N] in {0, 1}, soft [B, M, N] -> scalar."""
    on_path = hard > 0
    return -torch.log(soft[on_path].clamp_min(1e-12)).sum() / on_path.sum().clamp_min(1)


# ---------------------------------------------------------------------------------------
# FastPitch
# ---------------------------------------------------------------------------------------


@dataclass
class FastPitchOutput:
    """What a training forward pass returns (all on the model's device)."""

    mels: torch.Tensor  # [B, n_mels, M] predicted log-mel, 0 past mel_lens
    log_durations: torch.Tensor  # [B, N] predicted log(1 + frames)
    pitch: torch.Tensor  # [B, N] predicted normalised pitch
    pitch_target: torch.Tensor  # [B, N] target normalised pitch (averaged over the aligner's durations)
    durations: torch.Tensor  # [B, N] int, the aligner's hard durations (MAS), summing to mel_lens
    soft_attention: torch.Tensor  # [B, M, N]
    log_attention: torch.Tensor  # [B, M, N]
    hard_attention: torch.Tensor  # [B, M, N] in {0, 1}
    text_mask: torch.Tensor  # [B, N] bool
    mel_mask: torch.Tensor  # [B, M] bool


@dataclass
class FastPitchInference:
    """What `FastPitch.infer` returns."""

    mels: torch.Tensor  # [B, n_mels, M] log-mel, 0 past mel_lens
    mel_lens: torch.Tensor  # [B] frames
    durations: torch.Tensor  # [B, N] int frames per symbol (after pace)
    pitch: torch.Tensor  # [B, N] predicted pitch in Hz (0 at padding)


class FastPitch(nn.Module):
    """FastPitch + aligner. `forward` trains (needs mels and pitch); `infer` synthesises."""

    def __init__(self, cfg: FastPitchConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = FFTransformer(cfg, cfg.encoder_layers, n_embed=cfg.n_symbols)
        self.duration_predictor = TemporalPredictor(cfg)
        self.pitch_predictor = TemporalPredictor(cfg)
        k = cfg.pitch_embedding_kernel
        self.pitch_emb = nn.Conv1d(1, cfg.d_model, k, padding=k // 2)
        self.decoder = FFTransformer(cfg, cfg.decoder_layers)
        self.proj = nn.Linear(cfg.d_model, cfg.n_mels)
        self.aligner = AlignmentEncoder(cfg)

    def _check_text(self, text: torch.Tensor, text_lens: torch.Tensor | None) -> None:
        if text.ndim != 2 or text_lens is None or text_lens.shape != (text.shape[0],):
            raise ValueError(f"FastPitch: expected text [B, N] and text_lens [B], got {tuple(text.shape)}, "
                             f"{None if text_lens is None else tuple(text_lens.shape)}")
        if text.numel() and (int(text.min()) < 0 or int(text.max()) >= self.cfg.n_symbols):
            raise ValueError(f"FastPitch: symbol ids must be in [0, {self.cfg.n_symbols}), got "
                             f"[{int(text.min())}, {int(text.max())}]")

    def _decode(self, encoded: torch.Tensor, pitch: torch.Tensor, text_mask: torch.Tensor,
                durations: torch.Tensor, pace: float, max_frames: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output + pitch embedding -> length regulator -> decoder -> mels [B, n_mels, M], mel_lens [B]."""
        keep = text_mask[..., None].to(encoded.dtype)  # [B, N, 1]
        pitch_emb = self.pitch_emb((pitch * text_mask)[:, None, :]).transpose(1, 2)  # [B, N, D]
        stretched, mel_lens = regulate_length((encoded + pitch_emb) * keep, durations, pace, max_frames)
        decoded, mel_mask = self.decoder(stretched, mel_lens)  # [B, M, D]
        mels = self.proj(decoded) * mel_mask[..., None]  # [B, M, n_mels]
        return mels.transpose(1, 2), mel_lens  # [B, n_mels, M]

    def normalize_pitch(self, hz: torch.Tensor) -> torch.Tensor:
        """Hz (0 = unvoiced) -> (hz - mean) / std, 0 where unvoiced (NeMo's convention)."""
        return torch.where(hz > 0, (hz - self.cfg.pitch_mean) / self.cfg.pitch_std, torch.zeros_like(hz))

    def forward(self, text: torch.Tensor, text_lens: torch.Tensor, mels: torch.Tensor, mel_lens: torch.Tensor,
                pitch: torch.Tensor) -> FastPitchOutput:
        """Training pass with the learned aligner.

        Args:
            text: [B, N] symbol ids (TTS_PAD_ID past text_lens); text_lens [B].
            mels: [B, n_mels, M] target log-mel; mel_lens [B] (>= text_lens).
            pitch: [B, M] F0 in Hz per mel frame, 0 where unvoiced.
        """
        self._check_text(text, text_lens)
        if mels.ndim != 3 or mels.shape[1] != self.cfg.n_mels or pitch.shape != (mels.shape[0], mels.shape[2]):
            raise ValueError(f"FastPitch: expected mels [B, {self.cfg.n_mels}, M] and pitch [B, M], "
                             f"got {tuple(mels.shape)}, {tuple(pitch.shape)}")
        from minivox.kernels.mas import durations_to_alignment, monotonic_alignment_search

        encoded, text_mask = self.encoder(text, text_lens)  # [B, N, D], [B, N]
        log_durations = self.duration_predictor(encoded, text_mask)  # [B, N]
        pitch_predicted = self.pitch_predictor(encoded, text_mask)  # [B, N]

        mel_mask = lengths_to_mask(mel_lens, mels.shape[2])  # [B, M]
        prior = beta_binomial_prior(text_lens, mel_lens, self.cfg.prior_scaling, text.shape[1], mels.shape[2])
        soft, log_attn = self.aligner(mels, mel_mask, self.encoder.word_emb(text), text_mask, prior)  # [B, M, N] x2
        with torch.no_grad():
            durations = monotonic_alignment_search(log_attn, mel_lens, text_lens)  # [B, N]
            hard = durations_to_alignment(durations, mels.shape[2])  # [B, M, N]
        pitch_target = self.normalize_pitch(average_pitch(pitch, durations))  # [B, N]

        mels_predicted, _ = self._decode(encoded, pitch_target, text_mask, durations, 1.0, mels.shape[2])
        return FastPitchOutput(mels_predicted, log_durations, pitch_predicted, pitch_target, durations,
                               soft, log_attn, hard, text_mask, mel_mask)

    @torch.no_grad()
    def infer(self, text: torch.Tensor, text_lens: torch.Tensor | None = None, pace: float = 1.0,
              pitch_shift: float = 0.0) -> FastPitchInference:
        """Synthesise log-mels from symbol ids [B, N] (lengths [B]; None = all N). pace > 1 speaks
        faster; pitch_shift adds Hz to every predicted pitch."""
        if text_lens is None and text.ndim == 2:
            text_lens = torch.full((text.shape[0],), text.shape[1], dtype=torch.long, device=text.device)
        self._check_text(text, text_lens)
        encoded, text_mask = self.encoder(text, text_lens)
        log_durations = self.duration_predictor(encoded, text_mask)
        durations = (torch.exp(log_durations) - 1).clamp(0, self.cfg.max_duration) * text_mask  # [B, N]
        pitch = self.pitch_predictor(encoded, text_mask)  # [B, N] normalised
        pitch = pitch + pitch_shift / self.cfg.pitch_std
        mels, mel_lens = self._decode(encoded, pitch, text_mask, durations, pace)
        frames = torch.floor(durations / pace + 0.5).long()
        return FastPitchInference(mels, mel_lens, frames, (pitch * self.cfg.pitch_std + self.cfg.pitch_mean) * text_mask)

    # ---- checkpoints ------------------------------------------------------------------

    def save(self, path: str | Path, meta: dict | None = None, fp16: bool = False) -> Path:
        """Write a kind "fastpitch" checkpoint (config + weights)."""
        return save_checkpoint(path, "fastpitch", self.cfg, self, meta=meta, fp16=fp16)

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> FastPitch:
        """Rebuild a model saved by `save`, in eval mode."""
        payload = load_checkpoint(path, kind="fastpitch", map_location=map_location)
        model = cls(from_dict(FastPitchConfig, payload["config"]))
        load_state_dict(model, payload["model"], source=str(path))
        model.meta = payload["meta"]
        return model.to(map_location).eval()


def fastpitch_losses(out: FastPitchOutput, mels: torch.Tensor, weights: FastPitchLossWeights,
                     step: int) -> dict[str, torch.Tensor]:
    """The training losses of one batch: {"loss" (weighted total), "mel", "duration", "pitch",
    "forward_sum", "binarization"} (scalars; the parts unweighted)."""
    mel_keep = out.mel_mask[:, None, :].to(mels.dtype)  # [B, 1, M]
    mel = ((out.mels - mels) ** 2 * mel_keep).sum() / (mel_keep.sum() * mels.shape[1])
    text_keep = out.text_mask.to(mels.dtype)  # [B, N]
    log_target = torch.log1p(out.durations.to(mels.dtype))  # [B, N]
    duration = ((out.log_durations - log_target) ** 2 * text_keep).sum() / text_keep.sum()
    pitch = ((out.pitch - out.pitch_target) ** 2 * text_keep).sum() / text_keep.sum()
    text_lens, mel_lens = out.text_mask.sum(1), out.mel_mask.sum(1)
    forward_sum = forward_sum_loss(out.log_attention, text_lens, mel_lens)
    binarization = binarization_loss(out.hard_attention, out.soft_attention)
    total = (weights.mel * mel + weights.duration * duration + weights.pitch * pitch
             + weights.forward_sum * forward_sum + weights.binarization_weight(step) * binarization)
    return {"loss": total, "mel": mel, "duration": duration, "pitch": pitch, "forward_sum": forward_sum,
            "binarization": binarization}
