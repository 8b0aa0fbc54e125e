"""Benchmark: LLM prefill and decode speed on the CPU, minivox vs Hugging Face transformers GPT-2.

Usage (from the repository root):

    .venv/bin/python bench/llm.py --peer-python /work/bench-venv/bin/python

transformers lives in its own venv so that it cannot change .venv's torch, e.g.
    python3 -m venv /work/bench-venv
    /work/bench-venv/bin/pip install torch==2.13.0 transformers    # the CPU wheel (check: no nvidia-* packages)

Both models have the demo model's shape (configs/llm_demo.toml: 6 layers x 256 wide, 4 heads,
vocabulary 4096, 512 positions) with random weights (speed does not depend on them):

    minivox            minivox.llm.generate (the streaming API the chat backend uses), greedy, fp32
    minivox int8       the same after minivox.llm.quantize_int8 (int8 Linear weights, dynamic quantization)
    hf loop            transformers GPT2LMHeadModel called token by token with past_key_values, greedy argmax
    hf generate        GPT2LMHeadModel.generate(do_sample=False, use_cache=True), the call most users make

The prompt is 200 random token ids; each implementation then generates --new-tokens tokens (no
stop token). Reported: prefill tokens/s (the 200-token prompt through the model), time to the
first generated token, and decode tokens/s over the remaining tokens. Each worker process runs one
warm-up, then --repeats timed runs (median); --rounds worker processes per implementation are
interleaved so that load from elsewhere on a shared machine hits all alike; the table shows the
best round. Prints one markdown table.

This file imports only the standard library and torch at the top, so the peer venv can run it as a
worker without minivox installed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SHAPE = {"n_layer": 6, "d_model": 256, "n_head": 4, "vocab_size": 4096, "max_seq_len": 512}
IMPLEMENTATIONS = ("minivox", "minivox int8", "hf loop", "hf generate")


# ---------------------------------------------------------------------------
# Workers: one implementation, in its own process
# ---------------------------------------------------------------------------


def run_minivox(prompt: list[int], new_tokens: int, int8: bool = False) -> dict:
    from minivox.llm import GPT, GPTConfig, SamplingConfig, generate, quantize_int8

    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE)).eval()
    if int8:
        model = quantize_int8(model)
    sampling = SamplingConfig(temperature=0.0, max_tokens=new_tokens)

    def once() -> dict:
        start = time.perf_counter()
        first = None
        count = 0
        for _ in generate(model, prompt, sampling):
            count += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        return {"ttft": first - start, "decode": (count - 1) / (end - first), "tokens": count}

    def prefill() -> float:
        cache = model.new_cache()
        tokens = torch.tensor([prompt])
        start = time.perf_counter()
        with torch.inference_mode():
            model(tokens, cache, last_only=True)
        return time.perf_counter() - start

    return {"once": once, "prefill": prefill}


def _hf_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=SHAPE["vocab_size"], n_positions=SHAPE["max_seq_len"], n_embd=SHAPE["d_model"],
                     n_layer=SHAPE["n_layer"], n_head=SHAPE["n_head"], bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def run_hf_loop(prompt: list[int], new_tokens: int) -> dict:
    model = _hf_model()
    ids = torch.tensor([prompt])

    def once() -> dict:
        start = time.perf_counter()
        with torch.inference_mode():
            out = model(ids, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)  # [1, 1]
            first = time.perf_counter()
            past = out.past_key_values
            for _ in range(new_tokens - 1):
                out = model(token, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = out.logits[:, -1].argmax(-1, keepdim=True)
        end = time.perf_counter()
        return {"ttft": first - start, "decode": (new_tokens - 1) / (end - first), "tokens": new_tokens}

    def prefill() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model(ids, use_cache=True)
        return time.perf_counter() - start

    return {"once": once, "prefill": prefill}


def run_hf_generate(prompt: list[int], new_tokens: int) -> dict:
    from transformers.generation.streamers import BaseStreamer

    model = _hf_model()
    ids = torch.tensor([prompt])

    class Clock(BaseStreamer):
        """generate() calls put(prompt), then put(token) per new token: record when each comes."""

        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def once() -> dict:
        clock = Clock()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, use_cache=True, streamer=clock,
                                 pad_token_id=0)
        end = time.perf_counter()
        count = out.shape[1] - ids.shape[1]
        first = clock.times[1]  # times[0] is the prompt
        return {"ttft": first - start, "decode": (count - 1) / (end - first), "tokens": count}

    return {"once": once, "prefill": run_hf_loop(prompt, new_tokens)["prefill"]}


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    prompt = torch.randint(0, SHAPE["vocab_size"], (args.prompt_tokens,), generator=torch.Generator().manual_seed(args.seed)).tolist()
    run = {"minivox": run_minivox, "minivox int8": lambda p, n: run_minivox(p, n, int8=True), "hf loop": run_hf_loop,
           "hf generate": run_hf_generate}[args.worker](prompt, args.new_tokens)
    run["once"]()  # warm-up
    runs = [run["once"]() for _ in range(args.repeats)]
    prefills = [run["prefill"]() for _ in range(args.repeats)]
    result = {"ttft_ms": 1e3 * statistics.median(r["ttft"] for r in runs),
              "decode_tok_s": statistics.median(r["decode"] for r in runs),
              "prefill_tok_s": len(prompt) / statistics.median(prefills), "tokens": runs[0]["tokens"]}
    if args.worker.startswith("hf"):
        import transformers

        result["version"] = f"transformers {transformers.__version__}, torch {torch.__version__}"
    else:
        result["version"] = f"torch {torch.__version__}"
    print(json.dumps(result))


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-python", default=None, help="python of a venv with transformers (omit to skip HF)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the agent's budget)")
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per worker process")
    parser.add_argument("--rounds", type=int, default=3, help="worker processes per implementation, interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    pythons = {"minivox": sys.executable, "minivox int8": sys.executable}
    if args.peer_python:
        pythons.update({"hf loop": args.peer_python, "hf generate": args.peer_python})
    results: dict[str, list[dict]] = {name: [] for name in pythons}
    for round_ in range(args.rounds):
        for name, python in pythons.items():
            cmd = [python, str(Path(__file__).resolve()), "--worker", name, "--threads", str(args.threads),
                   "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
                   "--repeats", str(args.repeats), "--seed", str(args.seed)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{name} worker failed:\n{out.stderr[-2000:]}")
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {round_ + 1}/{args.rounds} {name}: {results[name][-1]}", file=sys.stderr)

    best = {name: {"decode_tok_s": max(r["decode_tok_s"] for r in rs), "prefill_tok_s": max(r["prefill_tok_s"] for r in rs),
                   "ttft_ms": min(r["ttft_ms"] for r in rs), "version": rs[0]["version"]} for name, rs in results.items()}
    print(f"\nLLM speed, {SHAPE['n_layer']} layers x {SHAPE['d_model']} wide, {SHAPE['n_head']} heads, vocabulary "
          f"{SHAPE['vocab_size']}; prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens (greedy); "
          f"{args.threads} thread(s); {platform.processor() or platform.machine()}; best of {args.rounds} rounds\n")
    print("| implementation | prefill tokens/s | time to first token (ms) | decode tokens/s | decode vs hf generate |")
    print("| --- | ---: | ---: | ---: | ---: |")
    ref = best.get("hf generate", {}).get("decode_tok_s")
    for name, b in best.items():
        ratio = f"{b['decode_tok_s'] / ref:.2f}x" if ref else "-"
        print(f"| {name} ({b['version']}) | {b['prefill_tok_s']:,.0f} | {b['ttft_ms']:.1f} | {b['decode_tok_s']:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
