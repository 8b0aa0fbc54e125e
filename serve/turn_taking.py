"""Turn-taking for the voice agent (DESIGN §7) as a pure state machine: events in, actions out.

    taker = TurnTaker()
    for each audio chunk:                              # the pipeline's loop, in stream time
        actions  = taker.on_vad(event)   for each VADEvent of the chunk
        actions += taker.on_asr(result)  for each ASRResult of the chunk
        actions += taker.advance(stream_time)
        for a in actions: UserText -> user-transcription; EndOfTurn -> start LLM + TTS for a.turn_id;
                          BargeIn -> cancel the bot's turn a.turn_id and send `interruption`
    taker.bot_started(k) / taker.bot_finished(k)       # the reply to user turn k is active / done:
                                                       # call bot_started(k) as the LLM starts, right
                                                       # after EndOfTurn(k), so the user can barge in
                                                       # while it is still thinking

No I/O, no clocks: every time is stream time (s of audio received), as carried by VAD events
(`.time`) and ASR results (`.audio_time`), so the same inputs always give the same actions.

An *utterance* is the user text the ASR sends between two of its final results (the text
deltas concatenated). It ends:

- at an ASR final with `<EOU>` (`eou_latency` set): the turn ends at once (reason "eou");
- at an ASR final with `<EOB>` (`eob_latency` set, `eou_latency` not): a backchannel, never a
  turn end nor a barge-in, when its words are backchannels (below); with other words the ASR
  misjudged a short request ("who are you?" ending in `<EOB>`), and it ends like `<EOU>`;
- at an ASR final with neither (its silence reset, or the end of the stream), or when the VAD
  stopped and `vad_silence_ms` passed with no speech and no new ASR text (counted from the later
  of the VAD stop and the last text's `audio_time`): the turn ends with reason "vad-silence".
  After a "vad-silence" end, later text of the same ASR utterance starts a new utterance.

Whether an ended utterance becomes a user turn (`EndOfTurn`, with the next turn id):

- an utterance with no words (after lower-casing and stripping punctuation) never does;
- while the bot is idle, any utterance with words does, even a lone backchannel: "yes" or
  "okay" answering the bot's question is the user's turn (the ASR's `<EOB>` alone marks a
  backchannel that needs no answer);
- while the bot is active (bot_started(k) and not yet finished), an utterance interrupts turn
  k only with VAD speech and at least `barge_in_min_words` words that are not backchannels
  (`BargeIn(k)`, once, as soon as the words arrive, usually well before the utterance ends);
  it then becomes the next user turn when it ends. If its speech began no later than
  `continue_window_ms` after the interrupted turn ended (the VAD never stopped in between, or
  started again that soon), the turn had ended in a pause of one request ("what is twelve ...
  times seven"): the new turn *continues* it (`EndOfTurn.continues`), its text is the two
  utterances joined, and the pipeline answers it in place of the interrupted turn. VAD speech counts for an utterance when the
  VAD was speaking after the previous utterance ended (a VAD stop dated before that end is the
  previous utterance's hangover, not new speech). An utterance that ends without having
  interrupted is dropped: a lone "yeah" or "right" while the bot talks, one stray word, or
  text without VAD speech (most likely the bot's own voice leaking into the microphone). This
  is the "minimum words" interruption strategy of Pipecat's NeMo voice agent.

Backchannels are phrases of one or more words (`DEFAULT_BACKCHANNELS`); the words of an
utterance that they cover are found by a small dynamic program (the fewest uncovered words).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["DEFAULT_BACKCHANNELS", "TurnConfig", "UserText", "EndOfTurn", "BargeIn", "TurnTaker",
           "normalize_words", "content_words"]

# Short listener responses and fillers that neither interrupt the bot nor, while it speaks, make a turn.
DEFAULT_BACKCHANNELS = (
    "yeah", "yes", "yep", "uh huh", "mhm", "mm hmm", "mm", "hmm", "okay", "ok", "right", "sure", "i see",
    "got it", "alright", "all right", "oh", "ah", "uh", "um", "cool", "nice", "wow", "really", "exactly",
    "true", "indeed", "of course",
)
_NOT_WORD = re.compile(r"[^\w']+")  # anything but letters, digits, underscore, apostrophe separates words


def normalize_words(text: str) -> list[str]:
    """Lower-cased words of text, punctuation stripped: "Uh-huh, OK!" -> ["uh", "huh", "ok"]."""
    return [w.strip("'") for w in _NOT_WORD.split(text.lower()) if w.strip("'")]


def content_words(words: list[str], backchannels: frozenset[tuple[str, ...]]) -> int:
    """How many of `words` no backchannel phrase covers (the fewest over all ways to cover them).

    cost[i] = fewest uncovered words in words[i:]; a word is either uncovered (1 + cost[i + 1]) or
    the start of a backchannel phrase p that matches there (cost[i + len(p)]).
    """
    n = len(words)
    lengths = sorted({len(p) for p in backchannels})
    cost = [0] * (n + 1)
    for i in range(n - 1, -1, -1):
        cost[i] = 1 + cost[i + 1]
        for m in lengths:
            if i + m <= n and tuple(words[i:i + m]) in backchannels:
                cost[i] = min(cost[i], cost[i + m])
    return cost[0]


@dataclass
class TurnConfig:
    """Turn-taking rules (DESIGN §7)."""

    vad_silence_ms: int = 800  # fallback: end the turn this long after the VAD stop if the ASR gave no <EOU>
    #   (longer than a mid-sentence pause of ~250-500 ms; shorter than the agent's ASR silence reset, 2 s)
    barge_in_min_words: int = 2  # words (not backchannels) of a new utterance needed to interrupt the bot:
    #   one stray word (or echo of the bot) must not cut it off, two words are a clear attempt to speak
    backchannels: tuple[str, ...] = DEFAULT_BACKCHANNELS  # phrases that never interrupt (compared as words)
    continue_window_ms: int = 500  # an interruption whose speech began this soon after the turn ended goes on
    #   with that turn (it had ended in a pause): the reply's audio starts 40-90 ms after the turn ends
    #   (bench/agent.py) and people take a few hundred ms more to hear it and answer it; 0: never

    def __post_init__(self):
        if not isinstance(self.vad_silence_ms, int) or self.vad_silence_ms <= 0:
            raise ValueError(f"TurnConfig.vad_silence_ms must be a positive int, got {self.vad_silence_ms!r}")
        if not isinstance(self.barge_in_min_words, int) or self.barge_in_min_words < 1:
            raise ValueError(f"TurnConfig.barge_in_min_words must be an int >= 1, got {self.barge_in_min_words!r}")
        if not isinstance(self.continue_window_ms, int) or self.continue_window_ms < 0:
            raise ValueError(f"TurnConfig.continue_window_ms must be an int >= 0, got {self.continue_window_ms!r}")
        for phrase in self.backchannels:
            if not isinstance(phrase, str) or not normalize_words(phrase):
                raise ValueError(f"TurnConfig.backchannels: expected phrases with at least one word, got {phrase!r}")


# ---------------------------------------------------------------------------------------
# Actions for the pipeline.
# ---------------------------------------------------------------------------------------


@dataclass
class UserText:
    """The current utterance so far (interim), or as it ended (final): a `user-transcription` event."""

    text: str  # the whole utterance so far, not a delta
    final: bool
    eou_prob: float  # the last ASR result's <EOU> probability


@dataclass
class EndOfTurn:
    """The user's turn `turn_id` is over: the pipeline starts the LLM and TTS for it."""

    turn_id: int  # 1, 2, 3, ... in order
    text: str  # the utterance (after the continued turn's text, if `continues`)
    reason: str  # "eou" | "vad-silence"
    continues: int | None = None  # the interrupted turn this one goes on from (it ended in a pause)


@dataclass
class BargeIn:
    """The user is interrupting: cancel the bot's reply to turn `turn_id` at once."""

    turn_id: int  # the bot's turn being interrupted
    text: str  # the interrupting utterance so far


@dataclass
class _Utterance:
    """The user text since the last utterance ended."""

    start_time: float = -math.inf  # stream time at which the previous utterance ended
    text: str = ""
    last_text_time: float | None = None  # audio_time of the latest result that added text
    barged_in: bool = False  # it has interrupted the bot (so it becomes a turn when it ends)
    continues: int | None = None  # the turn it interrupted and goes on from (see TurnConfig.continue_window_ms)
    eou_prob: float = 0.0  # of the latest ASR result


class TurnTaker:
    """The turn-taking state machine (rules in the module docstring).

    Attributes:
        current_turn: id of the latest user turn (0 before the first; then 1, 2, ...).
        bot_turn: the user turn whose reply the bot is producing, or None when idle.
        speaking: the VAD's state as last reported.
    """

    def __init__(self, config: TurnConfig | None = None):
        self.cfg = config or TurnConfig()
        self.backchannels = frozenset(tuple(normalize_words(p)) for p in self.cfg.backchannels)
        self.vad_silence_s = self.cfg.vad_silence_ms / 1000
        self.current_turn = 0
        self.bot_turn: int | None = None
        self._latest_bot_turn = -1  # the newest turn bot_started was called for
        self._interrupted_turn = -1  # the newest turn a BargeIn interrupted
        self.speaking = False  # VAD state
        self.vad_stop_time: float | None = None  # stream time of the latest VAD stop, while not speaking
        self._speech_seen = False  # VAD speech during the current utterance (see on_vad)
        self._speech_start: float | None = None  # stream time of the latest VAD start
        self._last_turn: tuple[int, str, float] | None = None  # the latest EndOfTurn: (id, text, stream time)
        self._utt = _Utterance()

    # ---- inputs ------------------------------------------------------------------------

    def on_asr(self, result) -> list:
        """One ASR result (duck-typed `ASRResult`: text, is_final, eou_prob, eou_latency,
        eob_latency, audio_time) -> actions: UserText, then maybe BargeIn or EndOfTurn."""
        utt, actions = self._utt, []
        utt.eou_prob = float(result.eou_prob)
        if result.text:
            utt.text += result.text
            utt.last_text_time = float(result.audio_time)
            if self._has_words():
                if not result.is_final:  # a final result's text comes in the final UserText below
                    actions.append(UserText(utt.text, False, utt.eou_prob))
                actions += self._check_barge_in()
        if not result.is_final:
            return actions
        if getattr(result, "eou_latency", None) is not None:
            return actions + self._end_utterance("eou", result.audio_time)
        if getattr(result, "eob_latency", None) is not None:
            if content_words(normalize_words(utt.text), self.backchannels):  # words no backchannel covers
                return actions + self._end_utterance("eou", result.audio_time)
            return actions + self._end_utterance(None, result.audio_time)  # a backchannel: shown, never a turn
        return actions + self._end_utterance("vad-silence", result.audio_time)  # ASR silence reset / end of stream

    def on_vad(self, event) -> list:
        """A VADEvent ("start" | "stop", .time in stream s) -> actions (a BargeIn, if words are waiting)."""
        if event.kind == "start":
            self.speaking, self.vad_stop_time, self._speech_seen = True, None, True
            self._speech_start = float(event.time)
            return self._check_barge_in()
        if event.kind == "stop":
            self.speaking, self.vad_stop_time = False, float(event.time)
            if self.vad_stop_time <= self._utt.start_time:
                self._speech_seen = False  # that speech ended before this utterance began (VAD hangover)
            return []
        raise ValueError(f"VAD event kind must be 'start' or 'stop', got {event.kind!r}")

    def advance(self, now: float) -> list:
        """Stream time is `now` s: end the utterance if the VAD-silence fallback is due."""
        utt = self._utt
        if self.speaking or self.vad_stop_time is None or not self._has_words():
            return []
        quiet_since = max(self.vad_stop_time, utt.last_text_time or self.vad_stop_time)
        if now - quiet_since >= self.vad_silence_s:
            return self._end_utterance("vad-silence", now)
        return []

    def bot_started(self, turn_id: int) -> None:
        """The bot's reply to user turn `turn_id` (0: a greeting before any user turn) is now active.

        A stale call (a turn older than one already started, or one already interrupted, e.g. a
        task of the interrupted turn that starts late) is ignored."""
        if not 0 <= turn_id <= self.current_turn:
            raise ValueError(f"bot_started: expected a turn id in 0..{self.current_turn}, got {turn_id}")
        if turn_id < self._latest_bot_turn or turn_id <= self._interrupted_turn:
            return
        self.bot_turn = self._latest_bot_turn = turn_id

    def bot_finished(self, turn_id: int) -> None:
        """The bot's reply to `turn_id` is done (a stale id, e.g. of an interrupted turn, is ignored)."""
        if self.bot_turn == turn_id:
            self.bot_turn = None

    def reset(self) -> None:
        """Forget the current utterance (context reset). Turn ids, bot and VAD state are kept."""
        self._utt = _Utterance()
        self._speech_seen = self.speaking
        self._last_turn = None

    @property
    def continuing(self) -> int | None:
        """The turn the utterance in progress goes on from (see TurnConfig.continue_window_ms), if any."""
        return self._utt.continues

    @property
    def utterance_text(self) -> str:
        """The text of the utterance in progress ("" between utterances)."""
        return self._utt.text

    # ---- rules -------------------------------------------------------------------------

    def _has_words(self) -> bool:
        return bool(normalize_words(self._utt.text))

    def _check_barge_in(self) -> list:
        """BargeIn(k) once, while the bot speaks turn k, after VAD speech and enough content words."""
        utt = self._utt
        if self.bot_turn is None or utt.barged_in or not self._speech_seen:
            return []
        if content_words(normalize_words(utt.text), self.backchannels) < self.cfg.barge_in_min_words:
            return []
        utt.barged_in = True
        last = self._last_turn
        if (self.cfg.continue_window_ms and last is not None and last[0] == self.bot_turn
                and self._speech_start is not None
                and self._speech_start <= last[2] + self.cfg.continue_window_ms / 1000):
            utt.continues = self.bot_turn
        action = BargeIn(self.bot_turn, utt.text)
        self._interrupted_turn, self.bot_turn = self.bot_turn, None  # the pipeline cancels it; its late bot_finished is ignored
        return [action]

    def _end_utterance(self, reason: str | None, now: float) -> list:
        """The utterance is over at stream time `now`: a final UserText, then an EndOfTurn if it
        makes a turn (reason None: a backchannel, never a turn); start the next utterance."""
        utt = self._utt
        self._utt = _Utterance(start_time=float(now))
        self._speech_seen = self.speaking
        if not normalize_words(utt.text):
            return []  # an empty utterance ends nothing
        continues = utt.continues if reason is not None else None
        text = f"{self._last_turn[1].rstrip()} {utt.text.lstrip()}" if continues is not None else utt.text
        actions: list = [UserText(text, True, utt.eou_prob)]
        if reason is None or not (utt.barged_in or self.bot_turn is None):
            return actions  # a backchannel, or an utterance that never interrupted the active bot
        self.current_turn += 1
        self._last_turn = (self.current_turn, text, float(now))
        return actions + [EndOfTurn(self.current_turn, text, reason, continues)]
