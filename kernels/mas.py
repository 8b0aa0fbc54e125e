"""Monotonic alignment search (MAS): the best hard alignment of mel frames to text symbols.

Given a score matrix log_probs[m, n] (how well mel frame m matches text symbol n; in FastPitch
the aligner's log soft attention), MAS finds the path that

- starts at (0, 0) and ends at (M - 1, N - 1),
- moves one mel frame at a time, either staying on the same symbol or advancing by exactly one,

and maximises the sum of log_probs along it (Glow-TTS, Kim et al. 2020, arXiv 2005.11129, alg. 1;
used for FastPitch by Badlani et al. 2021, "One TTS Alignment To Rule Them All", arXiv 2108.10447).
Such a path gives every symbol at least one frame and the durations sum to M, so M >= N is needed.

Dynamic programme, Q[m, n] = best score of a path ending at (m, n):

    Q[0, 0] = log_probs[0, 0],   Q[0, n > 0] = -inf
    Q[m, n] = log_probs[m, n] + max(Q[m-1, n], Q[m-1, n-1])

then backtrack from (M - 1, N - 1). Ties between "advance" and "stay" go to "advance" (NeMo's
`mas_width1` rule), in both implementations below, so they return identical paths.

Two implementations, held equal by tests/test_mas.py:

- `mas_reference`: the recursion above, numpy, one row of frames at a time (readable).
- `_mas_kernel`: the same as scalar loops, compiled by numba on first use (`njit(cache=True)`),
  batched. Importing this module does not import numba.

Entry point: `monotonic_alignment_search(log_probs [B, M, N], mel_lens, text_lens) -> durations [B, N]`.
Shape letters: B batch, M mel frames, N text symbols.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

__all__ = ["mas_reference", "monotonic_alignment_search", "durations_to_alignment"]


def mas_reference(log_probs: np.ndarray) -> np.ndarray:
    """Readable MAS for one utterance: log_probs [M, N] (M >= N >= 1) -> durations [N] int64."""
    M, N = log_probs.shape
    if N < 1 or M < N:
        raise ValueError(f"MAS needs M >= N >= 1 (frames >= symbols), got M={M}, N={N}")
    scores = np.full((M, N), -np.inf)  # Q[m, n]
    came_from_previous = np.zeros((M, N), dtype=bool)  # did the best path into (m, n) advance from n-1?
    scores[0, 0] = log_probs[0, 0]
    for m in range(1, M):
        stay = scores[m - 1]  # [N]: Q[m-1, n]
        advance = np.concatenate([[-np.inf], scores[m - 1, :-1]])  # [N]: Q[m-1, n-1]
        came_from_previous[m] = advance >= stay  # ties advance
        scores[m] = log_probs[m] + np.maximum(stay, advance)
    durations = np.zeros(N, dtype=np.int64)
    n = N - 1
    for m in range(M - 1, -1, -1):  # backtrack
        durations[n] += 1
        if m > 0 and came_from_previous[m, n]:
            n -= 1
    return durations


def _mas_kernel(log_probs, mel_lens, text_lens, durations):
    """Batched MAS in scalar loops (compiled by numba): log_probs [B, M, N] float32,
    mel_lens [B], text_lens [B] int64 -> writes durations [B, N] int64 (zeros past text_lens)."""
    B = log_probs.shape[0]
    for b in range(B):
        M, N = mel_lens[b], text_lens[b]
        scores = np.empty((M, N), dtype=np.float64)
        advanced = np.zeros((M, N), dtype=np.bool_)
        for n in range(N):
            scores[0, n] = -np.inf
        scores[0, 0] = log_probs[b, 0, 0]
        for m in range(1, M):
            for n in range(N):
                stay = scores[m - 1, n]
                advance = scores[m - 1, n - 1] if n > 0 else -np.inf
                if advance >= stay:
                    advanced[m, n] = True
                    best = advance
                else:
                    best = stay
                scores[m, n] = log_probs[b, m, n] + best
        for n in range(durations.shape[1]):
            durations[b, n] = 0
        n = N - 1
        for m in range(M - 1, -1, -1):
            durations[b, n] += 1
            if m > 0 and advanced[m, n]:
                n -= 1


@lru_cache(maxsize=1)
def _compiled_kernel():
    """`_mas_kernel` compiled by numba (cached on disk by numba; imported here, on first use)."""
    import numba

    return numba.njit(cache=True, nogil=True)(_mas_kernel)


def monotonic_alignment_search(log_probs: torch.Tensor, mel_lens: torch.Tensor, text_lens: torch.Tensor,
                               use_numba: bool = True) -> torch.Tensor:
    """Hard monotonic alignment durations for a padded batch.

    Args:
        log_probs: [B, M, N] float scores (log soft attention); entries past the lengths are ignored.
        mel_lens: [B] int frames per item, text_lens: [B] int symbols per item, 1 <= text <= mel.
        use_numba: False runs `mas_reference` item by item (slow; for tests).
    Returns:
        durations [B, N] int64 on log_probs' device: frames per symbol, >= 1 inside text_lens, 0 after,
        each row summing to its mel_len.
    """
    if log_probs.ndim != 3:
        raise ValueError(f"MAS: expected log_probs [B, M, N], got shape {tuple(log_probs.shape)}")
    B, M, N = log_probs.shape
    mel = mel_lens.detach().cpu().long().numpy()
    text = text_lens.detach().cpu().long().numpy()
    if mel.shape != (B,) or text.shape != (B,):
        raise ValueError(f"MAS: expected mel_lens and text_lens of shape [{B}], got {mel.shape}, {text.shape}")
    if B and ((text < 1).any() or (text > mel).any() or (mel > M).any() or (text > N).any()):
        raise ValueError(f"MAS: expected 1 <= text_lens <= mel_lens, mel_lens <= M={M}, text_lens <= N={N}; "
                         f"got mel_lens={mel.tolist()}, text_lens={text.tolist()}")
    scores = log_probs.detach().float().cpu().numpy()
    durations = np.zeros((B, N), dtype=np.int64)
    if use_numba:
        _compiled_kernel()(np.ascontiguousarray(scores), mel, text, durations)
    else:
        for b in range(B):
            durations[b, : text[b]] = mas_reference(scores[b, : mel[b], : text[b]].astype(np.float64))
    return torch.from_numpy(durations).to(log_probs.device)


def durations_to_alignment(durations: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Durations [B, N] int -> hard alignment [B, M=num_frames, N] float (1 where frame m belongs to symbol n).

    Frames past sum(durations) of an item are all zero."""
    ends = torch.cumsum(durations, dim=1)  # [B, N]: first frame after symbol n
    starts = ends - durations  # [B, N]
    frames = torch.arange(num_frames, device=durations.device)[None, :, None]  # [1, M, 1]
    return ((frames >= starts[:, None, :]) & (frames < ends[:, None, :])).float()  # [B, M, N]
