"""`python -m minivox.serve`: the voice agent.

    python -m minivox.serve demo                      # bundled models on http://127.0.0.1:8765/
    python -m minivox.serve demo --selftest           # speak a question to it and print what came back
    python -m minivox.serve server --config configs/serve.toml [--llm-base-url URL] [--log-audio DIR]
    python -m minivox.serve client --wav question.wav [--out reply.wav] [--events events.jsonl]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

SELFTEST_QUESTION = "What time is it?"


def _server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a TOML file with ServerConfig fields (e.g. configs/serve.toml)")
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--max-sessions", type=int, help="concurrent sessions (default 4)")
    p.add_argument("--llm-base-url", help="use an OpenAI-compatible server (e.g. http://localhost:8000/v1) "
                   "instead of the local LLM")
    p.add_argument("--log-audio", metavar="DIR", help="write each session's audio (WAV) and events (JSONL) here")
    p.add_argument("--asr", help="ASR checkpoint (default: the bundled demo model)")
    p.add_argument("--llm", help="LLM checkpoint (default: the bundled demo model)")
    p.add_argument("--fastpitch", help="FastPitch checkpoint (default: the bundled demo voice)")
    p.add_argument("--hifigan", help="HiFi-GAN checkpoint (default: the bundled demo voice)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. pipeline.turns.vad_silence_ms=600")
    p.add_argument("-v", "--verbose", action="store_true", help="log every session")


def _config(args: argparse.Namespace):
    from minivox.serve.server import load_server_config

    cfg = load_server_config(args.config, args.overrides)
    for name in ("host", "port", "max_sessions", "log_audio"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(cfg, name, value)
    for name, attr in (("asr", "asr"), ("llm", "llm"), ("fastpitch", "fastpitch"), ("hifigan", "hifigan"),
                       ("llm_base_url", "llm_base_url")):
        value = getattr(args, name, None)
        if value:
            setattr(cfg.models, attr, value)
    return cfg


def run_server(args: argparse.Namespace) -> int:
    from minivox.serve.audio_log import AudioLogger
    from minivox.serve.pipeline import Models
    from minivox.serve.server import serve_until_signal

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    try:
        cfg = _config(args)
        audio_log = AudioLogger(cfg.log_audio) if cfg.log_audio else None
        print("loading models ...", file=sys.stderr)
        models = Models.load(cfg.models, threads=cfg.threads)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "selftest", False):
        return asyncio.run(_selftest(models, cfg))

    def ready(server) -> None:
        print(f"minivox agent listening: open {server.url} in a browser (Ctrl-C stops it)", flush=True)

    try:
        asyncio.run(serve_until_signal(models, cfg, ready, audio_log))
    except OSError as exc:
        print(f"error: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        models.close()
    return 0


async def _selftest(models, cfg) -> int:
    """Speak SELFTEST_QUESTION with our own TTS into a live server and print the reply."""
    import numpy as np

    from minivox.serve.client import report, run_client
    from minivox.serve.server import AgentServer

    question, rate = models.tts.synthesize(SELFTEST_QUESTION)
    pad = np.zeros(int(0.5 * rate), dtype=np.float32)
    audio = np.concatenate([pad, question, pad])
    cfg.port = 0
    server = AgentServer(models, cfg)
    await server.start()
    print(f"selftest: speaking {SELFTEST_QUESTION!r} ({len(question) / rate:.2f} s, minivox TTS) to {server.url}")
    try:
        result = await run_client(f"ws://{cfg.host}:{server.port}/ws", audio, rate, realtime=True)
    finally:
        await server.stop()
        models.close()
    report(result)
    return 0 if result.turns and result.turns[0].audio_samples > 0 else 1


def main(argv: list[str] | None = None) -> int:
    from minivox.serve.client import add_arguments as client_arguments
    from minivox.serve.client import run_client_command

    parser = argparse.ArgumentParser(prog="python -m minivox.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the agent with the bundled demo models on 127.0.0.1:8765")
    _server_arguments(demo)
    demo.add_argument("--selftest", action="store_true",
                      help="speak a question (minivox TTS) to the agent through the CLI client and print the reply")
    server = sub.add_parser("server", help="the agent with the models and settings of --config")
    _server_arguments(server)
    client = sub.add_parser("client", help="stream a WAV file to a running agent and save its reply")
    client_arguments(client)
    args = parser.parse_args(argv)
    if args.command == "client":
        return run_client_command(args)
    return run_server(args)


if __name__ == "__main__":
    sys.exit(main())
