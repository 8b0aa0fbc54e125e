"""What every torchrun training script shares: DDP set-up, the LR schedule, resumable batch
order, exact save/resume of the whole training state, and rank-0 logging.

Only what all of train/asr.py, diarizer.py, fastpitch.py, hifigan.py and llm.py would
otherwise copy lives here; each script stays one flat read (config, data, model, optimizer,
loop). Typical use:

    dist = init_distributed()
    args = parse_train_args(__doc__, "configs/asr_demo.toml")
    ...
    batches = ResumableBatches(buckets, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size)
    state = TrainingState(step=0, batches=batches)
    if args.resume:
        load_training_state(args.resume, model, optimizer, scheduler, state)

Exact resume means: after `--resume`, the run continues with the same parameters, optimizer
moments, LR, batch order and random numbers it would have had without the interruption (a
test holds 10 straight steps equal to 5 + resume + 5, bit for bit).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as torch_dist

from minivox.fileio import atomic_path

# ---------------------------------------------------------------------------------------------
# Distributed set-up (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK; a plain `python -m` run is rank 0 of 1)


@dataclass
class Distributed:
    """Where this process sits in the job."""

    rank: int = 0  # global rank
    world_size: int = 1  # number of processes
    local_rank: int = 0  # rank on this host (picks the GPU)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, evaluates and writes checkpoints."""
        return self.rank == 0


def init_distributed(device: str = "auto") -> Distributed:
    """Join the process group when launched by torchrun: nccl on GPUs, gloo on CPUs.

    Args:
        device: "auto" (CUDA if available), "cpu" or "cuda".
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    """Leave the process group (call at the end of a script, also after an exception)."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def all_reduce_mean(value: float, dist: Distributed) -> float:
    """The mean of a per-rank float over all ranks (for logging losses and metrics)."""
    if dist.world_size == 1:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=dist.device)
    torch_dist.all_reduce(tensor)
    return float(tensor.item()) / dist.world_size


class GracefulStop:
    """Ctrl-C / SIGTERM while training: finish the current step, save, exit (never die mid-write).

        stop = GracefulStop()  # installs the handlers
        try:
            while step < max_steps:
                ...one step...
                if stop.agreed(dist):
                    break
            save()
        finally:
            stop.restore()  # the previous handlers
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {s: signal.signal(s, self._request) for s in self.SIGNALS}

    def _request(self, signum, frame) -> None:
        self.requested = True

    def agreed(self, dist: "Distributed") -> bool:
        """Did any rank get a signal? All ranks agree, so all stop after the same step."""
        if dist.world_size > 1:
            flag = torch.tensor([float(self.requested)], device=dist.device)
            torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
            self.requested = bool(flag.item())
        return self.requested

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Learning rate: linear warm-up, then cosine decay to min_lr_ratio * lr (or constant)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0, decay: str = "cosine") -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based).

    Warm-up rises linearly from 1/warmup_steps to 1 over `warmup_steps`; then "cosine" falls to
    `min_lr_ratio` at `total_steps` and stays there, "constant" stays at 1.
    """
    if decay not in ("cosine", "constant"):
        raise ValueError(f"decay must be 'cosine' or 'constant', got {decay!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                   min_lr_ratio: float = 0.0, decay: str = "cosine") -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following `lr_factor`; its state_dict is saved with the training state."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, total_steps, min_lr_ratio, decay)
    )


# ---------------------------------------------------------------------------------------------
# Batch order that can be resumed mid-epoch


class ResumableBatches:
    """An endless stream of batches (lists of example indices), reshuffled every epoch.

    The order depends only on (seed, epoch), so it can be rebuilt after a restart and continued
    at `position`. With several ranks, each epoch's batch list is dealt round-robin, rank r
    taking batches r, r + world_size, ... (the tail that does not divide evenly is dropped so all
    ranks take the same number of steps).
    """

    def __init__(self, batches: Sequence[Sequence[int]], seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        if len(batches) < world_size:
            raise ValueError(f"{len(batches)} batches cannot feed {world_size} ranks: use more data or smaller batches")
        self.batches = [list(b) for b in batches]
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.epoch = 0  # epochs completed
        self.position = 0  # batches of this rank already taken in the current epoch

    @property
    def per_epoch(self) -> int:
        """Batches each rank takes per epoch."""
        return len(self.batches) // self.world_size

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.batches)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order[self.rank : self.per_epoch * self.world_size : self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            order = self._order(self.epoch)
            while self.position < len(order):
                batch = self.batches[order[self.position]]
                self.position += 1
                yield batch
            self.epoch += 1
            self.position = 0

    def state_dict(self) -> dict[str, int]:
        """Where the stream stands (epoch, position) plus what it was built from, for the resume check."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_batches": len(self.batches)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at a saved position; refuses a state made from other batches or another seed."""
        if state["num_batches"] != len(self.batches) or state["seed"] != self.seed:
            raise ValueError(
                f"cannot resume the batch order: it was made from {state['num_batches']} batches with seed "
                f"{state['seed']}, now {len(self.batches)} batches with seed {self.seed} (did the data change?)"
            )
        self.epoch, self.position = state["epoch"], state["position"]


# ---------------------------------------------------------------------------------------------
# Save / resume the whole training state


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any, step: int, batches: ResumableBatches | None = None,
                        extra: dict[str, Any] | None = None) -> Path:
    """Write everything `--resume` needs (model, optimizer, scheduler, step, batch position, RNG) atomically.

    Random-number states are this rank's; with several ranks each rank saves `path` with a
    `.rankN` suffix so each resumes its own stream.
    """
    path = Path(path)
    rank = torch_dist.get_rank() if torch_dist.is_initialized() else 0
    if rank > 0:
        path = path.with_name(f"{path.name}.rank{rank}")
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": step,
        "batches": batches.state_dict() if batches is not None else None,
        "rng": _rng_state(),
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_training_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any, batches: ResumableBatches | None = None) -> tuple[int, dict[str, Any]]:
    """Restore what `save_training_state` wrote; returns (step, extra).

    The file holds numpy/python RNG states, so it is loaded with weights_only=False: only resume
    from files your own runs wrote.
    """
    path = Path(path)
    rank = torch_dist.get_rank() if torch_dist.is_initialized() else 0
    if rank > 0 and path.with_name(f"{path.name}.rank{rank}").exists():
        path = path.with_name(f"{path.name}.rank{rank}")
    if not path.is_file():
        raise ValueError(f"cannot resume: {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=False)
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if batches is not None and state["batches"] is not None:
        batches.load_state_dict(state["batches"])
    _set_rng_state(state["rng"])
    return int(state["step"]), state["extra"]


# ---------------------------------------------------------------------------------------------
# Logging and arguments


class JSONLLogger:
    """Appends one JSON object per line (with wall time) to `path`; a no-op off rank 0."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(path)
        self.start = time.time()
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, **record: Any) -> None:
        """Append `record` (plus elapsed seconds as "time") as one JSON line."""
        if not self.enabled:
            return
        record = {"time": round(time.time() - self.start, 3), **record}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def run_main(main) -> int:
    """Run a training script's main(): a user's mistake (a missing file, a bad config value: OSError
    or ValueError, whose messages say what is wrong) is one line on stderr and exit status 2, not a
    traceback. MINIVOX_TRACEBACK=1 shows the traceback."""
    try:
        return main()
    except (OSError, ValueError) as exc:
        if os.environ.get("MINIVOX_TRACEBACK"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


def parse_train_args(doc: str | None, default_config: str, argv: list[str] | None = None,
                     init_from: bool = False) -> argparse.Namespace:
    """The arguments every training script takes: --config, --out, --resume, then key=value overrides
    (and --init-from, for the scripts that can fine-tune a checkpoint)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=default_config, help=f"TOML preset (default: {default_config})")
    parser.add_argument("--out", default=None, help="run folder for checkpoints and logs (default: runs/<config name>)")
    parser.add_argument("--resume", default=None,
                        help="training-state file to continue from exactly (e.g. runs/asr_demo/state.pt)")
    if init_from:
        parser.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                            help="start a fresh run (new optimizer and LR schedule) from this inference checkpoint's "
                                 "weights and tokenizer: fine-tuning (e.g. minivox/pretrained/asr_demo.pt)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    args = parser.parse_args(argv)
    if getattr(args, "init_from", None) and args.resume:
        parser.error("--init-from starts a new run and --resume continues one: give one of them")
    if args.out is None:
        args.out = str(Path("runs") / Path(args.config).stem)
    return args
