"""train/common.py: exact resume, resumable batch order, LR schedule, graceful stop on a signal."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minivox.train.common import (
    Distributed,
    GracefulStop,
    ResumableBatches,
    lr_factor,
    load_training_state,
    make_scheduler,
    save_training_state,
    seed_everything,
)

DATA_X = torch.randn(40, 8, generator=torch.Generator().manual_seed(1))
DATA_Y = torch.randn(40, 1, generator=torch.Generator().manual_seed(2))


def build(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.3), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = make_scheduler(optimizer, warmup_steps=3, total_steps=10)
    batches = ResumableBatches([list(range(i, i + 4)) for i in range(0, 40, 4)], seed=7)
    return model, optimizer, scheduler, batches


def train(model, optimizer, scheduler, batches, steps: int) -> None:
    stream = iter(batches)
    for _ in range(steps):
        index = torch.tensor(next(stream))
        noise = torch.randn(len(index), 1) * 0.01  # the global RNG must be restored too
        loss = ((model(DATA_X[index]) - DATA_Y[index] - noise) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def test_resume_is_exact(tmp_path):
    seed_everything(0)
    straight = build(0)
    train(*straight, steps=13)  # crosses an epoch boundary (10 batches per epoch)

    seed_everything(0)
    first = build(0)
    train(*first, steps=6)
    save_training_state(tmp_path / "state.pt", first[0], first[1], first[2], step=6, batches=first[3], extra={"k": 1})
    torch.randn(100)  # disturb the global RNG: resume must put it back

    resumed = build(123)  # different initial weights, all overwritten by the resume
    step, extra = load_training_state(tmp_path / "state.pt", *resumed)
    assert step == 6 and extra == {"k": 1}
    train(*resumed, steps=7)
    for a, b in zip(straight[0].parameters(), resumed[0].parameters()):
        assert torch.equal(a, b)
    assert straight[2].get_last_lr() == resumed[2].get_last_lr()


def test_resume_refuses_other_data(tmp_path):
    model, optimizer, scheduler, batches = build(0)
    save_training_state(tmp_path / "s.pt", model, optimizer, scheduler, step=0, batches=batches)
    other = ResumableBatches([[0], [1]], seed=7)
    with pytest.raises(ValueError, match="did the data change"):
        load_training_state(tmp_path / "s.pt", model, optimizer, scheduler, other)
    with pytest.raises(ValueError, match="does not exist"):
        load_training_state(tmp_path / "missing.pt", model, optimizer, scheduler)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 30), st.integers(1, 4), st.integers(0, 1000))
def test_batches_partition_each_epoch_across_ranks(num_batches, world_size, seed):
    if num_batches < world_size:
        with pytest.raises(ValueError):
            ResumableBatches([[i] for i in range(num_batches)], seed=seed, world_size=world_size)
        return
    streams = [iter(ResumableBatches([[i] for i in range(num_batches)], seed=seed, rank=r, world_size=world_size))
               for r in range(world_size)]
    per_rank = num_batches // world_size
    for _epoch in range(2):
        taken = [next(s)[0] for s in streams for _ in range(per_rank)]
        assert len(set(taken)) == len(taken) == per_rank * world_size  # disjoint, no repeats within an epoch


def test_lr_factor_shape():
    values = [lr_factor(s, warmup_steps=10, total_steps=110, min_lr_ratio=0.1) for s in range(200)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(values[:10], values[1:10]))  # rising warm-up
    assert all(a >= b for a, b in zip(values[10:110], values[11:111]))  # falling decay
    assert values[110] == pytest.approx(0.1) and values[-1] == pytest.approx(0.1)
    assert lr_factor(50, 10, 110, decay="constant") == 1.0
    with pytest.raises(ValueError, match="decay must be"):
        lr_factor(0, 1, 2, decay="linear")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_graceful_stop_turns_a_signal_into_a_flag_and_restores_handlers(signum):
    seen = []
    before = signal.signal(signum, lambda *_: seen.append("previous"))
    try:
        stop = GracefulStop()
        assert not stop.requested
        os.kill(os.getpid(), signum)  # handled at the next bytecode: no KeyboardInterrupt, no exit
        assert stop.requested and stop.agreed(Distributed())
        assert seen == []  # the training loop's handler ran, not the previous one
        stop.restore()
        os.kill(os.getpid(), signum)
        assert seen == ["previous"]  # restore() put the previous handler back
    finally:
        signal.signal(signum, before)
