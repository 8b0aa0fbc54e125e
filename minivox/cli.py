"""The `minivox` command.

Each subcommand is registered by a small `register(subparsers)` function and imports its heavy
modules (torch, numba) only when it runs, so `minivox --help` stays instant.

    minivox info                      versions, threads, numba/CUDA, bundled checkpoints
"""

from __future__ import annotations

import argparse
import sys


def _info(args: argparse.Namespace) -> int:
    """Print versions, thread counts, numba/CUDA availability and bundled checkpoints."""
    import platform

    import numpy
    import torch

    import minivox
    from minivox.pretrained import PRETRAINED_DIR, bundled_checkpoints

    rows = [
        ("minivox", minivox.__version__),
        ("python", platform.python_version()),
        ("platform", platform.platform()),
        ("torch", torch.__version__),
        ("torch threads", f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op"),
        ("torch CUDA", _cuda_summary(torch)),
        ("numpy", numpy.__version__),
    ]
    for name in ("numba", "sentencepiece", "websockets", "tqdm"):
        rows.append((name, _version_of(name)))
    rows.append(("numba CUDA", _numba_cuda_summary()))
    found = bundled_checkpoints()
    rows.append(("checkpoints", f"{len(found)} in {PRETRAINED_DIR}"))
    rows += [("", path.name) for path in found]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def _version_of(module_name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module_name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cuda_summary(torch) -> str:
    if not torch.cuda.is_available():
        return "not available"
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return f"{torch.version.cuda} ({names})"


def _numba_cuda_summary() -> str:
    try:
        from numba import cuda
    except ImportError:
        return "numba not installed"
    try:
        return "available" if cuda.is_available() else "not available (kernels run on CPU or under NUMBA_ENABLE_CUDASIM=1)"
    except Exception as exc:  # a broken driver must not break `minivox info`
        return f"not available ({exc})"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `minivox` command, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="minivox",
        description="minivox: a compact, read-along real-time voice agent (ASR, diarization, LLM, TTS).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="versions, torch threads, numba/CUDA availability, bundled checkpoints")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `minivox` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
