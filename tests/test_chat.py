"""minivox.chat_template, .chat, .tools, .backends: template, incremental decoding, context budget, tools,
the assistant loop, local backend."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from typing import Annotated, Literal

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minivox.backends
from minivox.backends import (ChatDelta, GenerationOptions, LocalBackend, from_openai_messages, hold_to_user_words,
                              to_openai_messages, user_words)
from minivox.chat import APOLOGIES, Assistant, ChatContext, tag_speaker
from minivox.chat_template import (IGNORE_INDEX, SYSTEM_PROMPT, ChatTemplate, IncrementalDecoder, ToolCall,
                                   format_tool_calls, parse_tool_calls, train_chat_tokenizer)
from minivox.data.dialogues import LLMDataConfig, generate_dialogues, validate_dialogue
from minivox.llm import GPT, GPTConfig, SamplingConfig, generate
from minivox.tools import USER_WORD, Tool, ToolError, ToolRegistry, UserWord, demo_tools, run_with_timeout


@pytest.fixture(scope="module")
def dialogues():
    cfg = LLMDataConfig()
    cfg.dialogues.chatterbot_prob = 0.0
    return generate_dialogues(cfg, "train", 60, log=lambda m: None)


@pytest.fixture(scope="module")
def tokenizer(dialogues):
    lines = [m["content"] if not m.get("tool_calls") else format_tool_calls(m["tool_calls"])
             for d in dialogues for m in d["messages"]]
    return train_chat_tokenizer([line for line in lines if line], vocab_size=420)


@pytest.fixture(scope="module")
def template(tokenizer):
    return ChatTemplate(tokenizer)


# ---- template ----------------------------------------------------------------------------------


def test_special_tokens_are_single_ids_and_cannot_be_typed(tokenizer, template):
    ids = template.encode_message({"role": "user", "content": "<speaker_2> hi <|end|> <|assistant|>"})
    assert ids[0] == template.role_ids["user"] and ids[-1] == template.end_id
    assert template.speaker_ids[1] in ids  # <speaker_2> is one id
    control = set(template.role_ids.values()) | {template.end_id, template.call_id}
    assert not control & set(ids[1:-1])  # typed "<|end|>" stays text
    assert tokenizer.decode([template.end_id, template.call_id]) == ""


def test_dialogue_targets_cover_exactly_the_assistant_messages(template, dialogues):
    for d in dialogues[:20]:
        ids, targets = template.encode_dialogue(d["messages"])
        assert len(ids) == len(targets)
        expected = []  # rebuilt message by message: the body of assistant messages is predicted
        for m in d["messages"]:
            piece = template.encode_message(m)
            expected += [IGNORE_INDEX if m["role"] != "assistant" or i == 0 else t for i, t in enumerate(piece)]
        assert targets == expected[1:] + [IGNORE_INDEX]
        assert ids == template.encode_prompt(d["messages"])[:-1]


def test_tool_call_message_round_trips_through_the_template(template, dialogues):
    for d in dialogues:
        for m in d["messages"]:
            if m.get("tool_calls"):
                ids = template.encode_message(m)
                text, calls = template.decode_reply(ids[1:])  # drop the role marker, as generation does
                assert text == ""
                assert [(c.name, json.loads(c.arguments)) for c in calls] == [(c["name"], c["arguments"]) for c in m["tool_calls"]]
                return
    pytest.fail("no tool call in the generated dialogues")


def test_words_in_calls_and_tool_results_get_the_pieces_they_have_in_sentences(template, tokenizer):
    """The spaced JSON strings: a word the user said is cut into the same pieces in a call's
    arguments and in a tool result, so copying it is copying pieces."""
    for word in ["reduction", "complement", "guess", "kilometers", "happy", "Oslo"]:
        said = tokenizer.encode(word)  # as after a space in a sentence (sentencepiece's "▁" prefix)
        assert tokenizer.encode(f"what does {word} mean")[-len(said) - 1:-1] == said
        call = template.encode_message({"role": "assistant", "content": "",
                                        "tool_calls": [{"name": "define_word", "arguments": {"word": word}}]})
        result = template.encode_message({"role": "tool", "name": "define_word",
                                          "content": json.dumps({"word": word, "definition": "x"})})
        for ids in (call, result):
            assert any(ids[i:i + len(said)] == said for i in range(len(ids))), (word, said, ids)
    calls = [{"name": "calculator", "arguments": {"expression": "2 + 2"}},
             {"name": "convert_units", "arguments": {"value": 5, "from_unit": "km", "to_unit": " mi"}}]
    assert [(c.name, json.loads(c.arguments)) for c in parse_tool_calls(format_tool_calls(calls))] == \
        [(c["name"], c["arguments"]) for c in calls]  # a value's own leading space survives the round trip


@given(text=st.text(max_size=80))
@settings(max_examples=80, deadline=None)
def test_parse_tool_calls_never_raises(text):
    calls = parse_tool_calls(text)
    assert calls and all(isinstance(c, ToolCall) for c in calls)


def test_parse_tool_calls_cases():
    good = parse_tool_calls('[{"name": "calculator", "arguments": {"expression": "2 + 2"}}, {"name": "get_time", "arguments": {}}]')
    assert [(c.name, json.loads(c.arguments)) for c in good] == [("calculator", {"expression": "2 + 2"}), ("get_time", {})]
    assert parse_tool_calls('{"name": "get_date", "arguments": {}}')[0].name == "get_date"
    for bad in ['[{"name": "calculator", "arguments": {"expression": ', "hello", "[]", '[{"arguments": {}}]', "[1, 2]"]:
        assert parse_tool_calls(bad)[0].name == ""


def test_incremental_decoder_deltas_join_to_the_full_text(tokenizer):
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        ids = torch.randint(0, tokenizer.vocab_size, (25,), generator=gen).tolist()
        decoder = IncrementalDecoder(tokenizer)
        streamed = "".join(decoder.push(i) for i in ids)
        full = tokenizer.decode(ids)
        assert full.startswith(streamed) and set(full[len(streamed):]) <= {"\ufffd"}  # held back: partial bytes only
        assert streamed + decoder.flush() == full


def test_openai_message_conversion_round_trips(dialogues):
    for d in dialogues:
        assert from_openai_messages(to_openai_messages(d["messages"])) == d["messages"]


# ---- context -----------------------------------------------------------------------------------


def test_speaker_tags():
    assert tag_speaker("hi", 2) == "<speaker_2> hi" and tag_speaker("hi", None) == "hi"
    with pytest.raises(ValueError, match="speaker"):
        tag_speaker("hi", 5)


@given(turns=st.lists(st.tuples(st.text(min_size=1, max_size=200), st.text(max_size=200)), min_size=1, max_size=12),
       budget=st.integers(60, 400))
@settings(max_examples=60, deadline=None)
def test_context_keeps_system_prompt_and_stays_within_budget(turns, budget):
    count = lambda ms: sum(4 + len(m["content"]) // 4 for m in ms)  # noqa: E731
    context = ChatContext("You are a test.", max_tokens=budget, count_tokens=count)
    for user, reply in turns:
        context.add_user(user, speaker=1)
        if reply:
            context.add_assistant(reply)
    messages = context.messages()
    assert messages[0] == {"role": "system", "content": "You are a test."}
    assert count(messages) <= budget
    assert messages[1]["role"] == "user"  # whole turns are dropped, never half of one
    kept_users = [m for m in messages if m["role"] == "user"]
    assert kept_users[-1]["content"].endswith(tag_speaker(turns[-1][0], 1)[-len(kept_users[-1]["content"]):])


def test_context_logs_what_it_drops(caplog):
    context = ChatContext("sys", max_tokens=30, count_tokens=lambda ms: sum(len(m["content"].split()) + 1 for m in ms))
    for i in range(6):
        context.add_user(f"question number {i} here")
        context.add_assistant(f"answer number {i}")
    with caplog.at_level(logging.INFO, logger="minivox.chat"):
        messages = context.messages()
    assert context.dropped_messages > 0 and "dropped the oldest turn" in caplog.text
    assert messages[0]["content"] == "sys" and messages[-1]["content"] == "answer number 5"


def test_drop_last_turn_forgets_only_the_newest_turn_of_that_text():
    context = ChatContext("sys")
    context.add_user("hello")
    context.add_assistant("Hi!")
    context.add_user("what is twelve", speaker=2)
    context.add_assistant("Twelve ...")
    assert not context.drop_last_turn("hello")  # not the newest turn
    assert not context.drop_last_turn("what is")
    assert context.drop_last_turn("what is twelve")  # its speaker tag aside
    assert [m["content"] for m in context.messages()] == ["sys", "hello", "Hi!"]
    assert context.drop_last_turn("hello") and context.messages() == [context.system]
    assert not context.drop_last_turn("hello")  # nothing left


def test_context_refuses_a_system_prompt_over_budget():
    with pytest.raises(ValueError, match="system prompt"):
        ChatContext("x" * 400, max_tokens=50)


# ---- tools --------------------------------------------------------------------------------------


def test_tool_schema_from_typed_function():
    def convert(value: float, unit: Literal["km", "mi"], exact: bool = False) -> dict:
        """convert a distance"""
        return {}

    tool = Tool.from_function(convert)
    assert tool.description == "convert a distance"
    assert tool.parameters == {"type": "object", "required": ["value", "unit"], "additionalProperties": False,
                               "properties": {"value": {"type": "number"}, "unit": {"type": "string", "enum": ["km", "mi"]},
                                              "exact": {"type": "boolean"}}}
    assert tool.validate('{"value": 3, "unit": "km"}') == {"value": 3, "unit": "km"}
    for bad, kind in [('{"value": 3}', "invalid"), ('{"value": "3", "unit": "km"}', "invalid"),
                      ('{"value": 3, "unit": "yd"}', "invalid"), ('{"value": 3, "unit": "km", "x": 1}', "invalid"),
                      ('{"value": true, "unit": "km"}', "invalid"), ("{value: 3", "malformed"), ("[1]", "malformed")]:
        with pytest.raises(ToolError) as err:
            tool.validate(bad)
        assert err.value.kind == kind, bad


def test_user_word_parameters_are_marked_in_the_schema():
    def define(word: UserWord) -> dict:
        """define a word"""
        return {}

    assert Tool.from_function(define).parameters["properties"] == {"word": {"type": "string", USER_WORD: True}}
    assert Tool.from_function(define).validate({"word": "charm"}) == {"word": "charm"}

    def counted(n: Annotated[int, USER_WORD]) -> dict:
        return {}

    with pytest.raises(ValueError, match="UserWord marks a str parameter"):
        Tool.from_function(counted)


def test_run_with_timeout():
    assert run_with_timeout(lambda: 42, 1.0) == 42
    start = time.monotonic()
    with pytest.raises(ToolError) as err:
        run_with_timeout(lambda: time.sleep(5), 0.1)
    assert err.value.kind == "timeout" and time.monotonic() - start < 1.0
    with pytest.raises(ToolError) as err:
        run_with_timeout(lambda: 1 / 0, 1.0)
    assert err.value.kind == "error"


def test_demo_tools_results_and_safe_calculator():
    import datetime as dt

    fired = []
    from minivox.tools import Timers

    tools = demo_tools(now=lambda: dt.datetime(2024, 3, 15, 14, 5), timers=Timers(on_done=fired.append))
    call = lambda name, args: tools.call(ToolCall(name, json.dumps(args)))[1]  # noqa: E731
    assert call("get_time", {}) == {"time": "2:05 PM"}
    assert call("get_date", {}) == {"weekday": "Friday", "date": "March 15, 2024"}
    assert call("calculator", {"expression": "17 * 23"}) == {"result": 391}
    assert "error" in call("calculator", {"expression": "__import__('os').system('true')"})
    assert call("convert_units", {"value": 5, "from_unit": "km", "to_unit": "mi"}) == {"value": 3.11, "unit": "mi"}
    assert call("set_timer", {"seconds": 1}) == {"status": "started", "seconds": 1}
    with pytest.raises(ToolError) as err:
        call("launch_rocket", {})
    assert err.value.kind == "unknown"
    deadline = time.monotonic() + 3
    while not fired and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fired == [1]


# ---- the assistant loop ----------------------------------------------------------------------------


class ScriptedBackend:
    """Replays one scripted reply per call and records what it was sent (a test double for a model)."""

    max_context = 512

    def __init__(self, replies):
        self.replies = list(replies)
        self.seen: list[list[dict]] = []

    def count_tokens(self, messages):
        return sum(len(m["content"]) // 4 + 4 for m in messages)

    def stream_chat(self, messages, tools, options):
        self.seen.append(json.loads(json.dumps(messages)))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, list):
            yield ChatDelta(tool_calls=reply, finish_reason="tool_calls")
            return
        for word in reply.split(" "):
            yield ChatDelta(text=word + " ")
        yield ChatDelta(finish_reason="stop")


def make_tools():
    def add(a: int, b: int) -> int:
        """add two integers"""
        return a + b

    def broken() -> dict:
        """always fails"""
        raise RuntimeError("disk on fire")

    def slow() -> dict:
        """never answers in time"""
        time.sleep(3)
        return {}

    registry = ToolRegistry([Tool.from_function(add), Tool.from_function(broken), Tool.from_function(slow, timeout=0.1)])
    return registry


def test_tool_round_trip_feeds_the_result_back():
    backend = ScriptedBackend([[ToolCall("calculator", '{"expression": "2 + 3"}', "c1")], "It is 5."])
    assistant = Assistant(backend, demo_tools())
    events = list(assistant.respond("what is 2 plus 3", speaker=1))
    assert "".join(e.text for e in events).strip() == "It is 5."
    assert events[0].tool_call == {"name": "calculator", "arguments": '{"expression": "2 + 3"}', "result": {"result": 5}}
    second = backend.seen[1]
    assert second[1] == {"role": "user", "content": "<speaker_1> what is 2 plus 3"}
    assert second[2] == {"role": "assistant", "content": "", "tool_calls": [{"name": "calculator", "arguments": {"expression": "2 + 3"}}]}
    assert second[3] == {"role": "tool", "name": "calculator", "content": '{"result": 5}'}
    # the context the assistant built is a valid training dialogue (same format as minivox.data.dialogues)
    validate_dialogue({"messages": assistant.context.messages(), "split": "train", "template": "t"})


def test_non_dict_tool_results_are_wrapped_and_empty_arguments_mean_none():
    backend = ScriptedBackend([[ToolCall("get_time", "", "c0")], "Noon."])
    assert Assistant(backend, demo_tools()).reply_text("time") == "Noon."
    assert backend.seen[1][-2]["tool_calls"] == [{"name": "get_time", "arguments": {}}]
    backend = ScriptedBackend([[ToolCall("add", '{"a": 2, "b": 3}', "c1")], "Five."])
    assistant = Assistant(backend, make_tools())
    assert assistant.reply_text("add") == "Five."
    assert backend.seen[1][-1] == {"role": "tool", "name": "add", "content": '{"result": 5}'}


@pytest.mark.parametrize("reply, kind", [
    ([ToolCall("", "[{\"name\": \"add\", \"argu", "x")], "malformed"),
    ([ToolCall("launch", "{}", "x")], "unknown"),
    ([ToolCall("add", '{"a": "two", "b": 3}', "x")], "invalid"),
    ([ToolCall("add", '{"a": 2, "b": 3', "x")], "malformed"),
    ([ToolCall("broken", "{}", "x")], "error"),
    ([ToolCall("slow", "{}", "x")], "timeout"),
])
def test_bad_tool_calls_become_a_spoken_apology(reply, kind):
    assistant = Assistant(ScriptedBackend([reply]), make_tools())
    start = time.monotonic()
    text = assistant.reply_text("do the thing")
    assert text == APOLOGIES[kind] and time.monotonic() - start < 2
    assert assistant.context.messages()[-1] == {"role": "assistant", "content": APOLOGIES[kind]}


def test_backend_failure_and_endless_tool_calls_become_apologies():
    from minivox.backends import BackendTimeout

    assistant = Assistant(ScriptedBackend([BackendTimeout("no first token within 5 s")]), make_tools())
    assert assistant.reply_text("hello") == APOLOGIES["backend"]
    loop = [[ToolCall("add", '{"a": 1, "b": 1}', "x")]] * 3
    assistant = Assistant(ScriptedBackend(loop), make_tools())
    assert assistant.reply_text("hello") == APOLOGIES["rounds"]


# ---- local backend ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_backend(tokenizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, d_model=32, max_seq_len=256)).eval()
    model.tokenizer = tokenizer
    return LocalBackend(model)


def test_local_backend_streams_what_generate_produces(local_backend, template):
    messages = [{"role": "system", "content": "You are a test."}, {"role": "user", "content": "what time is it"}]
    options = GenerationOptions(max_tokens=24)
    deltas = list(local_backend.stream_chat(messages, tools=None, options=options))
    sampling = SamplingConfig(temperature=0.0, max_tokens=24, stop_tokens=(template.end_id,))
    ids = list(generate(local_backend.model, template.encode_prompt(messages), sampling,
                        banned_tokens=[template.call_id]))
    assert "".join(d.text for d in deltas) == local_backend.tokenizer.decode(ids)
    assert deltas[-1].finish_reason in ("stop", "length") and not any(d.tool_calls for d in deltas)


class Forced:
    """A model whose first len(target) outputs are forced to write `target` (its real logits after that,
    e.g. for scoring), so a test can make the backend see a given reply."""

    def __init__(self, model, target: list[int]):
        self.model, self.cfg, self.target, self.step = model, model.cfg, target, 0

    def __call__(self, tokens, cache=None, last_only=False):
        logits = self.model(tokens, cache, last_only)
        if self.step < len(self.target):
            logits = torch.full_like(logits, -1e9)
            logits[..., self.target[self.step]] = 0
        self.step += 1
        return logits

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_local_backend_parses_a_tool_call(local_backend, template):
    target = [template.call_id] + local_backend.tokenizer.encode('[{"name": "get_time", "arguments": {}}]') + [template.end_id]
    backend = LocalBackend(Forced(local_backend.model, target), local_backend.tokenizer)
    deltas = list(backend.stream_chat([{"role": "user", "content": "time?"}], tools=[{"function": {}}],
                                      options=GenerationOptions()))
    assert deltas[-1].finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in deltas[-1].tool_calls] == [("get_time", "{}")]


def _define_schemas() -> list[dict]:
    def define_word(word: UserWord) -> dict:
        """define a word"""
        return {}

    def calculator(expression: str) -> dict:
        """arithmetic"""
        return {}

    return ToolRegistry([define_word, calculator]).openai_schemas()


def test_user_words_are_the_last_user_messages_words():
    messages = [{"role": "user", "content": "what does bank mean"}, {"role": "assistant", "content": "..."},
                {"role": "user", "content": "<speaker_2> And what does Don't-Care mean? Don't care, 42!"},
                {"role": "assistant", "content": "Let me see."}]
    assert user_words(messages) == ["and", "what", "does", "don't-care", "mean", "don't", "care"]
    assert user_words([{"role": "system", "content": "hi"}]) == []


@pytest.mark.parametrize("weight", [None, 20.0])  # the default, and one where the context term decides ("mean")
def test_held_word_arguments_become_the_user_word_the_model_would_start_with(local_backend, template, weight, monkeypatch):
    """A word argument outside the user's words is replaced by the user's word whose first piece
    scores highest where the value starts, by context-aware decoding against the prompt with the
    user's text left empty (ties: the whole call's likelihood), computed here from uncached passes
    per word; everything else in the calls is kept."""
    if weight is not None:
        monkeypatch.setattr(minivox.backends, "CONTEXT_WEIGHT", weight)
    alpha = minivox.backends.CONTEXT_WEIGHT
    model, tokenizer = local_backend.model, local_backend.tokenizer
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": "<speaker_1> Hello, what does the word charm mean?"}]
    prompt = template.encode_prompt(messages)
    calls = [ToolCall("calculator", '{"expression": "2 + 2"}', "call_0"), ToolCall("define_word", '{"word": "compar"}', "call_1")]
    held = hold_to_user_words(model, template, prompt, calls, _define_schemas(), messages, model.new_cache())
    words = ["hello", "what", "does", "the", "word", "charm", "mean"]

    def call_ids(word):  # the call list with `word`, as the model would write it after the prompt
        return [template.call_id, *tokenizer.encode(format_tool_calls(
            [{"name": "calculator", "arguments": {"expression": "2 + 2"}}, {"name": "define_word", "arguments": {"word": word}}])),
            template.end_id]

    def logprobs(prompt, ids):  # of each of ids after the prompt, from one uncached pass
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prompt + ids]))[0], dim=-1)
        return [float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(ids)]

    bare = template.encode_prompt([messages[0], {"role": "user", "content": ""}])
    ids = {w: call_ids(w) for w in words}
    first = min(next(j for j, (a, b) in enumerate(zip(ids[w], ids["hello"])) if a != b) for w in words[1:])

    def score(w):
        real, without = logprobs(prompt, ids[w]), logprobs(bare, ids[w])
        return real[first] + alpha * (real[first] - without[first]), sum(real)

    want = max(words, key=score)
    assert [(c.name, json.loads(c.arguments), c.id) for c in held] == \
        [("calculator", {"expression": "2 + 2"}, "call_0"), ("define_word", {"word": want}, "call_1")]
    # Kept as written: a word the user said (any case), a tool without UserWord, a malformed call, no user words.
    for kept, msgs in [([ToolCall("define_word", '{"word": "Charm"}')], messages),
                       ([ToolCall("calculator", '{"expression": "charmed"}')], messages),
                       ([ToolCall("define_word", '{"word": "x"'), ToolCall("define_word", '{"word": "y"}')], messages),
                       ([ToolCall("define_word", '{"word": "compar"}')], messages[:1])]:
        assert hold_to_user_words(model, template, prompt, kept, _define_schemas(), msgs) == kept


def test_local_backend_holds_word_arguments_to_the_users_words(local_backend, template):
    target = [template.call_id] + local_backend.tokenizer.encode(format_tool_calls(
        [{"name": "define_word", "arguments": {"word": "compar"}}])) + [template.end_id]
    backend = LocalBackend(Forced(local_backend.model, target), local_backend.tokenizer)
    messages = [{"role": "user", "content": "what does charm mean"}]
    deltas = list(backend.stream_chat(messages, tools=_define_schemas(), options=GenerationOptions()))
    (call,) = deltas[-1].tool_calls
    assert call.name == "define_word" and json.loads(call.arguments)["word"] in user_words(messages)


def test_import_minivox_chat_is_light():
    code = "import sys, minivox.chat; print(sorted(m for m in ('torch', 'sentencepiece', 'numpy', 'numba') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_chat_command_once_streams_the_local_model_reply(local_backend, template, tmp_path, capsys):
    import argparse

    from minivox.chat import register

    path = local_backend.model.save(tmp_path / "tiny.pt")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["chat", "--checkpoint", str(path), "--once", "what time is it", "--max-tokens", "12"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out.strip()
    expected = local_backend.template  # the same model, greedy
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": "what time is it"}]
    sampling = SamplingConfig(temperature=0.0, max_tokens=12, stop_tokens=(template.end_id,))
    ids = list(generate(local_backend.model, expected.encode_prompt(messages), sampling))
    text, calls = template.decode_reply(ids)
    assert calls is None and printed == text.strip()  # (this seeded tiny model answers in text)
    bad = parser.parse_args(["chat", "--backend", "openai", "--once", "hi"])
    assert bad.func(bad) == 2  # --base-url and --model missing: a clear message, not a traceback
    assert "--base-url" in capsys.readouterr().err
