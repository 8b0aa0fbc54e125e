"""How bench/asr.py times a conformer encoder, shared with bench/nemo_peer.py (torch only, no minivox).

    time_encoder(encoder, run, train_threads=2, repeats=3) -> {"params", "step", "offline"}

`run(encoder, feats [B, 80, T], lengths [B]) -> encoded` calls the encoder its own way. `step` is one
training step (forward, mean-square loss, backward, AdamW) on BATCH utterances x SECONDS of random
80-bin features with `train_threads` threads; `offline` one no-grad forward of a single utterance
on one thread; each the median of `repeats` runs after a warm-up, in seconds.
"""

from __future__ import annotations

import statistics
import time

import torch

BATCH, SECONDS = 16, 5.0  # DESIGN §9's training batch: 16 utterances x 5 s


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_encoder(encoder: torch.nn.Module, run, train_threads: int, repeats: int) -> dict:
    frames = int(SECONDS * 100)  # 10 ms feature frames
    feats, lengths = torch.randn(BATCH, 80, frames), torch.full((BATCH,), frames)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-4)

    def train_step():
        run(encoder, feats, lengths).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    torch.set_num_threads(train_threads)
    encoder.train()
    step = median_time(train_step, repeats)
    torch.set_num_threads(1)
    encoder.eval()
    one, one_length = torch.randn(1, 80, frames), torch.tensor([frames])
    with torch.no_grad():
        offline = median_time(lambda: run(encoder, one, one_length), max(repeats, 5))
    return {"params": sum(p.numel() for p in encoder.parameters()), "step": step, "offline": offline}
