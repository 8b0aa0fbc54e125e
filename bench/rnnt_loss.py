"""Benchmark: RNN-T loss forward + backward on the CPU, minivox kernel vs reference vs torchaudio.

Usage (from the repository root):

    .venv/bin/python bench/rnnt_loss.py --peer-python /work/oracle-venv/bin/python

torchaudio needs its own venv (it pins its torch), e.g.
    python3 -m venv /work/oracle-venv
    /work/oracle-venv/bin/pip install torch==2.14.1 torchaudio==2.11.0 numpy

Every implementation runs in fresh subprocesses on the same inputs (drawn from --seed and
passed through a temporary .pt file), with --threads threads for torch and numba alike:

    minivox     minivox.kernels.rnnt_loss (numba CPU kernel)
    reference   minivox.kernels.rnnt_loss_reference (pure torch, autograd backward)
    torchaudio  torchaudio.functional.rnnt_loss, run by --peer-python (omit to skip)

Reported per case: the best and the median wall time of forward + backward over --rounds
worker processes x --repeats runs, each process after one warm-up run (rounds interleave
the implementations, so a burst of load from elsewhere on a shared machine hits all of
them alike; ratios use the best times); the peak resident memory the runs add on top of
the loaded inputs; and each implementation's error against a float64 computation of the
same inputs (largest relative cost error; largest gradient error relative to the largest
gradient). Prints one markdown table.

This file imports only the standard library and torch at the top, so the peer venv can
run it as a worker without minivox installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# (name, B, T, U, V, ragged): the three shapes and one ragged-length batch.
CASES = [
    ("A", 8, 200, 50, 256, False),
    ("B", 32, 150, 40, 28, False),
    ("C", 4, 500, 100, 1024, False),
    ("ragged", 16, 250, 40, 256, True),
]
IMPLEMENTATIONS = ("minivox", "reference", "torchaudio")
BIG = 50_000_000  # logits above which fewer timed runs are made (case C: 207M)


# ---------------------------------------------------------------------------
# Worker: one implementation on one input file, in its own process
# ---------------------------------------------------------------------------

def _memory_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident since the last reset) in MiB (Linux)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def _reset_peak_memory() -> None:
    """Restart VmHWM from the current RSS (Linux >= 4.0; getrusage's maxrss cannot be reset)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _loss_fn(impl: str):
    if impl == "minivox":
        from minivox.kernels import rnnt_loss
        return rnnt_loss
    if impl == "reference":
        from minivox.kernels import rnnt_loss_reference
        return rnnt_loss_reference
    import torchaudio.functional

    return torchaudio.functional.rnnt_loss


def worker(impl: str, input_path: str, repeats: int, threads: int) -> dict:
    """Time forward + backward of `impl`; return times, peak memory and the costs."""
    torch.set_num_threads(threads)
    loss_fn = _loss_fn(impl)
    # A tiny call first loads the libraries (numba and its cached machine code, torchaudio's
    # extension), so the memory figure below is the computation's, not the imports'.
    tiny = torch.zeros(1, 2, 2, 3, requires_grad=True)
    ones = torch.ones(1, dtype=torch.int32)
    loss_fn(tiny, ones.view(1, 1), 2 * ones, ones).backward()
    data = torch.load(input_path)
    logits = data["logits"].requires_grad_()  # [B, T, U+1, V]
    args = (data["targets"], data["logit_lengths"], data["target_lengths"])
    _reset_peak_memory()
    base_mb = _memory_mb("VmRSS")  # libraries and inputs loaded, nothing computed yet

    def step():
        logits.grad = None
        start = time.perf_counter()
        loss_fn(logits, *args, reduction="mean").backward()
        return time.perf_counter() - start

    warmup = step()  # numba cache load / first-touch allocations
    times = [step() for _ in range(repeats)]
    peak_mb = _memory_mb("VmHWM") - base_mb
    torch.save(logits.grad, f"{input_path}.{impl}.grad")  # the driver compares the gradients
    with torch.no_grad():
        costs = loss_fn(logits, *args, reduction="none")
    return dict(times=times, warmup=warmup, peak_mb=peak_mb, costs=costs.tolist(),
                torch=torch.__version__)


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------

def make_inputs(B: int, T: int, U: int, V: int, ragged: bool, seed: int) -> dict:
    """Random joint outputs and targets; blank is the last class (torchaudio's default)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, U + 1, V, generator=g)  # [B, T, U+1, V]
    targets = torch.randint(0, V - 1, (B, U), generator=g, dtype=torch.int32)  # [B, U]
    if ragged:
        logit_lengths = torch.randint(T // 2, T + 1, (B,), generator=g, dtype=torch.int32)
        target_lengths = torch.randint(U // 2, U + 1, (B,), generator=g, dtype=torch.int32)
        logit_lengths[0], target_lengths[-1] = T, U  # the longest sets the tensor size
    else:
        logit_lengths = torch.full((B,), T, dtype=torch.int32)
        target_lengths = torch.full((B,), U, dtype=torch.int32)
    return dict(logits=logits, targets=targets, logit_lengths=logit_lengths, target_lengths=target_lengths)


def run_worker(python: str, impl: str, input_path: Path, repeats: int, threads: int, timeout: float) -> dict:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    cmd = [python, __file__, "--worker", impl, "--input", str(input_path), "--repeats", str(repeats),
           "--threads", str(threads)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:.0f} s")
    if done.returncode != 0:
        return dict(error=done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _add_errors_vs_float64(input_path: Path, results: dict, threads: int) -> None:
    """Add each result's cost and gradient error against a float64 oracle computed here.

    The oracle is minivox's kernel on float64 logits, which tests/test_rnnt_loss.py holds
    equal to the float64 pure-torch reference (1e-12) on random problems.
    """
    from minivox.kernels import rnnt_loss

    torch.set_num_threads(threads)
    data = torch.load(input_path)
    logits = data["logits"].double().requires_grad_()
    args = (data["targets"], data["logit_lengths"], data["target_lengths"])
    rnnt_loss(logits, *args, reduction="mean").backward()
    with torch.no_grad():
        costs = rnnt_loss(logits, *args, reduction="none")
    grad_scale = logits.grad.abs().max()
    for impl, result in results.items():
        if result is None or "error" in result:
            continue
        grad = torch.load(f"{input_path}.{impl}.grad")
        result["cost_error"] = _max_rel_diff(result["costs"], costs.tolist())
        result["grad_error"] = ((grad.double() - logits.grad).abs().max() / grad_scale).item()
        del grad


def _repeats_for(n_logits: int, repeats: int) -> int:
    return repeats if n_logits <= BIG else max(2, repeats // 2)


def _ok(result: dict | None) -> bool:
    return result is not None and "error" not in result


def _fmt_ms(result: dict | None) -> str:
    """'best (median)' milliseconds of a result's timed runs."""
    if result is None:
        return "skipped"
    if "error" in result:
        return f"error: {result['error']}"
    return f"{1000 * min(result['times']):.1f} ({1000 * statistics.median(result['times']):.1f})"


def _fmt_mb(result: dict | None) -> str:
    return f"{result['peak_mb']:.0f}" if result and "error" not in result else "-"


def _max_rel_diff(a: list, b: list) -> float:
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", help="python of a venv with torchaudio (omit: no torchaudio column)")
    parser.add_argument("--threads", type=int, default=2, help="torch and numba threads for every side")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per worker process")
    parser.add_argument("--rounds", type=int, default=2,
                        help="worker processes per implementation and case, interleaved across implementations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", default=",".join(c[0] for c in CASES), help="comma-separated case names")
    parser.add_argument("--reference-max-nodes", type=int, default=60_000,
                        help="skip the reference when T*(U+1) exceeds this (its Python loop runs per lattice node)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per worker")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.input, args.repeats, args.threads)))
        return 0

    wanted = args.cases.split(",")
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for name, B, T, U, V, ragged in [c for c in CASES if c[0] in wanted]:
            input_path = Path(tmp) / f"{name}.pt"
            torch.save(make_inputs(B, T, U, V, ragged, args.seed), input_path)
            repeats = _repeats_for(B * T * (U + 1) * V, args.repeats)
            pythons = {"minivox": sys.executable}
            if T * (U + 1) <= args.reference_max_nodes:
                pythons["reference"] = sys.executable
            if args.peer_python:
                pythons["torchaudio"] = args.peer_python
            results = {impl: None for impl in IMPLEMENTATIONS}
            for _ in range(args.rounds):  # interleaved, so a burst of load hits every side alike
                for impl, python in pythons.items():
                    result = run_worker(python, impl, input_path, repeats, args.threads, args.timeout)
                    if results[impl] is not None and "error" not in result:
                        result["times"] += results[impl]["times"]
                        result["peak_mb"] = max(result["peak_mb"], results[impl]["peak_mb"])
                    results[impl] = result
            _add_errors_vs_float64(input_path, results, args.threads)
            for path in Path(tmp).glob("*"):
                path.unlink()  # case C writes about 1 GB per implementation
            rows.append((name, B, T, U, V, ragged, results))
            print(f"# done {name}: " + ", ".join(f"{k} {_fmt_ms(v)} ms" for k, v in results.items()),
                  file=sys.stderr)
    load_after = os.getloadavg()

    print(f"RNN-T loss forward+backward, CPU ({platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} threads for torch and numba), reduction='mean', blank = last class. "
          f"Times: best (median) of {args.rounds} processes x {args.repeats} runs "
          f"({_repeats_for(BIG + 1, args.repeats)} above {BIG:,} logits); ratios from the best times.")
    peer = rows[0][6]["torchaudio"] if rows else None
    peer_version = f", torchaudio side on torch {peer['torch']}" if _ok(peer) else ""
    print(f"torch {torch.__version__}{peer_version}; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after.\n")
    print("| case | B, T, U, V | minivox ms | torchaudio ms | reference ms | torchaudio / minivox "
          "| reference / minivox | peak MiB minivox / torchaudio / reference "
          "| cost error vs float64 (same order) | grad error vs float64 (same order) |")
    print("|---|---|---:|---:|---:|---:|---:|---|---|---|")
    for name, B, T, U, V, ragged, results in rows:
        ours, ta, ref = results["minivox"], results["torchaudio"], results["reference"]
        shape = f"{B}, {'<=' if ragged else ''}{T}, {'<=' if ragged else ''}{U}, {V}"

        def ratio(other):
            if not (_ok(ours) and _ok(other)):
                return "-"
            return f"{min(other['times']) / min(ours['times']):.1f}x"

        cost_errors = " / ".join(f"{r['cost_error']:.0e}" if _ok(r) else "-" for r in (ours, ta, ref))
        grad_errors = " / ".join(f"{r['grad_error']:.0e}" if _ok(r) else "-" for r in (ours, ta, ref))
        ref_cell = _fmt_ms(ref) if ref is not None else "skipped (too slow)"
        print(f"| {name} | {shape} | {_fmt_ms(ours)} | {_fmt_ms(ta)} | {ref_cell} | {ratio(ta)} | {ratio(ref)} "
              f"| {_fmt_mb(ours)} / {_fmt_mb(ta)} / {_fmt_mb(ref)} | {cost_errors} | {grad_errors} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
