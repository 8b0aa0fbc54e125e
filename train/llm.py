"""Train the LLM: sentencepiece tokenizer, pre-training on the sentence corpus, then supervised
fine-tuning (SFT) on chat dialogues with the loss on assistant tokens only.

    # data first (docs/data.md): minivox data text / minivox data dialogues --config configs/data_llm.toml
    python -m minivox.train.llm --config configs/llm_demo.toml --out runs/llm_demo
    python -m minivox.train.llm --config configs/llm_demo.toml --out runs/llm_demo --resume runs/llm_demo/state.pt
    python -m minivox.train.llm --config configs/llm_demo.toml --out runs/my_llm \
        --init-from minivox/pretrained/llm_demo.pt pretrain.steps=0 sft.steps=1000 data.dialogues_dir=my_dialogues
    torchrun --standalone --nproc_per_node=2 -m minivox.train.llm --config configs/llm_base.toml
    python -m minivox.train.llm --evaluate minivox/pretrained/llm_demo.pt --split test    # scores only
    python -m minivox.train.llm --evaluate minivox/pretrained/llm_demo.pt --samples       # small-talk samples
    python -m minivox.train.llm --evaluate minivox/pretrained/llm_demo.pt --copy-probe data/llm/sentences.jsonl

One run is: tokenizer (trained once, saved as {out}/tokenizer.model and reused on resume) ->
`pretrain.steps` steps of next-token prediction on packed sentences (`pretrain.repeat_share` of the
rows ending in a repeat of their own text, to learn copying: `with_repeats`) -> `sft.steps` steps on
dialogues rendered with the chat template (minivox/chat_template.py). `copy_share` gives a share of
either phase's batches to synthetic copying rows (`induction_rows`: random tokens that repeat a span
of themselves), which teach in-context copying where text alone did not. Every `eval_every` steps rank 0
logs held-out perplexity (sentences), the dev SFT loss and tool-call accuracy on dev dialogues;
every `checkpoint_every` steps and at exit (also on Ctrl-C / SIGTERM) it writes {out}/state.pt
(exact resume) and {out}/llm.pt (inference checkpoint); at the end, `export` gets an fp16 copy.
`--init-from CHECKPOINT` starts a new run (fresh optimizer and schedule) from a checkpoint's weights
and tokenizer: fine-tuning on other dialogues (its [model] must be the config's). With
`sft.user_token_noise = p`, SFT replaces each user-message token with a random one with probability p
(never a value: digits, number and operator words, tokens the assistant repeats), so the model learns
to read a request's content rather than one exact phrasing, and to cope with ASR errors.

Scores (`evaluate_dialogues`), measured by greedy decoding with the reference context up to each
assistant message:
- tool-call accuracy: of the assistant messages that call tools, those whose calls have the right
  names, valid arguments and give the same results as the reference calls;
- answer accuracy: of the assistant answers right after tool results, those that state every
  tool-result value the reference answer states (case-insensitive).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from minivox import tools
from minivox.chat_template import IGNORE_INDEX, SYSTEM_PROMPT, ChatTemplate, format_tool_calls, train_chat_tokenizer
from minivox.config import load_config
from minivox.llm import GPT, GPTConfig, SamplingConfig, generate, quantize_int8
from minivox.text import Tokenizer
from minivox.train.common import (GracefulStop, JSONLLogger, ResumableBatches, cleanup_distributed,
                                  init_distributed, load_training_state, lr_factor, parse_train_args, run_main,
                                  save_training_state, seed_everything)


# ---------------------------------------------------------------------------------------------
# Config


@dataclass
class TokenizerRecipe:
    model_type: str = "unigram"  # sentencepiece model type ("unigram" or "bpe")
    max_lines: int = 150000  # training lines: sentences plus dialogue message texts (sentencepiece is slow beyond)


@dataclass
class DataConfig:
    sentences: str = "data/llm/sentences.jsonl"  # `minivox data text` output
    dialogues_dir: str = "data/llm"  # holds dialogues_{train,dev,test}.jsonl (`minivox data dialogues`)
    heldout_per_mille: int = 10  # sentences held out for perplexity, by a hash of their text
    max_sentences: int = 0  # 0 = all; fewer for quick runs


@dataclass
class PhaseConfig:
    steps: int = 1000  # optimizer steps in this phase
    batch_tokens: int = 8192  # tokens per step per rank (padding included)
    lr: float = 1e-3  # peak learning rate (AdamW)
    warmup_steps: int = 100  # linear warm-up, then cosine decay
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    seq_len: int = 128  # pre-training chunk length (SFT uses whole dialogues up to max_seq_len)
    user_token_noise: float = 0.0  # SFT only: share of user-message tokens replaced by random ones (unseen phrasing, ASR errors)
    repeat_share: float = 0.0  # pre-training only: share of rows that end by repeating a span of themselves
    #   (with_repeats): the demo model never learnt to copy from unrelated sentences, and the assistant must copy
    copy_share: float = 0.0  # share of each step's batch_tokens given to synthetic copying rows (induction_rows),
    #   the rest to the phase's own data (pre-training may take 1.0: nothing but copying)
    copy_vocab: int = 0  # the copying rows draw from this many of the dialogues' commonest pieces (0: all of them)


@dataclass
class TrainLLMConfig:
    model: GPTConfig = field(default_factory=GPTConfig)
    tokenizer: TokenizerRecipe = field(default_factory=TokenizerRecipe)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PhaseConfig = field(default_factory=lambda: PhaseConfig(steps=1000, lr=1e-3))
    sft: PhaseConfig = field(default_factory=lambda: PhaseConfig(steps=2000, lr=5e-4, warmup_steps=50))
    weight_decay: float = 0.1  # AdamW decoupled decay on matrices (not norms)
    betas: tuple[float, float] = (0.9, 0.95)  # GPT-3/LLaMA AdamW betas
    grad_clip: float = 1.0  # global gradient-norm clip
    seed: int = 0
    threads: int = 1  # torch intra-op threads per rank (CPU)
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 10  # steps between JSONL log lines
    eval_every: int = 500  # steps between evaluations
    eval_dialogues: int = 40  # dev dialogues for the periodic tool-call accuracy
    checkpoint_every: int = 200  # steps between state.pt writes
    export: str = ""  # fp16 inference checkpoint written at the end (e.g. minivox/pretrained/llm_demo.pt)
    stop_at: int = 0  # stop after this many steps (state saved, resumable); 0 = run to the end

    def __post_init__(self):
        if not (0 <= self.pretrain.copy_share <= 1 and 0 <= self.sft.copy_share < 1):
            raise ValueError(f"copy_share is a share of each batch: pretrain.copy_share must be in [0, 1] and "
                             f"sft.copy_share in [0, 1), got {self.pretrain.copy_share} and {self.sft.copy_share}")


# ---------------------------------------------------------------------------------------------
# Data


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def is_heldout(text: str, per_mille: int) -> bool:
    """A fixed, content-based split: the same sentence is always on the same side."""
    return zlib.crc32(text.encode("utf-8")) % 1000 < per_mille


def tokenizer_lines(sentences: list[str], dialogues: list[dict], max_lines: int, seed: int) -> list[str]:
    """Text for sentencepiece: sentences plus every message text of the dialogues (calls as their JSON)."""
    lines = []
    for d in dialogues:
        for m in d["messages"]:
            if m["role"] == "system":
                continue
            lines.append(m["content"] if not m.get("tool_calls") else format_tool_calls(m["tool_calls"]))
    lines = [line for line in lines if line.strip()]
    rng = random.Random(seed)
    rng.shuffle(lines)
    half = max_lines // 2
    picked = lines[:half] + sentences[: max_lines - min(half, len(lines))]
    return picked + [SYSTEM_PROMPT]


def pack_sentences(tokenizer: Tokenizer, texts: list[str], seq_len: int, end_id: int) -> torch.Tensor:
    """Sentences joined by `<|end|>` into one stream, cut into rows of seq_len + 1 tokens: [N, seq_len + 1]."""
    stream: list[int] = []
    for text in texts:
        stream += tokenizer.encode(text) + [end_id]
    n = max(0, len(stream) - 1) // seq_len
    if n == 0:
        return torch.zeros(0, seq_len + 1, dtype=torch.long)
    data = torch.tensor(stream[: n * seq_len + 1], dtype=torch.long)
    return data.unfold(0, seq_len + 1, seq_len)  # [N, seq_len + 1]: row i starts at i * seq_len


def with_repeats(rows: torch.Tensor, share: float, seed: int) -> tuple[torch.Tensor, list[int]]:
    """A copy of `rows` [N, L + 1] in which a `share` of the rows end with a repeat: their last k tokens
    (8 <= k <= (L + 1) // 3) replaced by a span from earlier in the same row; and each row's k (0: none).

    Rows of unrelated short sentences hardly ever repeat anything, and a model learns to copy (the
    "induction heads" of Olsson et al. 2022) from text that does; the assistant must copy the
    user's words into calls and tool results into answers. Seeded: the same rows on every resume.
    """
    rows, rng = rows.clone(), random.Random(f"repeats/{seed}")
    width, lengths = rows.shape[1], [0] * len(rows)
    for i in range(len(rows)):
        if rng.random() < share:
            k = lengths[i] = rng.randint(8, width // 3)
            source = rng.randint(0, width - 2 * k)  # the span lies wholly before the tail it is copied to
            rows[i, width - k:] = rows[i, source:source + k]
    return rows, lengths


def induction_rows(n: int, width: int, vocab: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n synthetic rows for learning to copy: inputs x [n, width], each a random span of p tokens
    (8 <= p <= width // 2, drawn uniformly from `vocab`) repeated to fill the row, and targets y
    [n, width]: the next token wherever copying predicts it (from the span's second copy on, once
    its first token has shown where the copy is), IGNORE_INDEX elsewhere.

    Copying from context (the "induction heads" of Olsson et al. 2022: find where the current token
    occurred before, predict what followed it) is what the assistant needs to echo numbers, words and
    dictionary entries, and the demo model did not learn it from sentences or dialogues. On random
    tokens nothing but copying predicts anything, and with most of each row repeating, the plateau
    before the skill appears is shorter (a 2-layer model: ~350 steps of 32 rows, against 1,500 with
    one span repeated once per row; the 6-layer demo model takes far longer: MODEL_CARD.md).
    """
    x = torch.empty(n, width + 1, dtype=torch.long)
    y = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    for i in range(n):
        p = int(torch.randint(8, width // 2 + 1, (1,), generator=generator))
        span = vocab[torch.randint(len(vocab), (p,), generator=generator)]
        x[i] = span.repeat(width // p + 1)[: width + 1]
        y[i, p:] = x[i, p + 1:]  # target at t is token t + 1: scored from the second copy's second token on
    return x[:, :-1], y


def copy_vocabulary(ids: list[list[int]], size: int, exclude: set[int]) -> torch.Tensor:
    """The `size` commonest token ids of `ids` (0: every id that occurs), without `exclude`."""
    counts = torch.bincount(torch.tensor([t for row in ids for t in row]))
    if exclude:
        counts[[i for i in exclude if i < len(counts)]] = 0
    order = torch.argsort(counts, descending=True, stable=True)
    order = order[counts[order] > 0]
    return order[:size] if size else order


def join_batches(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (x, y) batches as one, the narrower right-padded (inputs 0, targets IGNORE_INDEX)."""
    width = max(a[0].shape[1], b[0].shape[1])
    pad = lambda t, value: F.pad(t, (0, width - t.shape[1]), value=value)  # noqa: E731
    return (torch.cat([pad(a[0], 0), pad(b[0], 0)]), torch.cat([pad(a[1], IGNORE_INDEX), pad(b[1], IGNORE_INDEX)]))


def encode_dialogues(template: ChatTemplate, dialogues: list[dict], max_len: int) -> tuple[list[list[int]], list[list[int]], int]:
    """(ids, targets) of every dialogue that fits `max_len` tokens; returns also how many were dropped."""
    ids, targets, dropped = [], [], 0
    for d in dialogues:
        x, y = template.encode_dialogue(d["messages"])
        if len(x) > max_len:
            dropped += 1
            continue
        ids.append(x)
        targets.append(y)
    return ids, targets, dropped


# Words that carry a request's values: token noise never replaces them (nor digits, nor any token the
# assistant's messages repeat, such as a word to define or a unit), so every target stays predictable.
VALUE_WORDS = set("""zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million
point half quarter plus minus times multiplied multiply divided divide over percent squared square power add
subtract sum product""".split())


def value_token_ids(tokenizer) -> set[int]:
    """Ids of the pieces that carry a value: any digit, or a word of VALUE_WORDS."""
    pieces = ((i, tokenizer.id_to_piece(i).lstrip("\u2581").lower()) for i in range(tokenizer.vocab_size))
    return {i for i, word in pieces if any(c.isdigit() for c in word) or word in VALUE_WORDS}


def user_token_positions(template: ChatTemplate, ids: list[int], value_ids: set[int]) -> list[int]:
    """Positions in a dialogue's ids (`template.encode_dialogue`) of user-message text tokens that
    SFT token noise may replace: not role markers, speaker tags or `<|end|>`, and none that carry a
    value (`value_ids`, or a token the assistant's messages repeat)."""
    roles = set(template.role_ids.values())
    user, assistant = template.role_ids["user"], template.role_ids["assistant"]
    user_spans, repeated, role, start = [], set(), None, 0
    for i, t in enumerate(ids):  # every message is <role> ... <|end|>
        if t in roles:
            role, start = t, i + 1
        elif t == template.end_id:
            if role == user:
                user_spans.append((start, i))
            elif role == assistant:
                repeated.update(ids[start:i])
    skip = repeated | value_ids | set(template.speaker_ids)
    return [i for a, b in user_spans for i in range(a, b) if ids[i] not in skip]


def add_token_noise(x: torch.Tensor, positions: list[list[int]], vocab: torch.Tensor, p: float,
                    generator: torch.Generator) -> torch.Tensor:
    """A copy of inputs x [B, T] where each listed position of row b (positions[b]) is, with
    probability p, replaced by a token drawn uniformly from `vocab` (word dropout with random
    words: the model learns to read the request's content rather than one exact phrasing)."""
    x = x.clone()
    for row, pos in enumerate(positions):
        if not pos:
            continue
        pos = torch.tensor(pos)
        hit = pos[torch.rand(len(pos), generator=generator) < p]
        x[row, hit] = vocab[torch.randint(len(vocab), (len(hit),), generator=generator)]
    return x


def length_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped by similar length so that batch size x longest <= batch_tokens (little padding)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    return batches + ([current] if current else [])


def collate(ids: list[list[int]], targets: list[list[int]], index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded inputs [B, T] and targets [B, T] (padding targets are IGNORE_INDEX; causal
    attention means right padding never changes the real positions)."""
    T = max(len(ids[i]) for i in index)
    x = torch.zeros(len(index), T, dtype=torch.long)
    y = torch.full((len(index), T), IGNORE_INDEX, dtype=torch.long)
    for row, i in enumerate(index):
        x[row, : len(ids[i])] = torch.tensor(ids[i])
        y[row, : len(targets[i])] = torch.tensor(targets[i])
    return x, y


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the targets that are not IGNORE_INDEX."""
    logits = model(x)  # [B, T, V]
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX)


# ---------------------------------------------------------------------------------------------
# Evaluation


def _result_facts(results: list[dict]) -> list[str]:
    facts = []
    for result in results:
        for value in result.values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, bool):
                    continue
                facts.append(tools.number_text(item) if isinstance(item, (int, float)) else str(item))
    return facts


def _same_call_results(predicted: list, reference: list[dict], wordnet) -> bool:
    """Right tools, valid arguments, same results (with one fixed clock) as the reference calls."""
    now = dt.datetime(2024, 3, 15, 14, 5)
    if len(predicted) != len(reference):
        return False
    for call, ref in zip(predicted, reference):
        try:
            arguments = json.loads(call.arguments)
            tools.check_arguments(call.name, arguments)
        except (ValueError, json.JSONDecodeError):
            return False
        if call.name != ref["name"]:
            return False
        if tools.run_tool(call.name, arguments, now, wordnet) != tools.run_tool(ref["name"], ref["arguments"], now, wordnet):
            return False
    return True


@torch.no_grad()
def evaluate_dialogues(model: GPT, template: ChatTemplate, dialogues: list[dict], max_tokens: int = 128,
                       progress: bool = False, hold_words: bool = True) -> dict:
    """Tool-call and answer accuracy of greedy replies (see the module docstring); also returns failures.

    `hold_words`: hold `UserWord` arguments to the user's words, as `minivox.backends.LocalBackend`
    does in the agent (`hold_to_user_words`); False scores the calls as the model wrote them.
    """
    from minivox.backends import hold_to_user_words
    from minivox.data.textcorpus import WordNet
    from minivox.tools import demo_tools

    wordnet = WordNet()
    schemas = demo_tools().openai_schemas()
    sampling = SamplingConfig(temperature=0.0, max_tokens=max_tokens, stop_tokens=(template.end_id,))
    counts = {"tool_turns": 0, "tool_correct": 0, "answer_turns": 0, "answer_correct": 0, "text_turns": 0, "text_exact": 0}
    failures = []
    cache = model.new_cache()
    for d in tqdm(dialogues, disable=not progress, desc="evaluate", leave=False):
        messages = d["messages"]
        for i, ref in enumerate(messages):
            if ref["role"] != "assistant":
                continue
            prompt = template.encode_prompt(messages[:i])
            if len(prompt) >= model.cfg.max_seq_len - 8:
                continue
            ids = list(generate(model, prompt, sampling, cache=cache))
            text, calls = template.decode_reply(ids)
            if calls and hold_words:  # as the agent's LocalBackend does
                calls = hold_to_user_words(model, template, prompt, calls, schemas, messages[:i], cache)
            if ref.get("tool_calls"):
                counts["tool_turns"] += 1
                ok = calls is not None and _same_call_results(calls, ref["tool_calls"], wordnet)
                counts["tool_correct"] += ok
            else:
                results = []
                for m in reversed(messages[:i]):
                    if m["role"] != "tool":
                        break
                    results.append(json.loads(m["content"]))
                facts = [f for f in _result_facts(results) if f.lower() in ref["content"].lower()]
                counts["text_turns"] += 1
                counts["text_exact"] += calls is None and text.strip() == ref["content"].strip()
                if not facts:
                    continue
                counts["answer_turns"] += 1
                ok = calls is None and all(f.lower() in text.lower() for f in facts)
                counts["answer_correct"] += ok
            if not ok:
                failures.append({"id": d.get("id"), "template": d["template"], "expected": ref.get("tool_calls") or ref["content"],
                                 "got": text if calls is None else [c.__dict__ for c in calls]})
    return {
        "tool_call_accuracy": counts["tool_correct"] / max(1, counts["tool_turns"]),
        "answer_accuracy": counts["answer_correct"] / max(1, counts["answer_turns"]),
        "text_exact_match": counts["text_exact"] / max(1, counts["text_turns"]),
        **counts, "failures": failures,
    }


@torch.no_grad()
def copy_accuracy(model: GPT, rows: torch.Tensor, seed: int = 0) -> tuple[float, float]:
    """In-context copying: (accuracy on repeated tokens, accuracy on the rest) of greedy next-token
    predictions over `rows` [N, L + 1] of text, each made to end by repeating a span of itself
    (`with_repeats`). A model that copies predicts a repeat after its first token; one that does
    not scores as on ordinary text."""
    repeated, tail = with_repeats(rows, 1.0, seed)
    hits = model(repeated[:, :-1]).argmax(-1) == repeated[:, 1:]  # [N, L]
    width = hits.shape[1]
    copied = torch.cat([hits[i, width - k + 1:] for i, k in enumerate(tail)])  # the repeat after its first token
    text = torch.cat([hits[i, : width - 2 * k] for i, k in enumerate(tail)])
    return float(copied.float().mean()), float(text.float().mean())


@torch.no_grad()
def mean_loss(model: GPT, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Token-weighted mean loss over (x, y) batches."""
    total, count = 0.0, 0
    for x, y in batches:
        n = int((y != IGNORE_INDEX).sum())
        total += float(lm_loss(model, x, y)) * n
        count += n
    return total / max(1, count)


SMALL_TALK = ["hello", "how are you doing today", "who are you", "what can you do", "tell me a joke",
              "do you like music", "what is your favorite food", "I'm feeling a bit tired today",
              "thanks, that was helpful", "good night"]  # the model card's sample exchanges


def small_talk_samples(model: GPT, prompts: list[str] = SMALL_TALK) -> list[tuple[str, str]]:
    """(prompt, reply) for each prompt, each in a fresh conversation, greedy, demo tools offered."""
    from minivox.backends import LocalBackend
    from minivox.chat import Assistant
    from minivox.tools import demo_tools

    backend = LocalBackend(model)
    return [(p, Assistant(backend, demo_tools()).reply_text(p)) for p in prompts]


def run_evaluate(args) -> int:
    """--evaluate CHECKPOINT: scores on a dialogue split, printed as JSON (failures to --failures)."""
    torch.set_num_threads(args.threads)
    model = GPT.from_checkpoint(args.evaluate)
    if args.int8:
        model = quantize_int8(model)
    template = ChatTemplate(model.tokenizer)
    if args.samples:
        for prompt, reply in small_talk_samples(model):
            print(f"> {prompt}\n{reply}\n")
        return 0
    if args.copy_probe:
        sentences = [row["text"] for row in read_jsonl(args.copy_probe)]
        held = [text for text in sentences if is_heldout(text, DataConfig.heldout_per_mille)]
        rows = pack_sentences(model.tokenizer, held, PhaseConfig.seq_len, template.end_id)[:64]  # [N, L + 1]
        copied, text = copy_accuracy(model, rows)
        print(json.dumps({"copied_tokens_accuracy": round(copied, 4), "text_tokens_accuracy": round(text, 4),
                          "rows": len(rows)}, indent=1))
        return 0
    dialogues = read_jsonl(Path(args.dialogues_dir) / f"dialogues_{args.split}.jsonl")[: args.limit or None]
    start = time.time()
    scores = evaluate_dialogues(model, template, dialogues, progress=True, hold_words=not args.free_words)
    failures = scores.pop("failures")
    scores.update(split=args.split, dialogues=len(dialogues), int8=args.int8, held_words=not args.free_words,
                  seconds=round(time.time() - start, 1))
    print(json.dumps(scores, indent=1))
    if args.failures:
        Path(args.failures).write_text("\n".join(json.dumps(f) for f in failures) + "\n", encoding="utf-8")
    return 0


# ---------------------------------------------------------------------------------------------
# Training


def load_init_checkpoint(path: str, model_cfg) -> GPT:
    """The checkpoint --init-from fine-tunes: same [model] as this run, with its tokenizer."""
    try:
        source = GPT.from_checkpoint(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot fine-tune from {path}: {exc}") from None
    mine, theirs = asdict(model_cfg), asdict(source.cfg)
    if mine != theirs:
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        raise ValueError(f"cannot fine-tune from {path}: its [model] differs from this run's in {', '.join(diff)} "
                         f"(checkpoint: {[theirs.get(k) for k in diff]}, run: {[mine[k] for k in diff]})")
    if source.tokenizer is None:
        raise ValueError(f"cannot fine-tune from {path}: it holds no tokenizer")
    return source


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--evaluate" in argv:
        import argparse

        p = argparse.ArgumentParser(description="score a checkpoint on held-out dialogues")
        p.add_argument("--evaluate", required=True, metavar="CHECKPOINT")
        p.add_argument("--split", default="test", choices=["train", "dev", "test"])
        p.add_argument("--dialogues-dir", default="data/llm")
        p.add_argument("--limit", type=int, default=0, help="first N dialogues only (0 = all)")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--failures", help="write the failed turns here (JSONL)")
        p.add_argument("--int8", action="store_true", help="score the int8-weight model (minivox.llm.quantize_int8)")
        p.add_argument("--free-words", action="store_true",
                       help="score calls as the model wrote them, without holding word arguments to the user's "
                            "words (minivox.backends.hold_to_user_words, which the agent does)")
        p.add_argument("--samples", action="store_true", help="print ten small-talk exchanges instead of scoring")
        p.add_argument("--copy-probe", metavar="SENTENCES_JSONL",
                       help="instead of scoring dialogues: how well the model copies in context, on the held-out "
                            "sentences of this file made to repeat themselves (copy_accuracy)")
        return run_evaluate(p.parse_args(argv))

    args = parse_train_args(__doc__, "configs/llm_demo.toml", argv, init_from=True)
    cfg = load_config(TrainLLMConfig, args.config, args.overrides)
    dist = init_distributed(cfg.device)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed + dist.rank)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logger = JSONLLogger(out / "log.jsonl", enabled=dist.is_main)
    say = print if dist.is_main else (lambda *a, **k: None)

    # ---- data and tokenizer
    sentences = [row["text"] for row in read_jsonl(cfg.data.sentences)]
    if cfg.data.max_sentences:
        sentences = sentences[: cfg.data.max_sentences]
    train_sentences = [s for s in sentences if not is_heldout(s, cfg.data.heldout_per_mille)]
    heldout_sentences = [s for s in sentences if is_heldout(s, cfg.data.heldout_per_mille)]
    dialogues_dir = Path(cfg.data.dialogues_dir)
    train_dialogues = read_jsonl(dialogues_dir / "dialogues_train.jsonl")
    dev_dialogues = read_jsonl(dialogues_dir / "dialogues_dev.jsonl")
    tokenizer_path = out / "tokenizer.model"
    source = load_init_checkpoint(args.init_from, cfg.model) if args.init_from else None
    if dist.is_main and source is not None and not args.resume:  # fine-tuning keeps the checkpoint's tokenizer
        source.tokenizer.save(tokenizer_path)
    if dist.is_main and not tokenizer_path.exists():
        if args.resume:
            raise ValueError(f"cannot resume: {tokenizer_path} (the run's tokenizer) is missing")
        start = time.time()
        lines = tokenizer_lines(train_sentences, train_dialogues, cfg.tokenizer.max_lines, cfg.seed)
        train_chat_tokenizer(lines, cfg.model.vocab_size, cfg.tokenizer.model_type, cfg.seed).save(tokenizer_path)
        say(f"tokenizer: {cfg.model.vocab_size} pieces from {len(lines)} lines in {time.time() - start:.0f} s")
    if dist.world_size > 1:
        torch.distributed.barrier()
    tokenizer = Tokenizer.load(tokenizer_path)
    template = ChatTemplate(tokenizer)

    pre_rows = pack_sentences(tokenizer, train_sentences, cfg.pretrain.seq_len, template.end_id)  # [N, L + 1]
    if cfg.pretrain.repeat_share:
        pre_rows, _ = with_repeats(pre_rows, cfg.pretrain.repeat_share, cfg.seed)
    pre_eval_rows = pack_sentences(tokenizer, heldout_sentences, cfg.pretrain.seq_len, template.end_id)
    rows_per_batch = max(1, cfg.pretrain.batch_tokens // cfg.pretrain.seq_len)
    pre_batches = ResumableBatches([list(range(i, min(i + rows_per_batch, len(pre_rows))))
                                    for i in range(0, len(pre_rows) - rows_per_batch + 1, rows_per_batch)],
                                   seed=cfg.seed, rank=dist.rank, world_size=dist.world_size)
    sft_ids, sft_targets, dropped = encode_dialogues(template, train_dialogues, cfg.model.max_seq_len)
    if cfg.sft.user_token_noise > 0:  # where the noise may go, and the user-side vocabulary it draws from
        value_ids = value_token_ids(tokenizer)
        sft_noise_at = [user_token_positions(template, x, value_ids) for x in sft_ids]
        noise_vocab = torch.tensor(sorted({ids[i] for ids, pos in zip(sft_ids, sft_noise_at) for i in pos}))
    dev_ids, dev_targets, _ = encode_dialogues(template, dev_dialogues, cfg.model.max_seq_len)
    specials = {*template.role_ids.values(), template.end_id, template.call_id, *template.speaker_ids}
    copy_vocab = {phase: copy_vocabulary(sft_ids, p.copy_vocab, specials)  # what induction_rows draw from
                  for phase, p in (("pretrain", cfg.pretrain), ("sft", cfg.sft)) if p.copy_share > 0}
    sft_batch_tokens = round(cfg.sft.batch_tokens * (1 - cfg.sft.copy_share))  # the rest: copying rows
    sft_batches = ResumableBatches(length_batches([len(x) for x in sft_ids], sft_batch_tokens),
                                   seed=cfg.seed, rank=dist.rank, world_size=dist.world_size)
    say(f"pre-training: {pre_rows.numel() / 1e6:.2f}M tokens in {len(pre_rows)} rows of {cfg.pretrain.seq_len}, "
        f"{pre_batches.per_epoch} batches/epoch; SFT: {len(sft_ids)} dialogues ({sum(map(len, sft_ids)) / 1e6:.2f}M tokens, "
        f"{dropped} longer than {cfg.model.max_seq_len} dropped), {sft_batches.per_epoch} batches/epoch")
    pre_eval = [(pre_eval_rows[i : i + 16, :-1], pre_eval_rows[i : i + 16, 1:]) for i in range(0, min(len(pre_eval_rows), 256), 16)]
    dev_order = length_batches([len(x) for x in dev_ids], cfg.sft.batch_tokens)
    sft_eval = [collate(dev_ids, dev_targets, b) for b in dev_order]
    eval_dialogues = [d for d in dev_dialogues if d["template"].split("/")[0] != "smalltalk"][: cfg.eval_dialogues]

    # ---- model, optimizer, schedule
    model = GPT(cfg.model).to(dist.device)
    if source is not None:
        model.load_state_dict(source.state_dict())
        say(f"fine-tuning {args.init_from} (step {source.meta.get('step')} of its run)")
    model.tokenizer = tokenizer
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.pretrain.lr, betas=cfg.betas)
    total_steps = cfg.pretrain.steps + cfg.sft.steps

    def lr_at(step: int) -> float:  # multiplier of pretrain.lr: each phase warms up and decays on its own
        if step < cfg.pretrain.steps:
            p = cfg.pretrain
            return lr_factor(step, p.warmup_steps, p.steps, p.min_lr_ratio)
        s = cfg.sft
        return s.lr / cfg.pretrain.lr * lr_factor(step - cfg.pretrain.steps, s.warmup_steps, s.steps, s.min_lr_ratio)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    step = 0
    if args.resume:
        step, extra = load_training_state(args.resume, model, optimizer, scheduler, sft_batches)
        pre_batches.load_state_dict(extra["pretrain_batches"])
        say(f"resumed from {args.resume} at step {step}")
    train_model = model
    if dist.world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model)
    say(f"model: {model.num_parameters() / 1e6:.2f}M parameters, {cfg.model.n_layer} x {cfg.model.d_model}, "
        f"vocab {cfg.model.vocab_size}; {total_steps} steps ({cfg.pretrain.steps} pre-training + {cfg.sft.steps} SFT)")

    def save_all(final: bool = False) -> None:
        save_training_state(out / "state.pt", train_model, optimizer, scheduler, step, sft_batches,
                            extra={"pretrain_batches": pre_batches.state_dict()})
        if dist.is_main:
            meta = {"step": step, "config": args.config, "overrides": list(args.overrides), "init_from": args.init_from}
            model.save(out / "llm.pt", meta=meta)
            if final and cfg.export:
                model.save(cfg.export, meta=meta, fp16=True)
                say(f"exported {cfg.export}")

    def evaluate() -> None:
        model.eval()
        record = {"step": step, "heldout_ppl": round(float(torch.tensor(mean_loss(model, pre_eval)).exp()), 3),
                  "dev_sft_loss": round(mean_loss(model, sft_eval), 4)}
        if step >= cfg.pretrain.steps:
            scores = evaluate_dialogues(model, template, eval_dialogues)
            record.update(tool_call_accuracy=round(scores["tool_call_accuracy"], 4),
                          answer_accuracy=round(scores["answer_accuracy"], 4))
        logger.log(kind="eval", **record)
        tqdm.write(json.dumps(record))
        model.train()

    eval_step = lambda s: s % cfg.eval_every == 0 or s == cfg.pretrain.steps  # noqa: E731 (and at the end)
    stop = GracefulStop()  # Ctrl-C / SIGTERM: finish the step, save, exit
    pre_stream, sft_stream = iter(pre_batches), iter(sft_batches)
    bar = tqdm(total=total_steps, initial=step, disable=not dist.is_main, desc="llm", dynamic_ncols=True)
    model.train()
    tokens_seen, window_start = 0, time.time()
    try:
        while step < total_steps and not stop.agreed(dist) and not (cfg.stop_at and step >= cfg.stop_at):
            phase = "pretrain" if step < cfg.pretrain.steps else "sft"
            p = cfg.pretrain if phase == "pretrain" else cfg.sft
            n_copy = round(p.copy_share * p.batch_tokens / p.seq_len)
            if phase == "pretrain":
                rows = pre_rows[next(pre_stream)][: rows_per_batch - n_copy] if n_copy < rows_per_batch else pre_rows[:0]
                x, y = rows[:, :-1], rows[:, 1:]
            else:
                index = next(sft_stream)
                x, y = collate(sft_ids, sft_targets, index)
                if cfg.sft.user_token_noise > 0:
                    noise_rng = torch.Generator().manual_seed(cfg.seed * 1_000_003 + dist.rank * 10_007 + step)
                    x = add_token_noise(x, [sft_noise_at[i] for i in index], noise_vocab, cfg.sft.user_token_noise, noise_rng)
            if n_copy:  # seeded by the step, like the noise: the same rows on resume
                copy_rng = torch.Generator().manual_seed(cfg.seed * 1_000_033 + dist.rank * 10_009 + step)
                x, y = join_batches((x, y), induction_rows(n_copy, p.seq_len, copy_vocab[phase], copy_rng))
            x, y = x.to(dist.device), y.to(dist.device)
            loss = lm_loss(train_model, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            tokens_seen += x.numel()
            bar.update(1)
            if step % cfg.log_every == 0:
                elapsed = time.time() - window_start
                record = {"step": step, "phase": phase,
                          "loss": round(loss.item(), 4), "lr": scheduler.get_last_lr()[0],
                          "grad_norm": round(float(grad_norm), 3), "tokens_per_s": round(tokens_seen / elapsed)}
                logger.log(kind="train", **record)
                bar.set_postfix(loss=f"{loss.item():.3f}", phase=record["phase"])
                tokens_seen, window_start = 0, time.time()
            if dist.is_main and eval_step(step):
                evaluate()
            if step % cfg.checkpoint_every == 0:
                save_all()
    finally:
        bar.close()
        stop.restore()
    if stop.requested:
        say("interrupted: saving the training state")
    save_all(final=step >= total_steps)
    if dist.is_main and step >= total_steps and not eval_step(step):  # the loop has not just evaluated it
        evaluate()
    say(f"stopped at step {step}; resume with --resume {out / 'state.pt'}" if step < total_steps else f"done: {out / 'llm.pt'}")
    cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
