"""Chat dialogues for the small LLM: small talk, tool use, follow-ups, several speakers, refusals.

    minivox data dialogues --config configs/data_llm.toml [dialogues.num_train=20000 ...]
    minivox data dialogues --check data/llm/dialogues_test.jsonl      # validate files only

writes `{out_dir}/dialogues_{train,dev,test}.jsonl`, one dialogue per line:

    {"messages": [
       {"role": "system", "content": "You are minivox, ..."},
       {"role": "user", "content": "<speaker_1> what's 17 times 23"},
       {"role": "assistant", "content": "", "tool_calls": [{"name": "calculator", "arguments": {"expression": "17 * 23"}}]},
       {"role": "tool", "name": "calculator", "content": "{\\"result\\": 391}"},
       {"role": "assistant", "content": "17 times 23 is 391."}],
     "split": "train", "template": "calc.mul/mul3", "id": "train-000017"}

Schema (`validate_dialogue` checks it; the tests and the LLM trainer use it):

- Top level: `messages` (list), `split` ("train" | "dev" | "test"), `template` (non-empty str naming
  the template family and the paraphrases used), optional `id` (str). No other keys.
- A message: `role` ("system" | "user" | "assistant" | "tool") and `content` (str). An assistant
  message may carry `tool_calls`: a non-empty list of `{"name": tool, "arguments": {...}}` whose
  names are in `TOOLS` and whose arguments have exactly that tool's parameters with their types.
  A tool message carries `name` (the tool it answers) and a JSON object as its content (a result
  or `{"error": ...}`). No other keys.
- Order: an optional system message first (only there); then a user message; the tool messages
  right after an assistant message with tool_calls answer those calls one by one, in order, with
  the same names; that assistant message is followed by nothing else; the last message is an
  assistant message without tool_calls. Assistant messages without tool_calls are not empty.
- Speakers: a user message may mark who speaks with tags `<speaker_N>` (N = 1..MAX_SPEAKERS, in
  order of first appearance in the dialogue, as the diarizer numbers speakers); a tagged message
  starts with a tag.

Tool results are computed by `run_tool` (the same executor the agent can call at run time), so
every number, time and definition in a dialogue is right. Splits: each paraphrase list keeps every
`holdout_every`-th entry (and the last of short lists) for the test split, and the families in
`test_families` appear only in test, so no test user turn is a train template; dev uses the train
templates with fresh values (an in-distribution check). A `wrap_prob` share of train/dev requests
come with words around them ("um, ...", "can you tell me ...", "... please"); test turns never do.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from minivox.chat_template import MAX_SPEAKERS, SYSTEM_PROMPT
from minivox.tools import UNITS, check_arguments, duration_phrase, number_text, run_tool
from minivox.data.textcorpus import CITIES, NAMES, TextCorpusConfig, WordNet, chatterbot_dir, read_chatterbot

SPLITS = ("train", "dev", "test")
ROLES = ("system", "user", "assistant", "tool")
SPEAKER_TAG = re.compile(r"<speaker_(\d+)>")

# ----------------------------------------------------------------------------------------------
# 1. Schema validation


def validate_dialogue(obj: Any, where: str = "dialogue") -> dict:
    """Check one dialogue against the schema in the module docstring; returns it.

    Raises ValueError naming `where`, the message index and what was expected.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    extra = set(obj) - {"messages", "split", "template", "id"}
    missing = {"messages", "split", "template"} - set(obj)
    if extra or missing:
        raise ValueError(f"{where}: expected keys messages, split, template (+ id); missing {sorted(missing)}, unknown {sorted(extra)}")
    if obj["split"] not in SPLITS:
        raise ValueError(f"{where}: split must be one of {SPLITS}, got {obj['split']!r}")
    if not isinstance(obj["template"], str) or not obj["template"] or not isinstance(obj.get("id", ""), str):
        raise ValueError(f"{where}: template must be a non-empty string and id a string, got {obj['template']!r}, {obj.get('id')!r}")
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: messages must be a non-empty list, got {messages!r}")
    pending: list[str] = []  # tool names still owed a tool message
    speakers_seen = 0
    for i, msg in enumerate(messages):
        at = f"{where}: message {i}"
        if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
            raise ValueError(f"{at}: expected {{'role': one of {ROLES}, 'content': str}}, got {msg!r}")
        role = msg["role"]
        allowed = {"role", "content"} | ({"tool_calls"} if role == "assistant" else {"name"} if role == "tool" else set())
        if set(msg) - allowed or (role == "tool") != ("name" in msg):
            raise ValueError(f"{at}: a {role} message has keys {sorted(allowed)} (name required on tool), got {sorted(msg)}")
        if role == "tool":
            if not pending or msg["name"] != pending[0]:
                raise ValueError(f"{at}: tool message for {msg['name']!r} but the pending calls are {pending}")
            pending.pop(0)
            try:
                result = json.loads(msg["content"])
            except json.JSONDecodeError:
                result = None
            if not isinstance(result, dict):
                raise ValueError(f"{at}: tool content must be a JSON object, got {msg['content'][:60]!r}")
            continue
        if pending:
            raise ValueError(f"{at}: expected tool messages for {pending}, got a {role} message")
        if role == "system" and i != 0:
            raise ValueError(f"{at}: a system message may only come first")
        if i == (1 if messages[0]["role"] == "system" else 0) and role != "user":
            raise ValueError(f"{at}: the first message after the system prompt must be a user message, got {role}")
        if role == "user":
            tags = [int(n) for n in SPEAKER_TAG.findall(msg["content"])]
            if tags and not msg["content"].startswith("<speaker_"):
                raise ValueError(f"{at}: a message with speaker tags must start with one, got {msg['content'][:40]!r}")
            for n in tags:
                if not 1 <= n <= min(speakers_seen + 1, MAX_SPEAKERS):
                    raise ValueError(f"{at}: <speaker_{n}>: speakers are numbered 1..{MAX_SPEAKERS} in order of first appearance "
                                     f"({speakers_seen} seen so far)")
                speakers_seen = max(speakers_seen, n)
        if role == "assistant" and "tool_calls" in msg:
            calls = msg["tool_calls"]
            if not isinstance(calls, list) or not calls:
                raise ValueError(f"{at}: tool_calls must be a non-empty list, got {calls!r}")
            for call in calls:
                if not isinstance(call, dict) or set(call) != {"name", "arguments"}:
                    raise ValueError(f"{at}: a tool call is {{'name', 'arguments'}}, got {call!r}")
                try:
                    check_arguments(call["name"], call["arguments"])
                except ValueError as exc:
                    raise ValueError(f"{at}: {exc}") from None
            pending = [call["name"] for call in calls]
        elif role == "assistant" and not msg["content"].strip():
            raise ValueError(f"{at}: an assistant message without tool_calls must have content")
    last = messages[-1]
    if pending or last["role"] != "assistant" or "tool_calls" in last:
        raise ValueError(f"{where}: the last message must be an assistant answer without tool_calls, got {last['role']}")
    return obj


def validate_dialogues_file(path: str | Path) -> list[dict]:
    """Read a dialogues JSONL file, validating every line; returns the dialogues."""
    dialogues = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
                dialogues.append(validate_dialogue(obj, f"{path}:{number}"))
    return dialogues


# ----------------------------------------------------------------------------------------------
# 2. Paraphrases (user side) and replies (assistant side)

PARAPHRASES: dict[str, list[str]] = {
    "greet": ["hello", "hi there", "hey", "good morning", "good evening", "hey there", "hi, are you there",
              "hello assistant"],
    "how_are_you": ["how are you", "how are you doing today", "how's it going", "are you doing okay",
                    "how have you been", "what's up"],
    "thanks": ["thanks", "thank you", "thanks a lot", "thank you so much", "cheers, that helps", "great, thanks"],
    "bye": ["goodbye", "bye", "see you later", "that's all for now, bye", "good night", "talk to you later"],
    "who": ["who are you", "what's your name", "what are you", "tell me about yourself", "what should I call you",
            "are you a robot"],
    "capabilities": ["what can you do", "how can you help me", "what are you able to do",
                     "what do you know how to do", "help me out, what can you do", "what kind of things can I ask you"],
    "joke": ["tell me a joke", "make me laugh", "do you know any jokes", "say something funny", "got a joke for me"],
    "time": ["what time is it", "what's the time", "do you know what time it is", "tell me the time",
             "what time is it right now", "can you check the time", "how late is it", "time please"],
    "date": ["what's the date today", "what's today's date", "what is the date", "which date is it today",
             "tell me today's date", "what's the date"],
    "weekday": ["what day is it", "what day of the week is it", "which day of the week is today", "what day is it today",
                "tell me what day it is"],
    "year": ["what year is it", "which year are we in", "what's the current year", "tell me the year"],
    "add": ["what's {a} plus {b}", "what is {a} plus {b}", "add {a} and {b}", "what do {a} and {b} add up to",
            "calculate {a} plus {b}", "{a} plus {b}", "what's the sum of {a} and {b}", "can you add {a} to {b}"],
    "sub": ["what's {a} minus {b}", "what is {a} minus {b}", "subtract {b} from {a}", "take {b} away from {a}",
            "{a} minus {b}", "calculate {a} minus {b}", "how much is {a} minus {b}"],
    "mul": ["what's {a} times {b}", "what is {a} multiplied by {b}", "multiply {a} by {b}", "{a} times {b}",
            "calculate {a} times {b}", "what's the product of {a} and {b}", "how much is {a} times {b}"],
    "div": ["what's {a} divided by {b}", "divide {a} by {b}", "{a} divided by {b}", "what is {a} over {b}",
            "how much is {a} divided by {b}", "calculate {a} divided by {b}"],
    "percent": ["what's {a} percent of {b}", "what is {a}% of {b}", "calculate {a} percent of {b}",
                "how much is {a} percent of {b}", "{a} percent of {b}"],
    "square": ["what's {a} squared", "what is {a} to the power of two", "square {a}", "what's the square of {a}",
               "{a} squared"],
    "convert": ["convert {v} {src} to {dst}", "how many {dst} is {v} {src}", "what's {v} {src} in {dst}",
                "how much is {v} {src} in {dst}", "change {v} {src} into {dst}", "{v} {src} in {dst}",
                "can you convert {v} {src} into {dst}"],
    "timer": ["set a timer for {d}", "start a timer for {d}", "timer for {d}", "can you set a timer for {d}",
              "count down {d}", "set a timer for {d} please", "start a countdown for {d}"],
    "define": ["what does {w} mean", "define {w}", "what's the meaning of {w}", "what is the definition of {w}",
               "what does the word {w} mean", "tell me what {w} means", "can you define {w}"],
    "that_times": ["and what's that times {c}", "now multiply that by {c}", "times {c}", "what if I multiply it by {c}",
                   "and that times {c}"],
    "that_plus": ["now add {c} to that", "plus {c}", "and what's that plus {c}", "add {c} to it", "and if I add {c}"],
    "other_unit": ["what about in {dst}", "and in {dst}", "how about {dst}", "and how many {dst} is that", "now in {dst}"],
    "and_date": ["and what's the date", "and the date", "what's the date too", "also, what's today's date"],
    "example": ["can you use it in a sentence", "give me an example", "how would I use that word",
                "use it in a sentence please", "show me an example sentence"],
    "timer_change": ["actually make it {d}", "change it to {d}", "make that {d} instead", "no wait, {d}",
                     "can you change the timer to {d}"],
    "repeat": ["sorry, what was that", "can you repeat that", "say that again", "what did you say", "come again"],
    "my_name_is": ["my name is {n}", "I'm {n}", "call me {n}", "you can call me {n}", "hi, this is {n}", "the name's {n}"],
    "ask_name": ["what's my name", "do you remember my name", "who am I", "what did I say my name was",
                 "what do you call me"],
    "i_live": ["I live in {p}", "I'm from {p}", "I live over in {p}", "my home is in {p}", "I'm based in {p}"],
    "ask_place": ["where do I live", "do you remember where I live", "where am I from", "where did I say I live"],
    "weather": ["what's the weather in {p}", "will it rain tomorrow", "how hot is it outside",
                "what's the forecast for {p}", "is it going to snow"],
    "order": ["order me a pizza", "get me some {food} delivered", "order {food} for dinner", "buy me some {food}"],
    "call": ["call {n}", "phone {n} for me", "give {n} a call", "dial {n}'s number"],
    "message": ["send a text to {n}", "text {n} that I'm running late", "email {n} the report", "send {n} a message"],
    "music": ["play some music", "play some {genre}", "put on a song", "play my playlist"],
    "lights": ["turn on the lights", "switch off the lights in the kitchen", "dim the lights", "turn the lights off"],
    "booking": ["book a flight to {p}", "book me a table for tonight", "reserve a hotel in {p}", "get me a taxi to {p}"],
    "news": ["what's in the news today", "tell me the headlines", "what happened in the news"],
    "stocks": ["how is the stock market doing", "what's the price of gold today", "how much is a share of apple"],
}
REFUSALS = {  # refusal family -> what the assistant cannot do
    "weather": "check the weather", "order": "order things", "call": "make phone calls", "message": "send messages",
    "music": "play music", "lights": "control your lights", "booking": "make bookings", "news": "read the news",
    "stocks": "look up live prices",
}
CAN_DO = "I can tell you the time and date, do math, convert units, set timers and look up what words mean."
JOKES = ["Why did the scarecrow win an award? Because he was outstanding in his field.",
         "I told my computer I needed a break, and it said it would go to sleep.",
         "Why don't eggs tell jokes? They'd crack each other up.",
         "What do you call a fish with no eyes? A fsh.",
         "Why did the bicycle fall over? It was two tired.",
         "I'm reading a book about anti-gravity. It's impossible to put down."]
FOODS = ["sushi", "pizza", "noodles", "tacos", "curry", "burgers"]
GENRES = ["jazz", "rock", "classical music", "pop songs"]
UNIT_PAIRS = [("km", "mi"), ("mi", "km"), ("m", "ft"), ("ft", "m"), ("in", "cm"), ("cm", "in"), ("kg", "lb"), ("lb", "kg"),
              ("g", "oz"), ("oz", "g"), ("l", "gal"), ("gal", "l"), ("cup", "ml"), ("c", "f"), ("f", "c"), ("c", "k"),
              ("h", "min"), ("min", "s"), ("day", "h"), ("week", "day"), ("km/h", "mph"), ("mph", "km/h"), ("yd", "m")]
# Train/dev requests are sometimes said with extra words around them, as people talk to a voice
# assistant ("um, hey minivox, what time is it please"), so the model keys on the request, not on
# the exact sentence. Test turns are never wrapped: they stay the held-out paraphrases alone.
WRAPPED_KEYS = {"time", "date", "weekday", "year", "add", "sub", "mul", "div", "percent", "square", "convert", "timer",
                "define", "that_times", "that_plus", "other_unit", "and_date", "example", "timer_change", "who",
                "capabilities", "joke", *REFUSALS}
FILLER_PREFIXES = ["um", "uh", "so", "okay", "okay so", "hey", "hey minivox", "minivox", "well", "alright", "oh",
                   "hmm", "quick question", "one more thing", "sorry", "excuse me", "right", "now"]
WH_WORDS = {"what", "what's", "how", "which", "who", "where", "when"}
QUESTION_FRAMES = ["can you tell me {q}", "could you tell me {q}", "do you know {q}", "I'd like to know {q}",
                   "I want to know {q}", "I was wondering {q}", "tell me {q}"]
SUFFIXES = ["please", "for me", "thanks", "thank you", "if you can", "if you could", "real quick", "okay", "minivox"]
_DUPLICATES = [k for k, v in PARAPHRASES.items() if len(v) < 2 or len(set(v)) != len(v)]
assert not _DUPLICATES, f"paraphrase lists need >= 2 distinct entries: {_DUPLICATES}"


QUESTION_WORDS = {"what", "what's", "how", "how's", "who", "where", "which", "when", "can", "could", "do", "does",
                  "is", "are", "will", "would", "and", "got"}


def held_out(n: int, every: int) -> set[int]:
    """Indices of a list of `n` paraphrases kept for the test split: every `every`-th, else the last."""
    return {i for i in range(n) if i % every == every - 1} or {n - 1}


def unit_name(code: str, value: float) -> str:
    """The singular or plural spoken name of a unit code ("km" -> "kilometer"/"kilometers")."""
    return UNITS[code][2] if value == 1 else UNITS[code][3]


# ----------------------------------------------------------------------------------------------
# 3. Building one dialogue


class DialogueBuilder:
    """Collects the messages of one dialogue; picks only paraphrases its split may use and records them.

    Speaker tags: once `speakers` >= 2 (a multi-speaker family introduced them) every user message is
    tagged; before that a dialogue tags its user turns `<speaker_1>` or not at all (`tag_single`).
    """

    def __init__(self, rng: random.Random, split: str, cfg: DialogueConfig, normalize,
                 wordnet: WordNet | None = None, words: list[str] = (), example_words: list[str] = ()):
        self.rng, self.split, self.cfg, self.normalize = rng, split, cfg, normalize
        self.wordnet, self.words, self.example_words = wordnet, list(words), list(example_words)
        self.messages: list[dict] = [{"role": "system", "content": SYSTEM_PROMPT}]
        self.picks: list[str] = []  # "key<index>" of every paraphrase used, in order
        self.now = dt.datetime(rng.randint(2020, 2030), rng.randint(1, 12), rng.randint(1, 28), rng.randrange(24), rng.randrange(60))
        self.tag_single = rng.random() < cfg.speaker_tag_prob
        self.spoken = cfg.user_style == "spoken" or (cfg.user_style == "mixed" and rng.random() < 0.5)
        self.speakers = 0  # speakers introduced by tags so far

    def phrase(self, key: str, **slots: Any) -> str:
        """One paraphrase of the user-side template `key`, slots filled (held-out paraphrases only in test)."""
        options = PARAPHRASES[key]
        held = held_out(len(options), self.cfg.holdout_every)
        allowed = sorted(held) if self.split == "test" else [i for i in range(len(options)) if i not in held]
        index = self.rng.choice(allowed)
        self.picks.append(f"{key}{index}")
        text = options[index].format(**slots)
        if self.split != "test" and key in WRAPPED_KEYS and self.rng.random() < self.cfg.wrap_prob:
            text = self._wrap(text)
        return text

    def _wrap(self, text: str) -> str:
        """The request with words around it: a question frame or a filler before and/or a courtesy after."""
        rng = self.rng
        before = rng.random() < 0.75
        if before and text.split()[0] in WH_WORDS and rng.random() < 0.4:
            text = rng.choice(QUESTION_FRAMES).format(q=text)
        elif before:
            text = f"{rng.choice(FILLER_PREFIXES)}, {text}"
        if not before or rng.random() < 0.3:
            text = f"{text} {rng.choice(SUFFIXES)}"
        return text

    def _surface(self, text: str) -> str:
        """The user's words as ASR would give them (spoken) or as typed: capitalised, maybe punctuated."""
        if self.spoken:
            return self.normalize(text)
        mark = "?" if text.split()[0].strip(",").lower() in QUESTION_WORDS else "."
        return text[0].upper() + text[1:] + (mark if self.rng.random() < 0.6 else "")

    def user(self, text: str, speaker: int | None = None) -> None:
        """One user message from one speaker (a random known one in a multi-speaker dialogue)."""
        if speaker is None and self.speakers >= 2:
            speaker = self.rng.randint(1, self.speakers)
        if speaker is None and self.tag_single:
            speaker = 1
        self.users((speaker, text))

    def users(self, *turns: tuple[int | None, str]) -> None:
        """One user message holding (speaker, text) turns; speaker None = untagged."""
        parts = []
        for speaker, text in turns:
            if speaker is not None:
                self.speakers = max(self.speakers, speaker)
            parts.append(self._surface(text) if speaker is None else f"<speaker_{speaker}> {self._surface(text)}")
        self.messages.append({"role": "user", "content": " ".join(parts)})

    def call(self, *calls: tuple[str, dict]) -> list[dict]:
        """Assistant tool calls followed by their results (computed by run_tool); returns the results."""
        self.messages.append({"role": "assistant", "content": "",
                              "tool_calls": [{"name": name, "arguments": args} for name, args in calls]})
        results = []
        for name, args in calls:
            result = run_tool(name, args, now=self.now, wordnet=self.wordnet)
            self.messages.append({"role": "tool", "name": name, "content": json.dumps(result)})
            results.append(result)
        return results

    def reply(self, *options: str) -> str:
        """One of the given assistant replies, chosen by the dialogue's RNG."""
        text = self.rng.choice(options)
        self.messages.append({"role": "assistant", "content": text})
        return text


# Each family builds the turns of one kind of exchange. The `_ask_*`, `_arithmetic` and `_conversion`
# helpers return a question as (user text, [tool calls], answer(results) -> reply text), so single-
# and multi-speaker families can combine them.


def _ask_time(d: DialogueBuilder):
    return d.phrase("time"), [("get_time", {})], lambda r: d.rng.choice([f"It's {r[0]['time']}.", f"The time is {r[0]['time']}."])


def _ask_date(d: DialogueBuilder):
    def answer(r):
        return d.rng.choice([f"Today is {r[0]['weekday']}, {r[0]['date']}.", f"It's {r[0]['weekday']}, {r[0]['date']}."])
    return d.phrase("date"), [("get_date", {})], answer


def _arithmetic(d: DialogueBuilder, op: str | None = None):
    """A calculator question: (user text, calls, answer, spoken form of the expression)."""
    op = op or d.rng.choice(["add", "sub", "mul", "div"])
    rng = d.rng
    if op == "div":
        b = rng.randint(2, 12)
        a = b * rng.randint(2, 50) if rng.random() < 0.7 else rng.randint(10, 500)
    elif op == "percent":
        a, b = rng.choice([5, 10, 12, 15, 18, 20, 25, 30, 40, 50, 75]), rng.choice([20, 40, 60, 80, 120, 200, 250, 640])
    elif op == "square":
        a, b = rng.randint(2, 40), 2
    else:
        a, b = sorted((rng.randint(2, 999), rng.randint(2, 99 if op == "mul" else 999)), reverse=True)
    expression, words = {
        "add": (f"{a} + {b}", f"{a} plus {b}"), "sub": (f"{a} - {b}", f"{a} minus {b}"),
        "mul": (f"{a} * {b}", f"{a} times {b}"), "div": (f"{a} / {b}", f"{a} divided by {b}"),
        "percent": (f"{a} / 100 * {b}", f"{a} percent of {b}"), "square": (f"{a} ** 2", f"{a} squared"),
    }[op]

    def answer(r):
        value = number_text(r[0]["result"])
        return d.rng.choice([f"{words[0].upper()}{words[1:]} is {value}.", f"That's {value}.", f"The answer is {value}."])
    return d.phrase(op, a=a, b=b), [("calculator", {"expression": expression})], answer


def _conversion(d: DialogueBuilder, pair: tuple[str, str] | None = None, value: float | None = None):
    src, dst = pair or d.rng.choice(UNIT_PAIRS)
    v = value if value is not None else d.rng.choice([1, 2, 3, 5, 8, 10, 12, 20, 25, 30, 50, 100, 250])
    if src in ("c", "f") and value is None:
        v = d.rng.choice([-10, 0, 15, 20, 25, 30, 37, 50, 68, 72, 100])
    text = d.phrase("convert", v=v, src=unit_name(src, v), dst=UNITS[dst][3])

    def answer(r):
        value_text = number_text(r[0]["value"])
        return d.rng.choice([f"{v} {unit_name(src, v)} is {value_text} {unit_name(dst, r[0]['value'])}.",
                             f"That's {value_text} {unit_name(dst, r[0]['value'])}."])
    return text, [("convert_units", {"value": v, "from_unit": src, "to_unit": dst})], answer


def _exchange(d: DialogueBuilder, piece, speaker: int | None = None) -> list[dict]:
    text, calls, answer = piece
    d.user(text, speaker)
    results = d.call(*calls)
    d.reply(answer(results))
    return results


def random_timer_seconds(rng: random.Random) -> int:
    """A plausible timer length in seconds (10 s to about 2.5 h)."""
    return rng.choice([rng.randint(1, 60) * 60, rng.choice([10, 15, 20, 30, 45, 90]), 3600 * rng.randint(1, 2) + 60 * rng.choice([0, 15, 30])])


def fam_smalltalk(d: DialogueBuilder) -> None:
    kind = d.rng.choice(["greet", "how_are_you", "who", "capabilities", "joke"])
    d.user(d.phrase(kind))
    if kind == "greet":
        d.reply("Hello! How can I help?", "Hi there! What can I do for you?", "Hey! What do you need?")
    elif kind == "how_are_you":
        d.reply("I'm doing well, thanks for asking. What can I do for you?", "All good here! How can I help?")
    elif kind == "who":
        d.reply("I'm minivox, a small voice assistant that runs right on your computer.",
                "My name is minivox. I'm a voice assistant.")
    elif kind == "capabilities":
        d.reply(CAN_DO, "I can help with a few things. " + CAN_DO)
    else:
        d.reply(*JOKES)


def fam_time(d: DialogueBuilder) -> None:
    _exchange(d, _ask_time(d))


def fam_date(d: DialogueBuilder) -> None:
    kind = d.rng.choice(["date", "weekday", "year"])
    if kind == "date":
        _exchange(d, _ask_date(d))
        return
    d.user(d.phrase(kind))
    result = d.call(("get_date", {}))[0]
    d.reply(f"It's {result['weekday']}." if kind == "weekday" else f"It's {result['date'].split()[-1]}.")


def fam_calc(d: DialogueBuilder) -> None:
    _exchange(d, _arithmetic(d, d.rng.choice(["add", "sub", "mul", "div", "percent", "square"])))


def fam_divide_by_zero(d: DialogueBuilder) -> None:
    a = d.rng.randint(1, 500)
    d.user(d.phrase("div", a=a, b=0))
    d.call(("calculator", {"expression": f"{a} / 0"}))
    d.reply("You can't divide by zero, so there's no answer to that.", "Dividing by zero isn't defined, I'm afraid.")


def fam_units(d: DialogueBuilder) -> None:
    _exchange(d, _conversion(d))


def fam_timer(d: DialogueBuilder) -> None:
    seconds = random_timer_seconds(d.rng)
    d.user(d.phrase("timer", d=duration_phrase(seconds)))
    d.call(("set_timer", {"seconds": seconds}))
    d.reply(f"Okay, timer set for {duration_phrase(seconds)}.", f"Done. Your {duration_phrase(seconds)} timer is running.")


def fam_define(d: DialogueBuilder) -> None:
    word = d.rng.choice(d.words)
    d.user(d.phrase("define", w=word))
    entry = d.call(("define_word", {"word": word}))[0]
    d.reply(f"{word.capitalize()} means {entry['definition']}.", f"As a {entry['part_of_speech']}, {word} means {entry['definition']}.")


def fam_define_unknown(d: DialogueBuilder) -> None:
    word = "".join(d.rng.choice("bcdfglmnprstvz") + d.rng.choice("aeiou") for _ in range(3)) + d.rng.choice("bdgkmnt")
    d.user(d.phrase("define", w=word))
    result = d.call(("define_word", {"word": word}))[0]
    if "error" in result:
        d.reply(f"Sorry, I couldn't find {word} in the dictionary.", f"I don't know the word {word}, sorry.")
    else:  # a random string that happens to be a word
        d.reply(f"{word.capitalize()} means {result['definition']}.")


def fam_follow_calc(d: DialogueBuilder) -> None:
    first = _exchange(d, _arithmetic(d, d.rng.choice(["add", "mul", "sub"])))[0]["result"]
    c = d.rng.randint(2, 12)
    op, symbol, word = d.rng.choice([("that_times", "*", "times"), ("that_plus", "+", "plus")])
    d.user(d.phrase(op, c=c))
    result = d.call(("calculator", {"expression": f"{first} {symbol} {c}"}))[0]["result"]
    d.reply(f"{first} {word} {c} is {number_text(result)}.", f"That gives {number_text(result)}.")


def fam_follow_units(d: DialogueBuilder) -> None:
    kind = d.rng.choice(["length", "mass", "time"])
    codes = [code for code, (quantity, *_) in UNITS.items() if quantity == kind]
    src, dst, third = d.rng.sample(codes, 3)
    v = d.rng.choice([1, 2, 5, 10, 20, 100])
    _exchange(d, _conversion(d, (src, dst), v))
    d.user(d.phrase("other_unit", dst=UNITS[third][3]))
    value = d.call(("convert_units", {"value": v, "from_unit": src, "to_unit": third}))[0]["value"]
    d.reply(f"{v} {unit_name(src, v)} is {number_text(value)} {unit_name(third, value)}.",
            f"That's {number_text(value)} {unit_name(third, value)}.")


def fam_follow_time_date(d: DialogueBuilder) -> None:
    _exchange(d, _ask_time(d))
    d.user(d.phrase("and_date"))
    result = d.call(("get_date", {}))[0]
    d.reply(f"Today is {result['weekday']}, {result['date']}.", f"It's {result['weekday']}, {result['date']}.")


def fam_follow_example(d: DialogueBuilder) -> None:
    word = d.rng.choice(d.example_words)
    d.user(d.phrase("define", w=word))
    entry = d.call(("define_word", {"word": word}))[0]
    d.reply(f"{word.capitalize()} means {entry['definition']}.")
    d.user(d.phrase("example"))
    example = d.rng.choice(entry["examples"])
    d.reply(f"Sure: {example[0].upper()}{example[1:]}.", f"For example: {example}.")


def fam_follow_timer(d: DialogueBuilder) -> None:
    fam_timer(d)
    seconds = d.rng.randint(1, 30) * 60
    d.user(d.phrase("timer_change", d=duration_phrase(seconds)))
    d.call(("set_timer", {"seconds": seconds}))
    d.reply(f"Okay, I've changed it to {duration_phrase(seconds)}.", f"Sure, {duration_phrase(seconds)} it is.")


def fam_follow_repeat(d: DialogueBuilder) -> None:
    piece = d.rng.choice([_ask_time, _ask_date, _arithmetic, _conversion])(d)
    _exchange(d, piece)
    last = d.messages[-1]["content"]
    d.user(d.phrase("repeat"))
    d.reply(last, f"I said: {last}")


def fam_memory(d: DialogueBuilder) -> None:
    if d.rng.random() < 0.5:
        name = d.rng.choice(NAMES)
        d.user(d.phrase("my_name_is", n=name))
        d.reply(f"Nice to meet you, {name}!", f"Hi {name}, how can I help?")
        question, answers = "ask_name", [f"Your name is {name}.", f"You told me you're {name}."]
    else:
        place = d.rng.choice(CITIES)
        d.user(d.phrase("i_live", p=place))
        d.reply(f"{place} sounds lovely!", f"Got it, you're in {place}.")
        question, answers = "ask_place", [f"You live in {place}.", f"You said you live in {place}."]
    if d.rng.random() < 0.5:  # something in between, so the answer has to come from further back
        _exchange(d, d.rng.choice([_ask_time, _arithmetic, _conversion])(d))
    d.user(d.phrase(question))
    d.reply(*answers)


def _refusal(d: DialogueBuilder, kind: str) -> None:
    d.user(d.phrase(kind, p=d.rng.choice(CITIES), n=d.rng.choice(NAMES), food=d.rng.choice(FOODS),
                    genre=d.rng.choice(GENRES)))
    d.reply(f"Sorry, I can't {REFUSALS[kind]}. {CAN_DO}", f"I'm afraid I can't {REFUSALS[kind]} yet. {CAN_DO}")


def fam_multi_questions(d: DialogueBuilder) -> None:
    makers = d.rng.sample([_ask_time, _ask_date, _arithmetic, _conversion], 2)
    pieces = [make(d) for make in makers]
    d.users((1, pieces[0][0]), (2, pieces[1][0]))
    results = d.call(*pieces[0][1], *pieces[1][1])
    first, second = pieces[0][2](results[:1]), pieces[1][2](results[1:])
    d.reply(f"{first} And {second[0].lower()}{second[1:]}", f"{first} {second}")


def fam_multi_names(d: DialogueBuilder) -> None:
    names = d.rng.sample(NAMES, 2)
    d.users((1, d.phrase("my_name_is", n=names[0])), (2, d.phrase("my_name_is", n=names[1])))
    d.reply(f"Nice to meet you, {names[0]} and {names[1]}!", f"Hello {names[0]}, hello {names[1]}!")
    if d.rng.random() < 0.5:
        _exchange(d, d.rng.choice([_ask_time, _arithmetic])(d))
    who = d.rng.choice([1, 2])
    d.user(d.phrase("ask_name"), who)
    d.reply(f"You're {names[who - 1]}.", f"Your name is {names[who - 1]}.")


def fam_multi_followup(d: DialogueBuilder) -> None:
    text, calls, answer = _arithmetic(d, d.rng.choice(["add", "mul"]))
    first = _exchange(d, (text, calls, answer), speaker=1)[0]["result"]
    c = d.rng.randint(2, 12)
    d.user(d.phrase("that_plus", c=c), speaker=2)
    result = d.call(("calculator", {"expression": f"{first} + {c}"}))[0]["result"]
    d.reply(f"{first} plus {c} is {number_text(result)}.")


def fam_multi_greet(d: DialogueBuilder) -> None:
    d.users((1, d.phrase("greet")), (2, d.phrase("greet")))
    d.reply("Hello to you both! How can I help?", "Hi, both of you! What can I do for you?")


FAMILIES = {
    "smalltalk": fam_smalltalk, "time": fam_time, "date": fam_date, "calc": fam_calc,
    "calc.divide_by_zero": fam_divide_by_zero, "units": fam_units, "timer": fam_timer, "define": fam_define,
    "define.unknown": fam_define_unknown, "follow.calc": fam_follow_calc, "follow.units": fam_follow_units,
    "follow.time_date": fam_follow_time_date, "follow.define_example": fam_follow_example,
    "follow.timer": fam_follow_timer, "follow.repeat": fam_follow_repeat, "memory": fam_memory,
    "multi.questions": fam_multi_questions, "multi.names": fam_multi_names, "multi.followup": fam_multi_followup,
    "multi.greet": fam_multi_greet,
    **{f"refuse.{kind}": (lambda d, kind=kind: _refusal(d, kind)) for kind in REFUSALS},
}
NEEDS_WORDNET = {"define", "define.unknown", "follow.define_example"}


# ----------------------------------------------------------------------------------------------
# 4. Generation, config, command


@dataclass
class DialogueConfig:
    """`[dialogues]` of configs/data_llm.toml."""

    num_train: int = 40000
    num_dev: int = 1000
    num_test: int = 2000
    test_families: list[str] = field(default_factory=lambda: ["multi.followup", "refuse.stocks"])  # test-only families
    holdout_every: int = 4  # every 4th paraphrase of each list (the last of shorter lists) is test-only
    user_style: Literal["written", "spoken", "mixed"] = "mixed"  # spoken = minivox.normalize.normalize_text, as ASR emits
    speaker_tag_prob: float = 0.5  # single-speaker dialogues whose user turns carry <speaker_1>
    opening_prob: float = 0.2  # a greeting exchange before the main one
    closing_prob: float = 0.3  # a thanks or goodbye exchange after it
    chatterbot_prob: float = 0.1  # train/dev dialogues taken from chatterbot-corpus small talk (if installed)
    chatterbot_categories: list[str] = field(default_factory=lambda: ["greetings", "conversations", "emotion", "food", "humor", "sports"])
    wrap_prob: float = 0.3  # train/dev requests said with extra words around them (WRAPPED_KEYS); never in test
    define_min_tag_count: int = 3  # WordNet sense-tag count of words the define families ask about (common words)


@dataclass
class LLMDataConfig:
    """configs/data_llm.toml: the LLM text corpus (`minivox data text`) and dialogues (`minivox data dialogues`)."""

    out_dir: str = "data/llm"
    seed: int = 0
    text: TextCorpusConfig = field(default_factory=TextCorpusConfig)
    dialogues: DialogueConfig = field(default_factory=DialogueConfig)


def _closing(d: DialogueBuilder, kind: str) -> None:
    d.user(d.phrase(kind))
    if kind == "greet":
        d.reply("Hello! How can I help?", "Hi! What can I do for you?")
    elif kind == "thanks":
        d.reply("You're welcome!", "Happy to help.", "Any time!")
    else:
        d.reply("Goodbye!", "Bye, take care!", "See you later!")


def _chatterbot_dialogue(rng: random.Random, conversations: list[tuple[str, int, list[str]]]) -> tuple[list[dict], str]:
    category, index, turns = rng.choice(conversations)
    turns = turns[: len(turns) // 2 * 2]  # user, assistant pairs
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": " ".join(text.split())} for i, text in enumerate(turns)]
    return messages, f"chatterbot.{category}/{index}"


def generate_dialogues(cfg: LLMDataConfig, split: str, count: int, log=print) -> list[dict]:
    """`count` dialogues of `split`, deterministic for cfg.seed (dialogue i depends only on seed, split, i)."""
    from minivox.normalize import normalize_text

    dcfg = cfg.dialogues
    wordnet = WordNet(cfg.text.wordnet_dir)
    families = [name for name in FAMILIES if split == "test" or name not in dcfg.test_families]
    unknown = sorted(set(dcfg.test_families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"dialogues.test_families: unknown families {unknown}; expected names from {sorted(FAMILIES)}")
    words, example_words = [], []
    if wordnet.available():
        words = wordnet.common_words(dcfg.define_min_tag_count)
        example_words = [w for w in words if (entry := wordnet.lookup(w)) and entry["examples"]]
    else:
        families = [name for name in families if name not in NEEDS_WORDNET]
        log(f"WordNet not found in {cfg.text.wordnet_dir}: definition dialogues skipped (install: apt-get install wordnet-base)")
    chat = []
    if split != "test" and dcfg.chatterbot_prob > 0:
        root = chatterbot_dir(cfg.text.chatterbot_dir)
        if root is None:
            log("chatterbot-corpus not installed: its small talk skipped (install: pip install chatterbot-corpus)")
        else:
            corpus = read_chatterbot(root)
            chat = [(cat, i, conv) for cat in dcfg.chatterbot_categories for i, conv in enumerate(corpus.get(cat, []))
                    if len(conv) >= 2]
    rows = []
    for index in range(count):
        rng = random.Random(f"dialogue/{cfg.seed}/{split}/{index}")
        if chat and rng.random() < dcfg.chatterbot_prob:
            messages, template = _chatterbot_dialogue(rng, chat)
        else:
            d = DialogueBuilder(rng, split, dcfg, normalize_text, wordnet if words else None, words, example_words)
            family = rng.choice(families)
            if rng.random() < dcfg.opening_prob and not family.startswith("multi."):
                _closing(d, "greet")
            FAMILIES[family](d)
            if rng.random() < dcfg.closing_prob:
                _closing(d, rng.choice(["thanks", "bye"]))
            messages, template = d.messages, f"{family}/{'-'.join(d.picks)}"
        rows.append({"messages": messages, "split": split, "template": template, "id": f"{split}-{index:06d}"})
    return rows


def run_dialogues(args: argparse.Namespace) -> int:
    """`minivox data dialogues`: write the three splits, or with --check validate given files."""
    if args.check:
        for path in args.check:
            print(f"{path}: {len(validate_dialogues_file(path))} dialogues, valid")
        return 0
    from minivox.config import load_config
    from minivox.data.manifest import write_manifest

    cfg = load_config(LLMDataConfig, args.config, args.overrides)
    counts = {"train": cfg.dialogues.num_train, "dev": cfg.dialogues.num_dev, "test": cfg.dialogues.num_test}
    for split, count in counts.items():
        rows = generate_dialogues(cfg, split, count, log=lambda m: print(m, file=sys.stderr))
        for row in rows:
            validate_dialogue(row, f"{split} {row['id']}")
        out = Path(cfg.out_dir) / f"dialogues_{split}.jsonl"
        write_manifest(out, rows, required=("messages", "split", "template"))
        templates = len({row["template"].split("/")[0] for row in rows})
        print(f"wrote {len(rows)} {split} dialogues ({templates} families) to {out}")
    return 0


def register(subparsers) -> None:
    """Add `dialogues` to the `minivox data` subcommands."""
    p = subparsers.add_parser("dialogues", help="chat transcripts with tool calls for the LLM (JSONL, schema in docs/data.md)")
    p.add_argument("--config", default="configs/data_llm.toml", help="recipe TOML (its [dialogues] section and out_dir)")
    p.add_argument("--check", nargs="+", metavar="JSONL", help="only validate these dialogue files against the schema")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. dialogues.num_train=1000 out_dir=/tmp/llm")
    p.set_defaults(func=run_dialogues)
