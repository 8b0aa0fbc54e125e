"""`minivox data ...`: the training-data subcommands.

    minivox data voices [--json]                      usable voices; install commands for missing engines
    minivox data synth --config configs/data_asr.toml [key=value ...]   speech corpus (ASR / TTS)
    minivox data text --config configs/data_llm.toml                  sentence corpus from packaged text
    minivox data dialogues --config configs/data_llm.toml             chat transcripts for the LLM
    minivox data mix --config configs/data_diar.toml                  conversations + RTTM
    minivox data import {ljspeech,librispeech,nemo,rttm} ...          real corpora as minivox manifests

Each subcommand's function imports its heavy modules (torch, the engines) only when it runs.
"""

from __future__ import annotations

import argparse


def _voices(args: argparse.Namespace) -> int:
    from minivox.data.voices import run_voices

    return run_voices(args)


def _synth(args: argparse.Namespace) -> int:
    from minivox.data.synth import run_synth_command

    return run_synth_command(args)


def register(subparsers) -> None:
    """Add the `data` command, with its subcommands, to the `minivox` subparsers."""
    from minivox.data import dialogues, loaders, mix, textcorpus

    data = subparsers.add_parser("data", help="make training data: voices, synth, text, dialogues, mix, import")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    voices = sub.add_parser("voices", help="list usable voices (engine, voice, speaker id, native rate) and how to install the missing ones")
    voices.add_argument("--json", action="store_true", help="machine-readable output")
    voices.set_defaults(func=_voices)

    synth = sub.add_parser("synth", help="synthesise a speech corpus (WAV + NeMo manifests) with the installed engines")
    synth.add_argument("--config", default="configs/data_asr.toml", help="recipe TOML: configs/data_asr.toml or configs/data_tts.toml")
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    synth.add_argument("overrides", nargs="*", help="config overrides, e.g. counts.train=500 out_dir=/tmp/asr")
    synth.set_defaults(func=_synth)

    for module in (textcorpus, dialogues, mix, loaders):
        module.register(sub)
