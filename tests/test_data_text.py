"""Text corpus sources and LLM dialogues: parsers on fixtures written here in the packages' formats,
the dialogue schema validator, correct tool results, and no template leak between train and test."""

import argparse
import calendar
import json
import stat
import struct
import zlib
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivox.config import load_config
from minivox import tools
from minivox.data import dialogues as dlg
from minivox.data import textcorpus as tc

# ----------------------------------------------------------------------------------------------
# fixtures in the packages' file formats


def write_wordnet(root, entries):
    """entries: (pos, lemma, tag_count, gloss, n_pointers). Writes data.<pos> lines at their byte offsets
    (wndb(5WN)) with a license-style header, and index.<pos> lines pointing at them."""
    root.mkdir(parents=True, exist_ok=True)
    for pos in tc.WORDNET_POS:
        data = "  1 This software and database is being provided (license header line)\n"
        index = "  1 license header\n"
        for e_pos, lemma, tag_count, gloss, n_ptr in entries:
            if e_pos != pos:
                continue
            offset = len(data.encode("latin-1"))
            pointers = " @ 00000000 n 0000" * n_ptr
            data += f"{offset:08d} 05 {tc.WORDNET_POS[pos]} 01 {lemma} 0 {n_ptr:03d}{pointers} | {gloss}  \n"
            symbols = " @" * n_ptr
            index += f"{lemma} {tc.WORDNET_POS[pos]} 1 {n_ptr}{symbols} 1 {tag_count} {offset:08d}  \n"
        (root / f"data.{pos}").write_text(data, encoding="latin-1")
        (root / f"index.{pos}").write_text(index, encoding="latin-1")
    return root


WORDNET_ENTRIES = [
    ("noun", "beacon", 6, 'a fire used as a signal; "the beacon was lit on the hill"; "they saw the beacon"', 1),
    ("noun", "harbor", 9, 'a sheltered port where ships can take on cargo; "the harbor was full of boats"', 0),
    ("verb", "harbor", 2, 'maintain a theory or feeling; "she harbors a grudge against him"', 0),
    ("adj", "brisk", 4, 'quick and energetic; "a brisk walk in the park"', 0),
    ("adv", "quickly", 1, "with rapid movements", 0),
    ("noun", "ice_cream", 7, "frozen dessert containing cream and sugar", 2),
]


@pytest.fixture
def wordnet_dir(tmp_path):
    return write_wordnet(tmp_path / "wordnet", WORDNET_ENTRIES)


def write_sword_module(root, verses_by_testament):
    """A SWORD zText module: one zlib block per testament, verse index entries (block, start, size)."""
    root.mkdir(parents=True, exist_ok=True)
    for testament, verses in verses_by_testament.items():
        raw = "".join(verses).encode("utf-8")
        compressed = zlib.compress(raw)
        (root / f"{testament}.bzz").write_bytes(compressed)
        (root / f"{testament}.bzs").write_bytes(struct.pack("<III", 0, len(compressed), len(raw)))
        index, start = [struct.pack("<IIH", 0, 0, 0)], 0  # a heading entry of size 0 comes first
        for verse in verses:
            size = len(verse.encode("utf-8"))
            index.append(struct.pack("<IIH", 0, start, size))
            start += size
        (root / f"{testament}.bzv").write_bytes(b"".join(index))
    return root


# ----------------------------------------------------------------------------------------------
# cleaning


@pytest.mark.parametrize("raw, expected", [
    ("the pilot reported two kills during the mission", "The pilot reported two kills during the mission."),
    ("\u201cHello there,\u201d he said", '"Hello there," he said.'),
    ("'a quoted fragment of words'", "A quoted fragment of words."),
    ("Is it   raining\tnow?", "Is it raining now?"),
    ("WARNING: DO NOT FEED THE BEARS", None),  # no lowercase letter
    ("see http://example.com for more details", None),  # URL
    ("def f(x): return x * 2 and more", None),  # code characters
    ("Too short.", None),
    (" ".join(["word"] * 31), None),  # too long
    ("An (unbalanced parenthesis in this line", None),
])
def test_clean_sentence(raw, expected):
    assert tc.clean_sentence(raw, min_words=3, max_words=30) == expected


def test_dedup_key_folds_case_space_and_punctuation():
    assert tc.dedup_key("Hello, World!") == tc.dedup_key("hello world") != tc.dedup_key("hello words")


# ----------------------------------------------------------------------------------------------
# sources


def test_wordnet_lookup_examples_and_common_words(wordnet_dir):
    wn = tc.WordNet(wordnet_dir)
    assert wn.available()
    beacon = wn.lookup("Beacon")
    assert beacon == {"word": "beacon", "part_of_speech": "noun", "definition": "a fire used as a signal",
                      "examples": ["the beacon was lit on the hill", "they saw the beacon"]}
    assert wn.lookup("harbor")["part_of_speech"] == "noun"  # the noun's first sense is tagged more often
    assert wn.lookup("ice cream")["definition"] == "frozen dessert containing cream and sugar"  # pointers skipped
    assert wn.lookup("zzyzx") is None
    assert sorted(wn.iter_examples()) == sorted(["the beacon was lit on the hill", "they saw the beacon",
                                                 "the harbor was full of boats", "she harbors a grudge against him",
                                                 "a brisk walk in the park"])
    assert wn.common_words(min_tag_count=4) == ["beacon", "brisk", "harbor"]  # ice_cream is not one word
    assert not tc.WordNet(wordnet_dir / "missing").available()


def test_chatterbot_yaml_subset():
    text = """categories:
- greetings
- small talk
conversations:
- - Hello
  - Hi there, how are you?
- - 'It''s a "quoted" line
    that folds'
  - "double \\"quoted\\""
  - |
    line one
      indented
- - plain text that
    continues here
  - last
# a comment
- - a script?
  - |
    #!/bin/sh

    echo hi
- a typo: one dash
  - '22'
"""
    assert tc.parse_yaml_conversations(text) == [
        ["Hello", "Hi there, how are you?"],
        ['It\'s a "quoted" line that folds', 'double "quoted"', "line one\n  indented"],
        ["plain text that continues here", "last"],
        ["a script?", "#!/bin/sh\n\necho hi"],
        ["a typo: one dash", "22"],
    ]


def test_fortunes_entries_without_attributions(tmp_path):
    (tmp_path / "wisdom").write_text("A first fortune\nover two lines.\n\t\t-- Somebody\n%\nSecond one.\n%\n")
    (tmp_path / "wisdom.dat").write_bytes(b"\x00\x01binary index")
    (tmp_path / "ethnic").write_text("Excluded topic.\n%\n")
    assert list(tc.iter_fortunes(tmp_path, exclude=["ethnic"])) == ["A first fortune\nover two lines.", "Second one."]


def test_sword_ztext_reader_strips_markup_and_notes(tmp_path):
    module = write_sword_module(tmp_path / "engWEB", {
        "ot": ['<w lemma="strong:H1">In</w> the beginning<note placement="foot">a footnote</note>.',
               '<div type="x-p"/>And the earth was empty.'],
        "nt": ["The book of the generations."],
    })
    assert [" ".join(v.split()) for v in tc.iter_sword_ztext(module)] == [
        "In the beginning .", "And the earth was empty.", "The book of the generations."]


def test_kjv_reader_parses_bible_program_output(tmp_path):
    fake = tmp_path / "bible"  # prints what bible-kjv's `bible` prints: headings, then "  N text" lines
    fake.write_text("#!/bin/sh\nprintf '\\nGenesis 1\\n\\n  1 In the beginning God created the heaven.\\n"
                    "  2 And the earth was without form.\\n\\nRevelation 22\\n\\n  21 The grace be with you all. Amen.\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    assert list(tc.iter_kjv(str(fake))) == ["In the beginning God created the heaven.",
                                            "And the earth was without form.", "The grace be with you all. Amen."]


def test_build_sentences_skips_missing_sources_dedups_and_tags(tmp_path, wordnet_dir):
    fortunes = tmp_path / "fortunes"
    fortunes.mkdir()
    (fortunes / "misc").write_text("The beacon was lit on the hill! A second sentence is here.\n%\nToo short.\n%\n")
    cfg = tc.TextCorpusConfig(sources=["wordnet", "fortunes", "kjv", "web"], wordnet_dir=str(wordnet_dir),
                              fortunes_dir=str(fortunes), bible_program=str(tmp_path / "no-bible"),
                              sword_dir=str(tmp_path / "no-sword"), num_templates=0)
    messages = []
    rows = tc.build_sentences(cfg, log=messages.append)
    assert sum("'kjv' not found" in m for m in messages) == 1 and sum("'web' not found" in m for m in messages) == 1
    by_source = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row["text"])
    assert by_source["wordnet"][0] == "The beacon was lit on the hill."
    # the fortune's first sentence duplicates a WordNet example (case/punctuation folded): dropped
    assert by_source["fortunes"] == ["A second sentence is here."]
    assert len({tc.dedup_key(r["text"]) for r in rows}) == len(rows)


def test_templated_requests_are_deterministic_and_filled():
    a, b = list(tc.templated_requests(200, seed=3)), list(tc.templated_requests(200, seed=3))
    assert a == b and a != list(tc.templated_requests(200, seed=4))
    assert not any("{" in s or "}" in s for s in a)


# ----------------------------------------------------------------------------------------------
# tools


def test_calculator_matches_python_on_examples():
    assert tools.calculate("17 * 23") == 391
    assert tools.calculate("15 / 100 * 80") == 12  # exact: fractions, not 12.000000000000002
    assert tools.calculate("10 / 3") == 3.3333
    assert tools.calculate("2 ** 10 - (3 - 5)") == 1026
    for bad in ("__import__('os')", "abs(-3)", "2 ** 100", "a + 1", "1 +"):
        with pytest.raises(ValueError):
            tools.calculate(bad)
    assert tools.run_tool("calculator", {"expression": "5 / 0"}) == {"error": "division by zero"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-999, 999), min_size=2, max_size=5), st.lists(st.sampled_from("+-*/"), min_size=4, max_size=4))
def test_calculator_equals_exact_python_arithmetic(numbers, ops):
    expression = " ".join(f"{n} {op}" for n, op in zip(numbers[:-1], ops)) + f" {numbers[-1]}"
    exact = " ".join(f"Fraction({n}) {op}" for n, op in zip(numbers[:-1], ops)) + f" Fraction({numbers[-1]})"
    try:
        expected = eval(exact, {"Fraction": Fraction, "__builtins__": {}})  # the peer: Python's exact fractions
    except ZeroDivisionError:
        assert tools.run_tool("calculator", {"expression": expression}) == {"error": "division by zero"}
        return
    assert tools.calculate(expression) == pytest.approx(float(expected), abs=0.5e-4 + 1e-12)  # rounded to 4 places


@pytest.mark.parametrize("value, src, dst, expected", [
    (1, "mi", "km", 1.61), (10, "km", "mi", 6.21), (100, "c", "f", 212), (32, "f", "c", 0), (0, "c", "k", 273.15),
    (1, "lb", "kg", 0.454), (1, "gal", "l", 3.79), (2, "h", "min", 120), (1, "week", "day", 7), (100, "km/h", "mph", 62.14),
    (3, "feet", "inches", 36), (1, "cup", "ml", 236.59),
])
def test_unit_conversions_known_values(value, src, dst, expected):
    assert tools.convert_units(value, src, dst) == pytest.approx(expected, abs=0.006)


def test_unit_conversion_errors():
    assert "cannot convert" in tools.run_tool("convert_units", {"value": 1, "from_unit": "kg", "to_unit": "km"})["error"]
    assert "unknown unit" in tools.run_tool("convert_units", {"value": 1, "from_unit": "parsec", "to_unit": "km"})["error"]
    assert "expected arguments" in tools.run_tool("set_timer", {"minutes": 5})["error"]


# ----------------------------------------------------------------------------------------------
# dialogues


def small_config(wordnet_dir, **dialogue_overrides):
    cfg = dlg.LLMDataConfig(seed=7)
    cfg.text.wordnet_dir = str(wordnet_dir)
    cfg.dialogues = dlg.DialogueConfig(define_min_tag_count=1, **dialogue_overrides)
    return cfg


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    wordnet_dir = write_wordnet(tmp_path_factory.mktemp("wn"), WORDNET_ENTRIES)
    cfg = small_config(wordnet_dir)
    return {split: dlg.generate_dialogues(cfg, split, n, log=lambda m: None)
            for split, n in (("train", 1500), ("dev", 100), ("test", 600))}, cfg


def test_generated_dialogues_validate(generated):
    rows, _ = generated
    for split, dialogues in rows.items():
        for d in dialogues:
            assert dlg.validate_dialogue(json.loads(json.dumps(d)))["split"] == split


def test_no_template_or_user_turn_leaks_from_train_into_test(generated):
    rows, cfg = generated
    train_templates = {d["template"] for d in rows["train"] + rows["dev"]}
    test_templates = {d["template"] for d in rows["test"]}
    assert not train_templates & test_templates

    def user_turns(dialogues):
        return {m["content"] for d in dialogues for m in d["messages"] if m["role"] == "user"}
    assert not user_turns(rows["train"]) & user_turns(rows["test"])
    train_families = {d["template"].split("/")[0] for d in rows["train"]}
    test_families = {d["template"].split("/")[0] for d in rows["test"]}
    assert not train_families & set(cfg.dialogues.test_families)
    assert set(cfg.dialogues.test_families) <= test_families
    assert set(dlg.FAMILIES) <= train_families | set(cfg.dialogues.test_families)  # every family used


def test_train_requests_are_sometimes_wrapped_and_test_ones_never(generated, wordnet_dir):
    import random

    cfg = dlg.DialogueConfig(wrap_prob=1.0, user_style="written")
    for seed in range(200):
        key = random.Random(seed).choice(sorted(dlg.WRAPPED_KEYS))
        slots = dict(a=12, b=30, c=4, v=5, src="miles", dst="kilometers", d="5 minutes", w="happy", p="Oslo",
                     n="Ana", food="tacos", genre="jazz")
        bare = {o.format(**slots) for o in dlg.PARAPHRASES[key]}
        train = dlg.DialogueBuilder(random.Random(seed), "train", cfg, str).phrase(key, **slots)
        test = dlg.DialogueBuilder(random.Random(seed), "test", cfg, str).phrase(key, **slots)
        assert test in bare  # a held-out paraphrase alone
        assert train not in bare and any(b in train for b in bare)  # a train paraphrase with words around it
    # wrapping draws no random numbers in test: the split is the same with or without it
    plain = dlg.generate_dialogues(small_config(wordnet_dir, wrap_prob=0.0), "test", 100, log=lambda m: None)
    assert plain == generated[0]["test"][:100]


def test_dialogues_are_deterministic(generated, tmp_path):
    rows, cfg = generated
    again = dlg.generate_dialogues(cfg, "test", 50, log=lambda m: None)
    assert again == rows["test"][:50]


def test_tool_results_are_correct_and_answers_use_them(generated):
    rows, _ = generated
    checked = {name: 0 for name in tools.TOOLS}
    for d in rows["train"] + rows["test"]:
        messages = d["messages"]
        for i, msg in enumerate(messages):
            if "tool_calls" not in msg:
                continue
            calls = msg["tool_calls"]
            results = [json.loads(m["content"]) for m in messages[i + 1:i + 1 + len(calls)]]
            answer = messages[i + 1 + len(calls)]["content"]
            for call, result in zip(calls, results):
                name, args = call["name"], call["arguments"]
                checked[name] += 1
                if name == "calculator":
                    try:
                        expected = eval(args["expression"], {"__builtins__": {}})  # a peer: Python's arithmetic
                    except ZeroDivisionError:
                        assert result == {"error": "division by zero"}
                        continue
                    assert result["result"] == pytest.approx(expected, abs=0.5e-4 + 1e-12)
                    assert tools.number_text(result["result"]) in answer
                elif name == "convert_units":
                    assert result == tools.run_tool(name, args) and tools.number_text(result["value"]) in answer
                elif name == "get_time":
                    hour, minute = result["time"].split()[0].split(":")
                    assert 1 <= int(hour) <= 12 and 0 <= int(minute) < 60 and result["time"] in answer
                elif name == "get_date":
                    assert result["weekday"] in calendar.day_name and (result["weekday"] in answer or result["date"].split()[-1] in answer)
                elif name == "set_timer":
                    assert result == {"status": "started", "seconds": args["seconds"]}
                    assert tools.duration_phrase(args["seconds"]) in answer
                elif name == "define_word":
                    entry = dict(WORDNET_LOOKUP).get(args["word"])
                    if entry is None:
                        assert "error" in result
                    else:
                        assert result["definition"] == entry and entry in answer
    assert all(count > 0 for count in checked.values()), checked


WORDNET_LOOKUP = [("beacon", "a fire used as a signal"), ("harbor", "a sheltered port where ships can take on cargo"),
                  ("brisk", "quick and energetic"), ("quickly", "with rapid movements"),
                  ("ice_cream", "frozen dessert containing cream and sugar")]


def test_dates_in_tool_results_match_their_weekday(generated):
    rows, _ = generated
    import datetime as dt
    for d in rows["train"]:
        for m in d["messages"]:
            if m["role"] == "tool" and m["name"] == "get_date":
                result = json.loads(m["content"])
                day = dt.datetime.strptime(result["date"], "%B %d, %Y")
                assert day.strftime("%A") == result["weekday"]


def test_multi_speaker_dialogues_tag_speakers_in_arrival_order(generated):
    rows, _ = generated
    multi = [d for d in rows["train"] if d["template"].startswith("multi.")]
    assert multi
    for d in multi:
        first_user = next(m for m in d["messages"] if m["role"] == "user")["content"]
        assert first_user.startswith("<speaker_1> ") and "<speaker_2> " in first_user


def _valid():
    return {"messages": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "<speaker_1> what's 2 plus 2 <speaker_2> and the time"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "calculator", "arguments": {"expression": "2 + 2"}},
                                                             {"name": "get_time", "arguments": {}}]},
        {"role": "tool", "name": "calculator", "content": '{"result": 4}'},
        {"role": "tool", "name": "get_time", "content": '{"time": "1:00 PM"}'},
        {"role": "assistant", "content": "4, and it's 1:00 PM."}], "split": "train", "template": "t/1"}


def _set(path, value):
    def mutate(d):
        target = d
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return mutate


@pytest.mark.parametrize("mutate, message", [
    (_set(["split"], "validation"), "split must be"),
    (_set(["extra"], 1), "unknown"),
    (_set(["template"], ""), "template"),
    (_set(["messages", 1, "role"], "human"), "role"),
    (_set(["messages", 1, "role"], "assistant"), "first message after the system prompt"),
    (_set(["messages", 1, "role"], "system"), "only come first"),
    (_set(["messages", 3, "name"], "get_time"), "pending calls"),
    (_set(["messages", 2, "tool_calls", 0, "name"], "weather"), "unknown tool"),
    (_set(["messages", 2, "tool_calls", 0, "arguments"], {"expr": "2"}), "expected arguments"),
    (_set(["messages", 2, "tool_calls", 0, "arguments", "expression"], 4), "must be a string"),
    (_set(["messages", 3, "content"], "four"), "JSON object"),
    (_set(["messages", 4], {"role": "assistant", "content": "hm"}), "expected tool messages"),
    (_set(["messages", 5, "content"], " "), "must have content"),
    (_set(["messages", 1, "content"], "hi <speaker_1> there"), "must start with one"),
    (_set(["messages", 1, "content"], "<speaker_2> hi"), "order of first appearance"),
    (_set(["messages", 1, "content"], "<speaker_1> a <speaker_2> b <speaker_3> c <speaker_4> d <speaker_5> e"), "numbered 1..4"),
    (_set(["messages", 3, "speaker"], "x"), "keys"),
    (_set(["messages", 5, "tool_calls"], []), "non-empty list"),
])
def test_validator_rejects_each_schema_violation(mutate, message):
    assert dlg.validate_dialogue(_valid())
    d = _valid()
    mutate(d)
    with pytest.raises(ValueError, match=message):
        dlg.validate_dialogue(d)


def test_validator_rejects_dialogue_ending_on_tool_calls():
    d = _valid()
    d["messages"] = d["messages"][:3]
    with pytest.raises(ValueError, match="pending calls|last message"):
        dlg.validate_dialogue(d)


def test_recipe_config_loads_and_cli_writes_valid_files(tmp_path, wordnet_dir):
    cfg = load_config(dlg.LLMDataConfig, "configs/data_llm.toml")
    assert cfg.dialogues.num_train >= 10000 and cfg.text.sources[0] == "wordnet"
    parser = argparse.ArgumentParser()
    dlg.register(parser.add_subparsers())
    args = parser.parse_args(["dialogues", "--config", "configs/data_llm.toml", f"out_dir={tmp_path}",
                              f"text.wordnet_dir={wordnet_dir}", "dialogues.num_train=40", "dialogues.num_dev=5",
                              "dialogues.num_test=20", "dialogues.define_min_tag_count=1"])
    assert args.func(args) == 0
    for split, n in (("train", 40), ("dev", 5), ("test", 20)):
        assert len(dlg.validate_dialogues_file(tmp_path / f"dialogues_{split}.jsonl")) == n
    check = parser.parse_args(["dialogues", "--check", str(tmp_path / "dialogues_test.jsonl")])
    assert check.func(check) == 0


def test_text_command_writes_tagged_sentences(tmp_path, wordnet_dir):
    parser = argparse.ArgumentParser()
    tc.register(parser.add_subparsers())
    args = parser.parse_args(["text", "--config", "configs/data_llm.toml", f"out_dir={tmp_path}",
                              f"text.wordnet_dir={wordnet_dir}", 'text.sources=["wordnet", "templates"]',
                              "text.num_templates=50"])
    assert args.func(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "sentences.jsonl").read_text().splitlines()]
    assert {r["source"] for r in rows} == {"wordnet", "templates"}
    assert [r["text"] for r in rows if r["source"] == "wordnet"][0] == "The beacon was lit on the hill."
