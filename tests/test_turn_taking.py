"""Tests for serve/turn_taking.py: the turn-taking rules of DESIGN §7 as a state machine.

Table-driven scenarios feed real `ASRResult`s (minivox.asr), `VADEvent`s and stream times and
compare every call's actions with the expected ones; a hypothesis property drives random
interleavings of all inputs and checks the invariants the pipeline relies on (turn ids 1, 2, 3...,
no piece of user text in two turns, no turn end while the bot speaks, BargeIn only of the active
bot turn and at most once per turn, a backchannel (<EOB> after backchannel words only) never ends a turn).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivox.asr import ASRResult
from minivox.serve.turn_taking import (DEFAULT_BACKCHANNELS, BargeIn, EndOfTurn, TurnConfig, TurnTaker, UserText,
                                       content_words, normalize_words)
from minivox.serve.vad import VADEvent


def asr(text: str, t: float, end: str = "") -> ASRResult:
    """An ASR result with delta `text` at stream time t; end: "" interim, "eou", "eob" or
    "reset" (a final from the ASR's silence reset / end of stream)."""
    return ASRResult(text, is_final=bool(end), eou_prob=0.9 if end == "eou" else 0.1, eob_prob=0.0,
                     eou_latency=0.2 if end == "eou" else None, eob_latency=0.2 if end == "eob" else None,
                     audio_time=t)


def short(action) -> tuple:
    """An action as a compact tuple for comparisons."""
    if isinstance(action, UserText):
        return ("text", action.text, action.final)
    if isinstance(action, EndOfTurn):
        end = ("end", action.turn_id, action.text, action.reason)
        return end if action.continues is None else (*end, "continues", action.continues)
    if isinstance(action, BargeIn):
        return ("barge", action.turn_id, action.text)
    raise AssertionError(f"unknown action {action!r}")


def run(taker: TurnTaker, step: tuple) -> list:
    """Apply one scenario step: ("asr", text, t[, end]) | ("vad", kind, t) | ("t", now) |
    ("bot+", k) | ("bot-", k) | ("reset",)."""
    op, *args = step
    if op == "asr":
        return taker.on_asr(asr(*args))
    if op == "vad":
        return taker.on_vad(VADEvent(args[0], args[1]))
    if op == "t":
        return taker.advance(args[0])
    if op == "bot+":
        taker.bot_started(args[0])
        return []
    if op == "bot-":
        taker.bot_finished(args[0])
        return []
    if op == "reset":
        taker.reset()
        return []
    raise AssertionError(op)


def _user_turn(text: str, t0: float) -> list:
    """Steps of a plain user turn ended by <EOU> (and its expected actions), while the bot is idle."""
    return [(("vad", "start", t0), []), (("asr", text, t0 + 0.5, "eou"), None)]


# Each scenario: a list of (step, expected short actions) pairs; None: not checked.
SCENARIOS = {
    "eou ends the turn at once": [
        (("vad", "start", 0.1), []),
        (("asr", "hello", 0.5), [("text", "hello", False)]),
        (("asr", "", 0.66), []),
        (("asr", " there", 0.9, "eou"), [("text", "hello there", True), ("end", 1, "hello there", "eou")]),
        (("vad", "stop", 1.0), []),
        (("t", 5.0), []),  # the fallback has nothing left to end
    ],
    "eob is a backchannel, never a turn": [
        (("vad", "start", 0.1), []),
        (("asr", "uh huh", 0.5, "eob"), [("text", "uh huh", True)]),
        (("vad", "stop", 0.6), []),
        (("t", 3.0), []),
    ],
    "eob after words no backchannel covers ends the turn (the asr misjudged a short request)": [
        (("asr", "who are you", 0.5, "eob"), [("text", "who are you", True), ("end", 1, "who are you", "eou")]),
        (("asr", "okay uh huh", 1.5, "eob"), [("text", "okay uh huh", True)]),  # backchannels only: no turn
    ],
    "a barge-in that ends in eob still becomes the next turn": [
        *_user_turn("tell me a story", 0.0),
        (("bot+", 1), []),
        (("vad", "start", 2.0), []),
        (("asr", "stop it", 2.5, "eob"), [("barge", 1, "stop it"), ("text", "stop it", True),
                                           ("end", 2, "stop it", "eou")]),
    ],
    "empty utterance never ends a turn": [
        (("vad", "start", 0.1), []),
        (("asr", "", 0.5, "eou"), []),
        (("asr", ", .", 0.7, "reset"), []),  # punctuation only: no words
        (("vad", "stop", 0.8), []),
        (("t", 2.0), []),
    ],
    "vad silence fallback": [
        (("vad", "start", 0.1), []),
        (("asr", "book a table", 0.8), [("text", "book a table", False)]),
        (("vad", "stop", 1.0), []),
        (("t", 1.5), []),
        (("t", 1.79), []),
        (("t", 1.8), [("text", "book a table", True), ("end", 1, "book a table", "vad-silence")]),
        (("t", 2.5), []),
        (("asr", "", 2.0, "reset"), []),  # the ASR's own end of that utterance: not a second turn
    ],
    "new text defers the fallback": [
        (("vad", "start", 0.1), []),
        (("asr", "book a table", 0.8), [("text", "book a table", False)]),
        (("vad", "stop", 1.0), []),
        (("asr", " please", 1.3), [("text", "book a table please", False)]),
        (("t", 1.9), []),
        (("t", 2.1), [("text", "book a table please", True), ("end", 1, "book a table please", "vad-silence")]),
    ],
    "speech again cancels the fallback": [
        (("vad", "start", 0.1), []),
        (("asr", "i want", 0.8), [("text", "i want", False)]),
        (("vad", "stop", 1.0), []),
        (("vad", "start", 1.5), []),
        (("t", 2.5), []),
        (("asr", " a pizza", 2.6, "eou"), [("text", "i want a pizza", True), ("end", 1, "i want a pizza", "eou")]),
    ],
    "asr silence reset with text ends the turn as vad-silence": [
        (("vad", "start", 0.1), []),
        (("asr", "turn it off", 0.9), [("text", "turn it off", False)]),
        (("asr", "", 2.0, "reset"), [("text", "turn it off", True), ("end", 1, "turn it off", "vad-silence")]),
    ],
    "idle lone backchannel with eou is a turn (an answer)": [
        (("vad", "start", 0.1), []),
        (("asr", "Yes.", 0.5, "eou"), [("text", "Yes.", True), ("end", 1, "Yes.", "eou")]),
    ],
    "barge-in after two content words, then the next turn": [
        *_user_turn("tell me a story", 0.0),
        (("bot+", 1), []),
        (("vad", "start", 2.0), []),
        (("asr", "yeah", 2.3), [("text", "yeah", False)]),  # a backchannel: no barge-in
        (("asr", " wait", 2.5), [("text", "yeah wait", False)]),  # one content word: not yet
        (("asr", " stop", 2.7), [("text", "yeah wait stop", False), ("barge", 1, "yeah wait stop")]),
        (("asr", " please", 2.9), [("text", "yeah wait stop please", False)]),  # exactly once
        (("bot-", 1), []),  # the pipeline's late finish of the interrupted turn
        (("asr", "", 3.1, "eou"), [("text", "yeah wait stop please", True),
                                   ("end", 2, "yeah wait stop please", "eou")]),
    ],
    "backchannels while the bot speaks change nothing": [
        *_user_turn("tell me a story", 0.0),
        (("bot+", 1), []),
        (("vad", "start", 2.0), []),
        (("asr", "Uh-huh, OK!", 2.4), [("text", "Uh-huh, OK!", False)]),
        (("asr", " I see", 2.6, "eou"), [("text", "Uh-huh, OK! I see", True)]),
        (("asr", "mm hmm yeah", 3.2, "eob"), [("text", "mm hmm yeah", True)]),
        (("vad", "stop", 3.3), []),
        (("t", 5.0), []),
        (("bot-", 1), []),
    ],
    "one word while the bot speaks is dropped": [
        *_user_turn("tell me a story", 0.0),
        (("bot+", 1), []),
        (("vad", "start", 2.0), []),
        (("asr", "Wait.", 2.4, "eou"), [("text", "Wait.", True)]),
        (("asr", "okay go", 3.0), [("text", "okay go", False)]),  # "okay" is a backchannel: 1 word
        (("vad", "stop", 3.1), []),
        (("t", 4.0), [("text", "okay go", True)]),  # the fallback ends it, still no turn
    ],
    "words without vad speech do not interrupt until the vad hears speech": [
        *_user_turn("tell me a story", 0.0),
        (("vad", "stop", 0.4), []),  # emitted after the <EOU> at 0.5, dated back to the speech's end
        (("bot+", 1), []),
        (("asr", "once upon a time", 2.4), [("text", "once upon a time", False)]),  # echo of the bot?
        (("vad", "start", 2.5), [("barge", 1, "once upon a time")]),  # no: the user speaks
    ],
    "case and punctuation are ignored": [
        *_user_turn("hi", 0.0),
        (("bot+", 1), []),
        (("vad", "start", 2.0), []),
        (("asr", "Yeah, WAIT.", 2.4), [("text", "Yeah, WAIT.", False)]),
        (("asr", " Stop!", 2.6), [("text", "Yeah, WAIT. Stop!", False), ("barge", 1, "Yeah, WAIT. Stop!")]),
    ],
    "a finished reply ends barge-in rules": [
        *_user_turn("hi", 0.0),
        (("bot+", 1), []),
        (("bot-", 1), []),
        (("vad", "start", 3.0), []),
        (("asr", "okay", 3.4, "eou"), [("text", "okay", True), ("end", 2, "okay", "eou")]),
    ],
    "reset forgets the utterance": [
        (("vad", "start", 0.1), []),
        (("asr", "hello there", 0.5), [("text", "hello there", False)]),
        (("reset",), []),
        (("asr", "", 0.9, "eou"), []),
        (("asr", "new start", 1.5, "eou"), [("text", "new start", True), ("end", 1, "new start", "eou")]),
    ],
    "a late bot_started of an interrupted or older turn is ignored": [
        *_user_turn("tell me a story", 0.0),
        (("vad", "stop", 0.4), []),
        (("vad", "start", 0.95), []),  # 0.45 s after the turn ended: new speech, but soon enough to go on with it
        (("bot+", 1), []),
        (("asr", "no wait", 1.0), [("text", "no wait", False), ("barge", 1, "no wait")]),
        (("bot+", 1), []),  # the interrupted turn's task starting late
        (("bot+", 0), []),  # an older turn
        (("asr", " what about", 1.2), [("text", "no wait what about", False)]),  # no bot: nothing to interrupt
        (("asr", " lunch", 1.5, "eou"), [("text", "tell me a story no wait what about lunch", True),
                                         ("end", 2, "tell me a story no wait what about lunch", "eou",
                                          "continues", 1)]),
    ],
    "speech going on after an eou in a pause continues that turn": [
        (("vad", "start", 0.1), []),
        (("asr", "what is twelve", 0.9, "eou"), [("text", "what is twelve", True),
                                                 ("end", 1, "what is twelve", "eou")]),  # a 200 ms pause
        (("bot+", 1), []),
        (("asr", " times seven", 1.4), [("text", " times seven", False), ("barge", 1, " times seven")]),
        (("asr", "", 1.9, "eou"), [("text", "what is twelve times seven", True),
                                   ("end", 2, "what is twelve times seven", "eou", "continues", 1)]),
        (("bot+", 2), []),
        (("vad", "stop", 2.0), []),  # a new request later is a turn of its own
        (("vad", "start", 4.0), []),
        (("asr", "and plus one", 4.5), [("text", "and plus one", False), ("barge", 2, "and plus one")]),
        (("asr", "", 5.0, "eou"), [("text", "and plus one", True), ("end", 3, "and plus one", "eou")]),
    ],
    "speech starting later than continue_window_ms after the turn is a new turn": [
        (("vad", "start", 0.1), []),
        (("asr", "tell me a story", 0.9, "eou"), [("text", "tell me a story", True),
                                                  ("end", 1, "tell me a story", "eou")]),
        (("vad", "stop", 0.8), []),
        (("bot+", 1), []),
        (("vad", "start", 1.45), []),  # 0.55 s after the turn ended
        (("asr", "no stop", 1.8), [("text", "no stop", False), ("barge", 1, "no stop")]),
        (("asr", "", 2.2, "eou"), [("text", "no stop", True), ("end", 2, "no stop", "eou")]),
    ],
    "a reset forgets the turn to go on from": [
        (("vad", "start", 0.1), []),
        (("asr", "what is twelve", 0.9, "eou"), [("text", "what is twelve", True),
                                                 ("end", 1, "what is twelve", "eou")]),
        (("bot+", 1), []),
        (("reset",), []),
        (("asr", " times seven", 1.4), [("text", " times seven", False), ("barge", 1, " times seven")]),
        (("asr", "", 1.9, "eou"), [("text", " times seven", True), ("end", 2, " times seven", "eou")]),
    ],
    "greeting turn 0 can be interrupted": [
        (("bot+", 0), []),
        (("vad", "start", 0.5), []),
        (("asr", "hi there", 0.9), [("text", "hi there", False), ("barge", 0, "hi there")]),
    ],
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name):
    taker = TurnTaker()
    for step, expected in SCENARIOS[name]:
        got = [short(a) for a in run(taker, step)]
        if expected is not None:
            assert got == expected, (name, step)


def test_scenario_min_words_and_backchannels_configurable():
    taker = TurnTaker(TurnConfig(barge_in_min_words=3, backchannels=("yeah", "go on")))
    for step in _user_turn("hi", 0.0):
        run(taker, step[0])
    taker.bot_started(1)
    taker.on_vad(VADEvent("start", 2.0))
    assert [short(a) for a in taker.on_asr(asr("okay go on", 2.3))] == [("text", "okay go on", False)]
    assert [short(a) for a in taker.on_asr(asr(" right now", 2.5))] == [
        ("text", "okay go on right now", False), ("barge", 1, "okay go on right now")]


@settings(max_examples=100, deadline=None)
@given(pause=st.one_of(st.none(), st.floats(0.0, 2.0)), window_ms=st.sampled_from([0, 300, 500, 1000]),
       words=st.integers(2, 4))
def test_an_interruption_continues_the_turn_exactly_when_its_speech_began_within_the_window(pause, window_ms, words):
    """A turn ends at <EOU> at t = 1 s; the user's next speech begins `pause` s after the VAD
    stop at 0.9 s (None: the VAD never stopped) and interrupts the bot. It continues turn 1 iff it
    began within `window_ms` of the turn's end, and then its text is both utterances joined."""
    taker = TurnTaker(TurnConfig(continue_window_ms=window_ms))
    taker.on_vad(VADEvent("start", 0.1))
    taker.on_asr(asr("what is twelve", 1.0, "eou"))
    taker.bot_started(1)
    start = 0.1
    if pause is not None:
        start = 0.9 + pause
        taker.on_vad(VADEvent("stop", 0.9))
        taker.on_vad(VADEvent("start", start))
    said = " ".join(f"w{i}" for i in range(words))
    barge = taker.on_asr(asr(said, max(start, 1.0) + 0.3))
    assert isinstance(barge[-1], BargeIn) and barge[-1].turn_id == 1
    end = taker.on_asr(asr("", max(start, 1.0) + 0.8, "eou"))[-1]
    assert isinstance(end, EndOfTurn) and end.turn_id == 2
    goes_on = window_ms > 0 and start <= 1.0 + window_ms / 1000
    assert end.continues == (1 if goes_on else None)
    assert end.text == (f"what is twelve {said}" if goes_on else said)


def test_continue_window_zero_never_continues_and_bad_values_are_errors():
    taker = TurnTaker(TurnConfig(continue_window_ms=0))
    steps = SCENARIOS["speech going on after an eou in a pause continues that turn"]
    actions = [short(a) for step, _ in steps[:5] for a in run(taker, step)]
    assert actions[-1] == ("end", 2, " times seven", "eou")
    with pytest.raises(ValueError, match="continue_window_ms must be an int >= 0, got -1"):
        TurnConfig(continue_window_ms=-1)


# ---------------------------------------------------------------------------------------
# Word helpers.
# ---------------------------------------------------------------------------------------


def test_normalize_words():
    assert normalize_words("Uh-huh, OK! I'm  fine...") == ["uh", "huh", "ok", "i'm", "fine"]
    assert normalize_words("  ,.!? ") == []
    assert normalize_words("'Quoted' words") == ["quoted", "words"]


@pytest.mark.parametrize("text,expected", [
    ("i see got it", 0), ("i see the problem", 2), ("yeah yeah yeah", 0), ("all right then", 1),
    ("mm hmm", 0), ("mm hmm hmm", 0), ("uh huh wait", 1), ("right of way", 2), ("", 0), ("hello", 1),
])
def test_content_words(text, expected):
    phrases = frozenset(tuple(normalize_words(p)) for p in DEFAULT_BACKCHANNELS)
    assert content_words(normalize_words(text), phrases) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["yeah", "i", "see", "got", "it", "stop", "wait", "mm", "hmm", "all", "right"]),
                max_size=8))
def test_content_words_is_minimal_cover(words):
    """The dynamic program equals brute force over all ways to mark words as covered."""
    phrases = frozenset(tuple(normalize_words(p)) for p in DEFAULT_BACKCHANNELS)

    def brute(i: int) -> int:  # every split of words[i:] into phrases and single uncovered words
        if i == len(words):
            return 0
        best = 1 + brute(i + 1)
        for j in range(i + 1, len(words) + 1):
            if tuple(words[i:j]) in phrases:
                best = min(best, brute(j))
        return best

    assert content_words(words, phrases) == brute(0)


# ---------------------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------------------


def test_errors():
    taker = TurnTaker()
    with pytest.raises(ValueError, match=r"turn id in 0..0, got 3"):
        taker.bot_started(3)
    with pytest.raises(ValueError, match="'start' or 'stop', got 'begin'"):
        taker.on_vad(VADEvent("begin", 0.0))
    with pytest.raises(ValueError, match="barge_in_min_words must be an int >= 1, got 0"):
        TurnConfig(barge_in_min_words=0)
    with pytest.raises(ValueError, match="vad_silence_ms must be a positive int"):
        TurnConfig(vad_silence_ms=-5)
    with pytest.raises(ValueError, match="at least one word, got '!!'"):
        TurnConfig(backchannels=("yeah", "!!"))


# ---------------------------------------------------------------------------------------
# Random interleavings.
# ---------------------------------------------------------------------------------------

ASR_OP = st.tuples(st.just("asr"),
                   st.lists(st.sampled_from(["<w>", "<w>", "<w>", "yeah", "uh huh", "okay", "", " ", "."]),
                            min_size=1, max_size=3),
                   st.sampled_from(["", "", "", "", "", "eou", "eob", "reset"]))
OPS = st.one_of(  # ASR results twice as likely as each other input, so utterances grow long enough to barge in
    ASR_OP, ASR_OP,
    st.tuples(st.just("vad")),
    st.tuples(st.just("t"), st.floats(0.0, 1.0)),
    st.tuples(st.just("bot+")),
    st.tuples(st.just("bot-")),
    st.tuples(st.just("reset")),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(OPS, min_size=10, max_size=80))
def test_random_interleavings(ops):
    """Invariants under any order of inputs (time only moves forward, VAD alternates start/stop)."""
    taker = TurnTaker()
    now, vad_speaking, next_word = 0.0, False, 0
    bot = None  # the bot turn the test has started and not finished (None: idle)
    interrupted: set[int] = set()
    started: set[int] = set()
    ended_words: set[str] = set()
    turn_words: dict[int, list[str]] = {}  # the unique words of each turn, in order
    last_turn = 0
    for op in ops:
        eob_final = False
        if op[0] == "asr":
            pieces = []
            for p in op[1]:
                if p == "<w>":  # a unique content word, to trace which turn each word went to
                    p, next_word = f"w{next_word}", next_word + 1
                pieces.append(" " + p if p.strip() else p)
            eob_final = op[2] == "eob"
            actions = taker.on_asr(asr("".join(pieces), now, op[2]))
        elif op[0] == "vad":
            vad_speaking = not vad_speaking
            actions = taker.on_vad(VADEvent("start" if vad_speaking else "stop", now))
        elif op[0] == "t":
            now += op[1]
            actions = taker.advance(now)
        elif op[0] == "bot+":  # the pipeline starts each turn's reply once, the newest turn's
            if taker.current_turn not in started:
                started.add(taker.current_turn)
                taker.bot_started(taker.current_turn)
                bot = taker.current_turn
            actions = []
        elif op[0] == "bot-":
            if bot is not None:
                taker.bot_finished(bot)
            bot, actions = None, []
        else:
            taker.reset()
            actions = []
        for action in actions:
            if isinstance(action, BargeIn):
                assert bot is not None and action.turn_id == bot, (action, bot)
                assert bot not in interrupted, "two BargeIn for one bot turn"
                interrupted.add(bot)
                bot = None  # the pipeline cancels it
            elif isinstance(action, EndOfTurn):
                assert not eob_final or content_words(normalize_words(action.text), taker.backchannels), \
                    "an <EOB> final after backchannels only ended a turn"
                assert bot is None, "a turn ended while the bot was speaking (without a barge-in)"
                assert action.turn_id == last_turn + 1, (action, last_turn)
                last_turn = action.turn_id
                words = normalize_words(action.text)
                assert words, action
                unique = [w for w in words if w.startswith("w")]
                if action.continues is not None:  # the interrupted previous turn's words, then new ones
                    assert action.continues == last_turn - 1 and action.continues in interrupted, action
                    before = turn_words[action.continues]
                    assert unique[:len(before)] == before, (action, before)
                    unique = unique[len(before):]
                assert not set(unique) & ended_words, "a piece of user text ended two turns"
                ended_words |= set(unique)
                turn_words[action.turn_id] = turn_words.get(action.continues, []) + unique
        assert taker.current_turn == last_turn
