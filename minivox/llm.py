"""Small decoder-only transformer language model: config, KV cache, sampling, streaming generation.

    tokens [B, T] --Embedding--> x [B, T, D] --n_layer x Block--> RMSNorm --> x @ Embedding.T --> logits [B, T, V]
    Block:  x = x + Attention(RMSNorm(x))      (rotary positions, causal, keys/values in an explicit KVCache)
            x = x + MLP(RMSNorm(x))            (SwiGLU, or GPT-2's GELU MLP)

The architecture is LLaMA's at toy scale (pre-norm RMSNorm, RoPE, SwiGLU, no biases) with GPT-2's
tied input/output embedding, which saves V x D parameters: a quarter of the demo model.

Generation is prefill + incremental decode. `GPT.forward(tokens, cache)` runs T new tokens at
positions `cache.length ...`, writes their keys/values into the preallocated cache and advances
it; with no cache it is the plain causal forward used for training (and the reference the cached
path is tested against). `generate` streams token ids one by one; `sample_token` applies
repetition penalty, temperature, top-k and top-p, drawing from a seedable `torch.Generator`.
The chat template, tools and the OpenAI-compatible backends live in `minivox/chat_template.py`,
`tools.py` and `backends.py`; the conversation context and the assistant loop in `chat.py`.

Shape letters: B batch, T new tokens, S key positions (cached + new), D model width, H heads,
K head width (D / H), F MLP hidden width, V vocabulary, L layers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from minivox.checkpoint import load_checkpoint, load_state_dict, save_checkpoint
from minivox.config import from_dict, load_config


# ---------------------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------------------


@dataclass
class GPTConfig:
    """Everything that defines an LLM; a checkpoint stores `asdict(config)` and is rebuilt from it."""

    vocab_size: int = 4096  # sentencepiece ids incl. chat special tokens (the tokenizer is trained to this size)
    n_layer: int = 6  # blocks; decode time grows linearly with depth (one pass per token)
    n_head: int = 4  # attention heads; head width d_model / n_head = 64 suits SDPA kernels
    d_model: int = 256  # residual width; 6 x 256 with V = 4096 is ~5.8M parameters (DESIGN §9 demo size)
    mlp: Literal["swiglu", "gelu"] = "swiglu"  # SwiGLU (Shazeer 2020, as in LLaMA) or GPT-2's GELU MLP
    mlp_hidden: int = 0  # F; 0 derives it: SwiGLU 8/3 D rounded up to 32 (LLaMA: params of a 4D GELU MLP), GELU 4 D
    max_seq_len: int = 512  # longest context (prompt + reply) in tokens: sizes the RoPE tables and KV cache
    rope_theta: float = 10000.0  # RoPE base (Su et al. 2021; LLaMA uses the same)
    norm_eps: float = 1e-5  # RMSNorm epsilon (LLaMA)
    dropout: float = 0.0  # on attention and MLP outputs in training; 0 for few-epoch runs on big data
    init_std: float = 0.02  # GPT-2 init; residual output projections get init_std / sqrt(2 n_layer)

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"GPTConfig: d_model ({self.d_model}) must split into n_head ({self.n_head}) heads "
                             f"of even width (rotary pairs), got head width {self.d_model / self.n_head:g}")
        if self.mlp not in ("swiglu", "gelu"):
            raise ValueError(f"GPTConfig.mlp must be 'swiglu' or 'gelu', got {self.mlp!r}")

    @property
    def head_dim(self) -> int:
        """K = D / H."""
        return self.d_model // self.n_head

    @property
    def hidden_dim(self) -> int:
        """F, the MLP hidden width (derived when mlp_hidden is 0)."""
        if self.mlp_hidden > 0:
            return self.mlp_hidden
        if self.mlp == "gelu":
            return 4 * self.d_model
        return 32 * math.ceil(8 * self.d_model / 3 / 32)


def load_model_config(path: str | Path, overrides: Sequence[str] = ()) -> GPTConfig:
    """The `[model]` table of a preset (configs/llm_*.toml) as a GPTConfig.

    Other tables (tokenizer, training) belong to the training recipe and are ignored here.
    Overrides are relative to the model: "n_layer=4".
    """
    return load_config(GPTConfig, path, overrides, section="model")


# ---------------------------------------------------------------------------------------
# Leaves: RMSNorm, rotary positions, attention, MLP.
# ---------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dim (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., D]. Written out: on the CPU, torch's `F.rms_norm` dispatches about
        twice as many small ops for a decode step's single row (tests hold the two equal)."""
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


def rope_tables(max_seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables in "rotate half" form, cos and sin each [S_max, K].

    Dimension i < K/2 is paired with i + K/2 and the pair is rotated by position * theta^(-2i/K)
    (the GPT-NeoX / LLaMA-HF layout). cos = [c, c]; sin = [-s, s] carries the rotation's sign,
    so `apply_rope` is two multiplies and an add.
    """
    freqs = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # [K/2]
    angles = torch.arange(max_seq_len, dtype=torch.float64)[:, None] * freqs[None, :]  # [S_max, K/2]
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), dim=-1).float(), torch.cat((-sin, sin), dim=-1).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+K/2}) of x [..., T, K] by its position's angle; cos/sin [T, K].

    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin): swapping the halves gives (x2, x1), the sin
    table supplies the signs. `apply_rope_reference` is the same rotation with complex numbers.
    """
    swapped = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)  # [..., T, K]: halves swapped
    return x * cos + swapped * sin


def apply_rope_reference(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE written as complex multiplication: pair j is x_j + i x_{j+K/2}, times e^{i pos theta^(-2j/K)}.

    x [..., T, K], positions [T] -> rotated x. The readable formula tests hold `apply_rope` to.
    """
    K = x.shape[-1]
    freqs = theta ** (-torch.arange(0, K, 2, dtype=torch.float64) / K)  # [K/2]
    rotation = torch.polar(torch.ones(len(positions), K // 2, dtype=torch.float64),
                           positions.double()[:, None] * freqs[None, :])  # [T, K/2]
    pairs = torch.complex(x[..., : K // 2].double(), x[..., K // 2 :].double()) * rotation
    return torch.cat((pairs.real, pairs.imag), dim=-1).to(x.dtype)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
    """Causal attention written out: q [B, H, T, K] at positions start.., k/v [B, H, S, K] at 0.. -> [B, H, T, K].

    The readable formula that `F.scaled_dot_product_attention` with `causal_mask` replaces.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [B, H, T, S]
    query_pos = start + torch.arange(q.shape[2])[:, None]  # [T, 1]
    key_pos = torch.arange(k.shape[2])[None, :]  # [1, S]
    scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
    return scores.softmax(dim=-1) @ v


def causal_mask(start: int, T: int, S: int, device=None) -> torch.Tensor | None:
    """Boolean mask [T, S] (True = may attend) for T queries at positions start.. over S keys.

    None when SDPA needs no explicit mask: one query sees every key, and a fresh sequence
    (start 0, S == T) uses SDPA's own is_causal.
    """
    if T == 1 or start == 0:
        return None
    query_pos = start + torch.arange(T, device=device)[:, None]  # [T, 1]
    return torch.arange(S, device=device)[None, :] <= query_pos  # [T, S]


class KVCache:
    """Keys and values of every layer for positions [0, length), preallocated for `max_len` positions.

    k, v: [L, B, H, S_max, K]. `GPT.forward(tokens, cache)` writes the T new positions at
    `length` in place (no reallocation while decoding) and then advances `length` by T.
    Passed in explicitly and returned by nothing: the caller owns the state (STYLE.md 6).
    `token_ids` lists the ids whose keys/values the cache holds (kept by `generate`, which reuses
    a common prompt prefix across calls instead of recomputing it).
    """

    def __init__(self, cfg: GPTConfig, batch_size: int = 1, max_len: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        self.max_len = max_len or cfg.max_seq_len
        if not 0 < self.max_len <= cfg.max_seq_len:
            raise ValueError(f"KVCache max_len must be in [1, {cfg.max_seq_len}] (max_seq_len), got {self.max_len}")
        shape = (cfg.n_layer, batch_size, cfg.n_head, self.max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # [L, B, H, S_max, K]
        self.v = torch.zeros(shape, device=device, dtype=dtype)  # [L, B, H, S_max, K]
        self.length = 0
        self.token_ids: list[int] = []

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def crop(self, length: int) -> None:
        """Forget positions from `length` on (their slots are overwritten by the next forward)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"can crop a cache of {self.length} positions to [0, {self.length}], got {length}")
        self.length = length
        del self.token_ids[length:]

    def reset(self) -> None:
        """Empty the cache (keeps the memory)."""
        self.crop(0)

    def keep_prefix_of(self, ids: Sequence[int]) -> int:
        """Crop to the longest prefix of `ids` the cache holds, short of the last id (its logits are
        needed, so it is always recomputed); returns that prefix's length."""
        common = 0
        for cached, new in zip(self.token_ids, ids[:-1]):
            if cached != new:
                break
            common += 1
        self.crop(common)
        return common


class Attention(nn.Module):
    """Multi-head causal self-attention with rotary positions (one fused qkv projection, no biases)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x [B, T, D] at positions start.. (start = cache.length, or 0) -> [B, T, D].

        cos/sin [T, K] are the rotary tables of those positions. With a cache, the new keys and
        values are written into layer `layer`'s slots and attention reads positions [0, start + T).
        """
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, H, T, K]
        q, k = apply_rope(qkv[:2], cos, sin).unbind(0)  # each [B, H, T, K]: q and k rotated together
        v = qkv[2]  # [B, H, T, K]
        start = 0
        if cache is not None:
            start = cache.length
            cache.k[layer].narrow(2, start, T).copy_(k)
            cache.v[layer].narrow(2, start, T).copy_(v)
            k = cache.k[layer].narrow(2, 0, start + T)  # [B, H, S, K]
            v = cache.v[layer].narrow(2, 0, start + T)  # [B, H, S, K]
        mask = causal_mask(start, T, k.shape[2], x.device)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1)  # [B, H, T, K]
        y = self.proj(y.transpose(1, 2).reshape(B, T, D))  # [B, T, D]
        return F.dropout(y, self.dropout, self.training)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)) with gate and up fused in one Linear; or GELU: down(gelu(up(x)))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        F_ = cfg.hidden_dim
        self.up = nn.Linear(cfg.d_model, 2 * F_ if self.swiglu else F_, bias=False)  # [gate; up] for SwiGLU
        self.down = nn.Linear(F_, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, T, D]"""
        h = self.up(x)  # [B, T, 2F] or [B, T, F]
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)  # each [B, T, F]
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")
        return F.dropout(self.down(h), self.dropout, self.training)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """[B, T, D] -> [B, T, D]"""
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


# ---------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------


class GPT(nn.Module):
    """Decoder-only transformer LM with tied embeddings (+ the tokenizer it was trained with, if attached)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        cos, sin = rope_tables(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # [S_max, K]
        self.register_buffer("rope_sin", sin, persistent=False)  # [S_max, K]
        self.tokenizer = None
        self.meta: dict = {}
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2: scale the residual branch outputs by 1/sqrt(2 L)
            for proj in (block.attn.proj, block.mlp.down):
                nn.init.normal_(proj.weight, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.cfg.init_std)

    def num_parameters(self) -> int:
        """Trainable parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits for T new tokens.

        Args:
            tokens: [B, T] ids in [0, V).
            cache: None for a fresh causal pass (training; positions 0..T-1). Otherwise the tokens
                sit at positions cache.length.. ; their keys/values are written into the cache and
                cache.length grows by T.
            last_only: compute logits for the last position only (prefill needs no more).
        Returns:
            logits [B, T, V] (or [B, 1, V] with last_only).
        """
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tuple(tokens.shape)}")
        B, T = tokens.shape
        start = 0 if cache is None else cache.length
        if start + T > self.cfg.max_seq_len or (cache is not None and start + T > cache.max_len):
            limit = self.cfg.max_seq_len if cache is None else min(cache.max_len, self.cfg.max_seq_len)
            raise ValueError(f"context of {start} + {T} tokens exceeds the model's {limit} positions")
        if cache is not None and cache.batch_size != B:
            raise ValueError(f"cache holds batch size {cache.batch_size}, tokens have {B}")
        cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]  # [T, K]
        x = self.embed(tokens)  # [B, T, D]
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, layer)
        if cache is not None:
            cache.length += T
        if last_only:
            x = x[:, -1:]  # [B, 1, D]
        return F.linear(self.norm(x), self.embed.weight)  # [B, T, V] (tied output embedding)

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        """An empty KV cache on the model's device and dtype."""
        weight = self.embed.weight
        return KVCache(self.cfg, batch_size, max_len, device=weight.device, dtype=weight.dtype)

    # ---- checkpoints ---------------------------------------------------------------------

    def save(self, path: str | Path, meta: dict | None = None, fp16: bool = False) -> Path:
        """Write a kind "llm" checkpoint with the config, weights and attached tokenizer."""
        tokenizer = None if self.tokenizer is None else self.tokenizer.to_bytes()
        return save_checkpoint(path, "llm", self.cfg, self, tokenizer=tokenizer, meta=meta, fp16=fp16)

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> GPT:
        """Rebuild a model saved by `save`: float32, eval mode, its tokenizer in `.tokenizer`."""
        payload = load_checkpoint(path, kind="llm", map_location=map_location)
        cfg = from_dict(GPTConfig, payload["config"])
        model = cls(cfg)
        load_state_dict(model, payload["model"], source=str(path))
        if payload["tokenizer"] is not None:
            from minivox.text import Tokenizer

            model.tokenizer = Tokenizer.from_bytes(payload["tokenizer"])
            if model.tokenizer.vocab_size != cfg.vocab_size:
                raise ValueError(f"{path}: tokenizer has {model.tokenizer.vocab_size} ids, model expects {cfg.vocab_size}")
        model.meta = payload["meta"]
        return model.to(map_location).eval()


def quantize_int8(model: GPT) -> GPT:
    """A copy of `model` whose Linear layers hold int8 weights (PyTorch dynamic quantization).

    Decoding one token reads every weight once, so on a CPU whose caches cannot hold the fp32
    weights it is memory-bound: int8 weights (a quarter of the bytes) decode about twice as fast
    (bench/llm.py). Activations are quantized per call (so, unlike fp32, logits also shift a
    little with how a prompt is split between calls); the tied embedding / output layer stays
    fp32. Outputs differ slightly from the fp32 model: its scores are measured separately
    (MODEL_CARD.md). Uses `torch.ao.quantization.quantize_dynamic`, which PyTorch marks as
    deprecated in favour of torchao; a PyTorch without it raises a clear error.
    """
    import warnings

    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as exc:  # pragma: no cover - depends on the PyTorch build
        raise ValueError(f"this PyTorch ({torch.__version__}) has no dynamic int8 quantization: {exc}") from None
    tokenizer, model.tokenizer = model.tokenizer, None  # the copy shares the tokenizer (not deep-copyable)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notices of torch.ao.quantization
            quantized = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=False)
    finally:
        model.tokenizer = tokenizer
    quantized.tokenizer = tokenizer
    return quantized.eval()


# ---------------------------------------------------------------------------------------
# Sampling.
# ---------------------------------------------------------------------------------------


@dataclass
class SamplingConfig:
    """How `generate` picks each next token."""

    temperature: float = 0.7  # logits / temperature before softmax; 0 = greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0 = all
    top_p: float = 1.0  # keep the smallest set whose probability reaches p (Holtzman et al. 2019); 1 = all
    repetition_penalty: float = 1.0  # CTRL (Keskar et al. 2019) on tokens generated so far; 1 = off
    max_tokens: int = 128  # most new tokens per call
    stop_tokens: tuple[int, ...] = ()  # ids that end generation (not yielded)
    seed: int | None = None  # seeds the torch.Generator when `generate` is given none

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1 or self.repetition_penalty <= 0:
            raise ValueError(f"sampling needs temperature >= 0, top_k >= 0, 0 < top_p <= 1, repetition_penalty > 0; "
                             f"got {self.temperature}, {self.top_k}, {self.top_p}, {self.repetition_penalty}")
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")


def apply_repetition_penalty(logits: torch.Tensor, previous: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make already-generated tokens less likely: positive logits / penalty, negative ones * penalty.

    logits [B, V], previous [B, N] ids -> new logits [B, V]. Only the reply's own tokens are
    penalised, not the prompt's: an assistant must be free to repeat a tool result it was given.
    """
    if penalty == 1.0 or previous.numel() == 0:
        return logits
    seen = logits.gather(1, previous)  # [B, N]
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, previous, seen)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the k-th largest to -inf (ties at the k-th stay); k <= 0 or >= V: unchanged."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [B, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability sums to >= p; the rest -> -inf.

    The most likely token is always kept. logits [B, V] -> [B, V].
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, V]
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # [B, V]
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= p  # mass before this token already reaches p
    drop = drop_sorted.scatter(1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_token(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None,
                 previous: torch.Tensor | None = None) -> torch.Tensor:
    """Pick the next token of each row: logits [B, V] (float) -> ids [B].

    Order: repetition penalty, then greedy if temperature is 0, else temperature, top-k, top-p
    and a draw from `generator`.
    """
    logits = logits.float()
    if previous is not None:
        logits = apply_repetition_penalty(logits, previous, sampling.repetition_penalty)
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    logits = top_p_filter(top_k_filter(logits / sampling.temperature, sampling.top_k), sampling.top_p)
    probs = logits.softmax(dim=-1)  # [B, V]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


# ---------------------------------------------------------------------------------------
# Streaming generation.
# ---------------------------------------------------------------------------------------


class TokenStream:
    """Iterator over generated token ids (ints), produced one forward pass at a time.

    After it is exhausted: `finish_reason` is "stop" (a stop token came), "length" (max_tokens
    or the context is full) or "cancelled" (`close()` was called); `completion_ids` holds what
    was yielded. `time_to_first_token` / `prefill_seconds` / `decode_seconds` time the work.
    """

    def __init__(self, model: GPT, prompt: Sequence[int], sampling: SamplingConfig, cache: KVCache | None,
                 generator: torch.Generator | None, banned_tokens: Sequence[int]):
        if len(prompt) == 0:
            raise ValueError("generate needs a prompt of at least one token")
        if len(prompt) >= model.cfg.max_seq_len:
            raise ValueError(f"prompt of {len(prompt)} tokens leaves no room in the model's {model.cfg.max_seq_len} positions")
        bad = [t for t in prompt if not 0 <= int(t) < model.cfg.vocab_size]
        if bad:
            raise ValueError(f"prompt ids must be in [0, {model.cfg.vocab_size}), got {bad[:5]}")
        self.model, self.sampling = model, sampling
        self.prompt = [int(t) for t in prompt]
        self.cache = cache if cache is not None else model.new_cache()
        if self.cache.batch_size != 1:
            raise ValueError(f"generate streams one sequence: the cache must have batch size 1, got {self.cache.batch_size}")
        if generator is None and sampling.temperature > 0:  # greedy draws nothing
            generator = torch.Generator(device=model.embed.weight.device)
            if sampling.seed is not None:
                generator.manual_seed(sampling.seed)
            else:
                generator.seed()  # from the OS, leaving torch's global random state alone
        self.generator = generator
        self.banned = torch.tensor(sorted(set(banned_tokens)), dtype=torch.long)
        self.completion_ids: list[int] = []
        self.finish_reason: str | None = None
        self.reused_prefix = 0  # prompt tokens whose keys/values were already in the cache
        self.time_to_first_token = self.prefill_seconds = self.decode_seconds = 0.0
        self._steps = self._run()

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> int:
        return next(self._steps)

    def close(self) -> None:
        """Stop early (e.g. the user interrupted); finish_reason becomes "cancelled"."""
        if self.finish_reason is None:
            self.finish_reason = "cancelled"
        self._steps.close()

    def _forward(self, ids: list[int]) -> torch.Tensor:
        tokens = torch.tensor([ids], dtype=torch.long, device=self.cache.k.device)  # [1, T]
        logits = self.model(tokens, self.cache, last_only=True)[:, -1]  # [1, V]
        self.cache.token_ids += ids
        if self.banned.numel():
            logits[:, self.banned] = float("-inf")
        return logits

    def _run(self) -> Iterator[int]:
        started = time.perf_counter()
        cache, sampling, stops = self.cache, self.sampling, set(self.sampling.stop_tokens)
        common = self.reused_prefix = cache.keep_prefix_of(self.prompt)
        with torch.inference_mode():
            logits = self._forward(self.prompt[common:])
        self.prefill_seconds = time.perf_counter() - started
        room = cache.max_len - cache.length
        previous = torch.empty(1, 0, dtype=torch.long, device=logits.device)
        while True:
            if len(self.completion_ids) >= sampling.max_tokens:
                self.finish_reason = "length"
                return
            with torch.inference_mode():
                token = int(sample_token(logits, sampling, self.generator, previous)[0])
            if token in stops:
                self.finish_reason = "stop"
                return
            if not self.completion_ids:
                self.time_to_first_token = time.perf_counter() - started
            self.completion_ids.append(token)
            yield token
            if len(self.completion_ids) >= min(sampling.max_tokens, room + 1):
                self.finish_reason = "length"
                return
            step_start = time.perf_counter()
            with torch.inference_mode():
                if sampling.repetition_penalty != 1.0:
                    previous = torch.tensor([self.completion_ids], dtype=torch.long, device=logits.device)
                logits = self._forward([token])
            self.decode_seconds += time.perf_counter() - step_start


def generate(model: GPT, prompt: Sequence[int], sampling: SamplingConfig | None = None, cache: KVCache | None = None,
             generator: torch.Generator | None = None, banned_tokens: Sequence[int] = ()) -> TokenStream:
    """Stream the continuation of `prompt` (a list of ids), one token id at a time.

    Args:
        sampling: temperature/top-k/top-p/repetition penalty, max_tokens, stop tokens, seed.
        cache: a KVCache to (re)use; a prefix it already holds from an earlier call (same ids)
            is not recomputed, so a chat turn only prefills what is new. None: a fresh cache.
        generator: torch.Generator for the draws (else one seeded from sampling.seed).
        banned_tokens: ids that are never sampled (e.g. the tool-call marker when no tools are offered).
    Returns:
        a TokenStream: iterate it for ids; finish_reason and timings are set when it ends.
    """
    return TokenStream(model, prompt, sampling or SamplingConfig(), cache, generator, banned_tokens)


@torch.no_grad()
def continuation_logprobs(model: GPT, prefix: Sequence[int], continuations: Sequence[Sequence[int]],
                          cache: KVCache | None = None) -> list[list[float]]:
    """Log-probability of each token of each continuation of `prefix` (teacher forcing).

    out[i][j] = log p(continuations[i][j] | prefix + continuations[i][:j]). The prefix is run once
    (a part `cache` already holds, as `generate` left it, is reused); each continuation then runs on
    top of it and is cropped off again, so the cache ends holding the prefix.
    """
    cache = cache if cache is not None else model.new_cache()
    prefix = [int(t) for t in prefix]
    if not prefix or any(not c for c in continuations):
        raise ValueError("continuation_logprobs needs a non-empty prefix and non-empty continuations")
    common = cache.keep_prefix_of(prefix)
    device = cache.k.device
    last = model(torch.tensor([prefix[common:]], device=device), cache, last_only=True)[0, -1]  # [V]
    cache.token_ids += prefix[common:]
    out = []
    for continuation in continuations:
        ids = [int(t) for t in continuation]
        logits = torch.cat([last[None], model(torch.tensor([ids[:-1]], device=device), cache)[0]]) if len(ids) > 1 \
            else last[None]  # [T, V]: the logits that predict each of ids
        cache.crop(len(prefix))
        logp = torch.log_softmax(logits.float(), dim=-1)
        out.append(logp[torch.arange(len(ids)), torch.tensor(ids, device=device)].tolist())
    return out
