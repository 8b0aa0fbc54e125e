"""Monotonic alignment search: numba kernel == readable reference == brute force, and the path properties."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minivox.kernels.mas import durations_to_alignment, mas_reference, monotonic_alignment_search


def _brute_force(log_probs: np.ndarray) -> tuple[float, set[tuple[int, ...]]]:
    """Best score over every duration vector (each >= 1, sum M) and the set of optimal ones."""
    M, N = log_probs.shape
    best, winners = -np.inf, set()
    for cuts in itertools.combinations(range(1, M), N - 1):  # symbol boundaries
        bounds = (0, *cuts, M)
        durations = tuple(b - a for a, b in zip(bounds[:-1], bounds[1:]))
        score = sum(log_probs[a:b, n].sum() for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])))
        if score > best + 1e-12:
            best, winners = score, {durations}
        elif abs(score - best) <= 1e-12:
            winners.add(durations)
    return best, winners


def _path_score(log_probs: np.ndarray, durations: np.ndarray) -> float:
    symbol = np.repeat(np.arange(len(durations)), durations)  # [M]: symbol of each frame
    return float(log_probs[np.arange(len(symbol)), symbol].sum())


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 7), st.integers(0, 4), st.integers(0, 2**31 - 1))
def test_reference_is_optimal_against_brute_force(N, extra, seed):
    M = N + extra
    log_probs = np.random.default_rng(seed).normal(size=(M, N))
    durations = mas_reference(log_probs)
    best, winners = _brute_force(log_probs)
    assert tuple(durations) in winners, (durations, winners)
    assert _path_score(log_probs, durations) == pytest.approx(best)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 12), st.integers(0, 25), st.integers(0, 2**31 - 1))
def test_numba_equals_reference_on_random_batches(B, max_text, max_extra, seed):
    rng = np.random.default_rng(seed)
    text_lens = rng.integers(1, max_text + 1, size=B)
    mel_lens = text_lens + rng.integers(0, max_extra + 1, size=B)
    log_probs = torch.from_numpy(rng.normal(size=(B, mel_lens.max(), text_lens.max())).astype(np.float32))
    args = (log_probs, torch.from_numpy(mel_lens), torch.from_numpy(text_lens))
    fast = monotonic_alignment_search(*args)
    slow = monotonic_alignment_search(*args, use_numba=False)
    torch.testing.assert_close(fast, slow, rtol=0, atol=0)
    # the path properties: durations >= 1 inside the text, 0 after, summing to the frames
    for b in range(B):
        assert (fast[b, : text_lens[b]] >= 1).all(), fast[b]
        assert (fast[b, text_lens[b]:] == 0).all(), fast[b]
        assert int(fast[b].sum()) == mel_lens[b]


def test_padding_does_not_change_the_alignment():
    rng = np.random.default_rng(0)
    item = torch.from_numpy(rng.normal(size=(1, 30, 9)).astype(np.float32))
    padded = torch.full((1, 45, 14), 100.0)  # large padding values must be ignored
    padded[:, :30, :9] = item
    alone = monotonic_alignment_search(item, torch.tensor([30]), torch.tensor([9]))
    in_pad = monotonic_alignment_search(padded, torch.tensor([30]), torch.tensor([9]))
    torch.testing.assert_close(in_pad[:, :9], alone, rtol=0, atol=0)


def test_alignment_is_monotonic_and_follows_a_clear_diagonal():
    # a soft attention that is sharply peaked along a known staircase must be recovered exactly
    true = torch.tensor([[3, 1, 4, 2, 5, 1]])
    hard = durations_to_alignment(true, int(true.sum()))  # [1, M, N]
    log_probs = torch.log(0.9 * hard + 0.1 / true.shape[1])
    found = monotonic_alignment_search(log_probs, torch.tensor([int(true.sum())]), torch.tensor([6]))
    torch.testing.assert_close(found, true)
    alignment = durations_to_alignment(found, int(true.sum()))[0]  # [M, N]
    symbol = alignment.argmax(dim=1)  # [M]
    assert (alignment.sum(dim=1) == 1).all()
    assert (symbol.diff() >= 0).all() and (symbol.diff() <= 1).all()


def test_equal_frames_and_symbols_give_one_frame_each():
    log_probs = torch.randn(1, 5, 5)
    found = monotonic_alignment_search(log_probs, torch.tensor([5]), torch.tensor([5]))
    assert found.tolist() == [[1, 1, 1, 1, 1]]


@pytest.mark.parametrize("mel, text", [(3, 4), (5, 0)])
def test_too_few_frames_is_a_clear_error(mel, text):
    with pytest.raises(ValueError, match="text_lens <= mel_lens"):
        monotonic_alignment_search(torch.zeros(1, 6, 6), torch.tensor([mel]), torch.tensor([text]))


def test_importing_the_module_does_not_import_numba():
    code = "import sys, minivox.kernels.mas, minivox.kernels; assert 'numba' not in sys.modules, 'numba imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
