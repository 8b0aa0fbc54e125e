"""One voice-agent session: audio in -> ASR + VAD -> turn-taking -> LLM -> TTS -> audio out.

A `Session` serves one WebSocket connection. Its work is a few asyncio tasks joined by
bounded queues (DESIGN.md §2):

    receive ──audio 16 kHz──▶ listen (VAD, streaming ASR, TurnTaker)
                                 │ EndOfTurn(turn_id)        │ BargeIn(turn_id)
                                 ▼                           ▼
                              respond(turn_id): LLM tokens ─▶ sentences ─▶ TTS chunks
                                 │ (turn_id, message)
                                 ▼
                              send ──▶ client      (drops every message of an interrupted turn)

Model inference runs on worker threads (`Models.*_pool`, one thread per model, shared by all
sessions), never on the event loop. Every message a reply produces carries its `turn_id`; a
barge-in adds the turn to `interrupted` *before* the `interruption` event is queued, and the
sender checks that set as it sends, so no audio of an interrupted turn can follow the event.

`Models` holds what sessions share (the ASR model, the TTS voice, the LLM backend); a session owns
its streaming state (transcriber, VAD, turn-taker, chat context). `import serve.pipeline` loads
no models: `Models.load` does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from minivox.serve import protocol as proto
from minivox.serve.audio_log import AudioLogger
from minivox.serve.early_reply import EarlyReply, run_llm
from minivox.serve.sentences import SentenceAggregator
from minivox.serve.turn_taking import BargeIn, EndOfTurn, TurnConfig, TurnTaker, UserText
from minivox.serve.vad import VAD, VADConfig

log = logging.getLogger("minivox.serve")

ASR_RATE = 16000  # the ASR, VAD (and diarizer) input rate


# ---------------------------------------------------------------------------------------
# Configuration and shared models.
# ---------------------------------------------------------------------------------------


@dataclass
class ModelPaths:
    """Checkpoints; empty means the bundled demo model in minivox/pretrained/."""

    asr: str = ""
    asr_att_context: list[int] = field(default_factory=list)  # [left, right] for the streaming ASR; [] = the
    #   checkpoint's own. The demo model also streams with [70, 0]: turns end 40-90 ms sooner, for twice
    #   the ASR compute (README: agent latency and capacity with each)
    fastpitch: str = ""
    hifigan: str = ""
    llm: str = ""
    llm_int8: bool = True  # int8 Linear weights for the local LLM: ~1.5x faster decoding, ~3x prefill, same held-out scores
    llm_base_url: str = ""  # an OpenAI-compatible server (e.g. http://localhost:8000/v1) instead of the local LLM
    llm_model: str = ""  # model name for the remote server (default: its first model)


@dataclass
class PipelineConfig:
    """Per-session behaviour (the [pipeline] table of configs/serve.toml)."""

    vad: VADConfig = field(default_factory=VADConfig)
    turns: TurnConfig = field(default_factory=TurnConfig)
    llm_max_tokens: int = 96  # tokens per reply
    llm_first_token_timeout_s: float = 5.0  # no first reply text within this -> error event + spoken apology
    llm_total_timeout_s: float = 20.0  # the whole reply (tool calls included)
    tts_timeout_s: float = 10.0  # one sentence's synthesis
    tts_pace: float = 1.0  # speaking rate (> 1 is faster)
    audio_lead_ms: int = 300  # reply audio is sent at most this far ahead of real time (the client's buffer)
    max_out_messages: int = 600  # messages waiting for a slow client (~60 s of audio) before the session is dropped
    max_in_chunks: int = 100  # received audio frames waiting for the ASR (~2 s) before reading pauses
    silence_reset_s: float = 2.0  # the ASR ends an utterance after this long without a token
    eou_threshold: float = 0.0  # > 0: the ASR ends an utterance where <EOU> reaches this probability, not only
    #   where it is the likeliest output; sooner, but more turns cut in a pause (README: EOU thresholds). 0 = off
    early_reply: bool = True  # start the reply before the turn is over (serve/early_reply.py); kept if the words stay
    early_reply_eou_prob: float = 0.02  # ... once an ASR step brings no new words and <EOU> is at least this likely

    def __post_init__(self):
        if not 0 <= self.eou_threshold <= 1:
            raise ValueError(f"pipeline.eou_threshold must be a probability (0 = off), got {self.eou_threshold!r}")


class SpeakerTracker(Protocol):
    """The seam where the diarizer joins: who spoke in a stretch of the 16 kHz input stream.

    A session with a tracker calls `push` with every chunk it hears and tags each user turn with
    `speaker(start, end)` (stream seconds); the LLM then sees `<speaker_N>` turns (minivox.chat)."""

    def push(self, samples: np.ndarray) -> None: ...

    def speaker(self, start: float, end: float) -> int | None: ...


class Models:
    """The models every session shares, with one worker thread each.

    Args:
        asr: a `minivox.asr.Transducer` (streaming transcribers are made per session).
        tts: a `minivox.tts.TTS` (one synthesis at a time, on `tts_pool`).
        backend: a chat backend (`minivox.backends.LocalBackend` or `OpenAIBackend`).
        tools: makes a fresh tool registry per session (timers are per user).
        speaker_tracker: makes a per-session `SpeakerTracker` (the diarizer), or None.
        transcriber: makes a per-session streaming recogniser (`step(pcm16k) -> [ASRResult]`,
            `reset()`); default `minivox.asr.StreamingTranscriber(asr)`.
    """

    def __init__(self, asr, tts, backend, tools: Callable[[], Any] | None = None,
                 speaker_tracker: Callable[[], SpeakerTracker] | None = None,
                 transcriber: Callable[[], Any] | None = None):
        self.asr, self.tts, self.backend = asr, tts, backend
        self.tools = tools
        self.speaker_tracker = speaker_tracker
        self.transcriber = transcriber
        self.asr_pool = ThreadPoolExecutor(1, thread_name_prefix="asr")
        self.tts_pool = ThreadPoolExecutor(1, thread_name_prefix="tts")
        self.llm_pool = ThreadPoolExecutor(4, thread_name_prefix="llm")  # waits on the backend's own lock

    @classmethod
    def load(cls, paths: ModelPaths, threads: int = 1) -> Models:
        """Load the checkpoints (ValueError naming a missing one and the command that makes it)."""
        import torch

        from minivox.asr import Transducer
        from minivox.backends import LocalBackend, OpenAIBackend
        from minivox.pretrained import PRETRAINED_DIR
        from minivox.tools import demo_tools
        from minivox.tts import TTS

        torch.set_num_threads(threads)
        asr_path = Path(paths.asr or PRETRAINED_DIR / "asr_demo.pt")
        if not asr_path.is_file():
            raise ValueError(f"ASR checkpoint {asr_path} does not exist: train one with "
                             f"`torchrun --standalone --nproc_per_node=1 -m minivox.train.asr --config configs/asr_demo.toml "
                             f"--out runs/asr_demo` (see README, 'Models and training'), or pass --asr PATH")
        asr = Transducer.from_checkpoint(asr_path)
        if paths.asr_att_context:
            try:
                asr.set_att_context(tuple(paths.asr_att_context))
            except ValueError as exc:
                raise ValueError(f"models.asr_att_context = {list(paths.asr_att_context)}: {exc}") from None
        tts = TTS.from_checkpoints(paths.fastpitch or None, paths.hifigan or None)
        if paths.llm_base_url:
            backend = OpenAIBackend(paths.llm_base_url, model=paths.llm_model or None)
        else:
            llm_path = Path(paths.llm or PRETRAINED_DIR / "llm_demo.pt")
            if not llm_path.is_file():
                raise ValueError(f"LLM checkpoint {llm_path} does not exist: train one with "
                                 f"`python -m minivox.train.llm --config configs/llm_demo.toml --out runs/llm_demo` "
                                 f"(see README), pass --llm PATH, or use a remote model with --llm-base-url URL")
            backend = LocalBackend.from_checkpoint(str(llm_path), int8=paths.llm_int8)
        return cls(asr, tts, backend, tools=demo_tools)

    def close(self) -> None:
        for pool in (self.asr_pool, self.tts_pool, self.llm_pool):
            pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------------
# The session.
# ---------------------------------------------------------------------------------------


APOLOGY_TIMEOUT = "Sorry, that took too long. Please try again."


class LLMTimeout(Exception):
    """The LLM gave no first text, or no complete reply, in time."""


@dataclass
class TurnTimes:
    """Wall-clock marks of one bot turn (time.monotonic), for the `metrics` event."""

    speech_end: float | None = None  # when the audio holding the end of the user's speech arrived
    turn_end: float = 0.0  # when the turn was declared over (EOU or VAD silence)
    llm_first: float | None = None  # first reply text
    tts_first: float | None = None  # first synthesised chunk
    first_audio: float | None = None  # first audio frame handed to the socket
    early: bool = False  # the reply was drafted before the turn ended (an EarlyReply kept)
    continues: int | None = None  # the interrupted turn this one went on from (TurnConfig.continue_window_ms)


class Session:
    """One client connection's agent. `await Session(...).run(incoming)` returns the close code.

    Args:
        models: the shared models.
        config: per-session behaviour.
        send: coroutine sending one WebSocket message (str or bytes).
        session_id: for logs and the `bot-ready` event.
        log: an `AudioLogger` (or None).
    """

    def __init__(self, models: Models, config: PipelineConfig, send: Callable[[str | bytes], Awaitable[None]],
                 session_id: str | None = None, log: AudioLogger | None = None):
        from minivox.asr import StreamingTranscriber
        from minivox.backends import GenerationOptions
        from minivox.chat import Assistant

        self.models, self.cfg, self._send = models, config, send
        self.id = session_id or uuid.uuid4().hex[:12]
        self.stream = proto.ClientStream()
        self.transcriber = models.transcriber() if models.transcriber else \
            StreamingTranscriber(models.asr, silence_reset_s=config.silence_reset_s,
                                 eou_threshold=config.eou_threshold or None)
        self.vad = VAD(config.vad)
        self.turns = TurnTaker(config.turns)
        tools = models.tools() if models.tools else None
        self.assistant = Assistant(models.backend, tools, options=GenerationOptions(max_tokens=config.llm_max_tokens))
        self.speakers = models.speaker_tracker() if models.speaker_tracker else None
        self.out_rate = models.tts.sample_rate
        self.log = log.open(self.id, self.out_rate, ASR_RATE) if log else None

        self.audio_in: asyncio.Queue = asyncio.Queue(config.max_in_chunks)  # (samples16k, wall time) | None
        self.out: asyncio.Queue = asyncio.Queue()  # (turn_id | None, message); bounded by hand (see _queue)
        self.interrupted: set[int] = set()
        self.responder: asyncio.Task | None = None
        self.responder_turn = 0
        self.llm_future: asyncio.Future | None = None  # the thread running the latest LLM reply
        self.draft: EarlyReply | None = None  # a reply started before the current utterance ended
        self.cancel_llm = threading.Event()
        self.resampler = None  # client rate -> 16 kHz, once the format is known
        self.heard = 0  # 16 kHz samples received
        self.arrivals: list[tuple[float, float]] = []  # (stream time s, wall time) of recent chunks
        self.turn_start_time = 0.0  # stream time of the current utterance's first speech
        self.last_speech_end = 0.0  # stream time of the VAD's latest stop
        self.times: dict[int, TurnTimes] = {}
        self.last_turn: tuple[int, str] = (0, "")  # id and text of the latest user turn
        self.out_seq = 0
        self.fatal: proto.ProtocolError | None = None  # the error that ended the session
        self.fatal_close_code = proto.CLOSE_PROTOCOL_ERROR
        self.shutting_down = False
        self.max_input_lag = 0.0  # s: longest time from a chunk's arrival until the ASR had processed it
        self.closed = asyncio.Event()

    # --- entry point ---------------------------------------------------------------

    async def run(self, incoming: AsyncIterator[str | bytes]) -> int:
        """Serve until the client leaves, a fatal error, or `shutdown`. Returns the close code."""
        tasks = [asyncio.create_task(self._receive(incoming), name=f"{self.id}-receive"),
                 asyncio.create_task(self._listen(), name=f"{self.id}-listen"),
                 asyncio.create_task(self._sender(), name=f"{self.id}-send")]
        try:
            await self.closed.wait()
        finally:
            self.cancel_llm.set()
            self._drop_draft()
            if self.responder:
                self.responder.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, *( [self.responder] if self.responder else []), return_exceptions=True)
            if self.log:
                self.log.close()
        if self.fatal is not None:
            return self.fatal_close_code
        return proto.CLOSE_GOING_AWAY if self.shutting_down else 1000

    async def shutdown(self, message: str = "the server is shutting down") -> None:
        """Tell the client and end the session (server SIGTERM)."""
        self.shutting_down = True
        await self._send_now(proto.ProtocolError("server-shutdown", message).event_messages())
        self.closed.set()

    # --- input ---------------------------------------------------------------------

    async def _receive(self, incoming: AsyncIterator[str | bytes]) -> None:
        from minivox.audio import Resampler

        try:
            async for message in incoming:
                for item in self.stream.feed(message):
                    if isinstance(item, proto.ProtocolError):
                        await self._error(item)
                        if item.fatal:
                            return
                    elif isinstance(item, proto.ClientReady):
                        fmt = item.audio
                        self.resampler = Resampler(fmt.sample_rate, ASR_RATE) if fmt.sample_rate != ASR_RATE else None
                        self._queue(None, proto.event("bot-ready", session_id=self.id, version=proto.PROTOCOL_VERSION,
                                                      audio_out={"sample_rate": self.out_rate, "channels": 1,
                                                                 "encoding": "pcm_s16le"}))
                    elif isinstance(item, proto.AudioChunk):
                        samples = item.samples.mean(axis=1) if item.samples.ndim == 2 else item.samples
                        samples = samples.astype(np.float32, copy=False)
                        if self.resampler is not None:
                            samples = self.resampler.process(samples)
                        await self.audio_in.put((samples, time.monotonic()))  # waits when the ASR is behind
                    elif isinstance(item, proto.Action):
                        await self._reset_context()
                    # ClientPlayback: informational (playback position); nothing to do yet
        finally:
            try:
                self.audio_in.put_nowait(None)  # the listener's end marker (if full, it is being cancelled)
            except asyncio.QueueFull:
                pass
            self.closed.set()

    async def _reset_context(self) -> None:
        """Forget the conversation: cancel the bot's turn, clear the chat context and the ASR stream."""
        loop = asyncio.get_running_loop()
        if self.responder and not self.responder.done():
            await self._interrupt(self.responder_turn)
        self._drop_draft()
        if self.llm_future is not None:  # the generating thread stops at its next token
            await asyncio.wait([self.llm_future], timeout=self.cfg.llm_total_timeout_s)
        self.assistant.context.reset()
        await loop.run_in_executor(self.models.asr_pool, self.transcriber.reset)  # between ASR steps, not during one
        self.turns.reset()

    # --- hearing -------------------------------------------------------------------

    async def _listen(self) -> None:
        """VAD + streaming ASR + turn-taking over the input audio."""
        loop = asyncio.get_running_loop()
        while True:
            item = await self.audio_in.get()
            if item is None:
                return
            chunks, last = [item], False
            while not self.audio_in.empty():  # when behind, take everything waiting in one ASR step
                nxt = self.audio_in.get_nowait()
                if nxt is None:
                    last = True
                    break
                chunks.append(nxt)
            samples = np.concatenate([c[0] for c in chunks]) if len(chunks) > 1 else chunks[0][0]
            self.heard += len(samples)
            now = self.heard / ASR_RATE
            self.arrivals.append((now, chunks[-1][1]))
            del self.arrivals[:-200]
            if self.log:
                self.log.write_input(samples)
            if self.speakers is not None:
                self.speakers.push(samples)
            actions = []
            for event in self.vad.process(samples):
                if event.kind == "start":
                    self.turn_start_time = event.time
                    self._queue(None, proto.event("user-started-speaking", time=round(event.time, 3)))
                else:
                    self.last_speech_end = event.time
                    self._queue(None, proto.event("user-stopped-speaking", time=round(event.time, 3)))
                    for times in self.times.values():  # turns that ended (<EOU>) before the VAD's hangover
                        if times.speech_end is None:
                            times.speech_end = self._wall_time_of(event.time)
                actions += self.turns.on_vad(event)
            try:
                results = await loop.run_in_executor(self.models.asr_pool, self.transcriber.step, samples)
            except Exception as exc:  # a broken model must not end the session
                log.exception("session %s: ASR failed", self.id)
                await self._error(proto.ProtocolError("asr-failed", f"speech recognition failed: {exc}", False))
                self.transcriber.reset()
                results = []
            # Input lag: from the arrival of the oldest audio in this step until the ASR is done with it.
            self.max_input_lag = max(self.max_input_lag, time.monotonic() - chunks[0][1])
            for result in results:
                actions += self.turns.on_asr(result)
            actions += self.turns.advance(now)
            for action in actions:
                await self._act(action)
            self._update_draft(results)
            if last:
                return

    def _wall_time_of(self, stream_time: float) -> float | None:
        """When the chunk holding stream time `stream_time` arrived (wall clock), if remembered."""
        for t, wall in self.arrivals:
            if t >= stream_time:
                return wall
        return None

    async def _act(self, action) -> None:
        if isinstance(action, UserText):
            self._queue(None, proto.event("user-transcription", text=action.text, final=action.final, speaker=None,
                                          eou_prob=round(float(action.eou_prob), 3)))
        elif isinstance(action, BargeIn):
            await self._interrupt(action.turn_id)
        elif isinstance(action, EndOfTurn):
            if self.responder and not self.responder.done():
                await self._interrupt(self.responder_turn)  # a new turn replaces the bot's current one
            if action.continues is not None:
                await self._forget_turn(action.continues)
            speaker = self.speakers.speaker(self.turn_start_time, self.heard / ASR_RATE) if self.speakers else None
            # The user's speech ended at the VAD's last stop, or (an <EOU> before the VAD's hangover) at
            # its next one, filled in by _listen.
            speech_end = self._wall_time_of(self.last_speech_end) if not self.vad.speaking else None
            draft, self.draft = self.draft, None
            if draft is not None and not draft.matches(action.text, speaker):
                draft.cancel()
                draft = None
            self.last_turn = (action.turn_id, action.text)
            self.times[action.turn_id] = TurnTimes(speech_end=speech_end, turn_end=time.monotonic(),
                                                   early=draft is not None, continues=action.continues)
            self.responder_turn = action.turn_id
            self.turns.bot_started(action.turn_id)  # at once: barge-in rules apply from here
            if draft is not None:  # keep the early reply: its context and its LLM thread become the session's
                self.assistant = draft.commit()
                self.cancel_llm, self.llm_future = draft.cancel_event, draft.future
            else:
                self.cancel_llm = threading.Event()
            self.responder = asyncio.create_task(self._respond(action.turn_id, action.text, speaker, draft),
                                                 name=f"{self.id}-turn{action.turn_id}")

    async def _forget_turn(self, turn_id: int) -> None:
        """The user went on speaking after turn `turn_id` ended in a pause, and the turn that
        continues it is over: drop the interrupted exchange from the chat context (once its LLM
        thread has stopped), so that the LLM answers the whole request once."""
        if self.llm_future is not None:  # the interrupted turn's thread stops at its next token
            await asyncio.wait([self.llm_future], timeout=self.cfg.llm_total_timeout_s)
        if self.last_turn[0] == turn_id:
            self.assistant.context.drop_last_turn(self.last_turn[1])

    def _update_draft(self, results: list) -> None:
        """After an ASR step: drop a draft whose words changed; start one (config `early_reply`)
        when the step brought no new words, the utterance has some, the bot is idle and <EOU> is
        at least `early_reply_eou_prob` likely (see serve/early_reply.py)."""
        text = self.turns.utterance_text
        if self.draft is not None and self.draft.text != text:
            self._drop_draft()
        if (not self.cfg.early_reply or self.draft is not None or not results or not text.strip()
                or self.turns.continuing is not None
                or any(r.text or r.is_final for r in results) or self.turns.bot_turn is not None
                or (self.responder is not None and not self.responder.done())
                or max(r.eou_prob for r in results) < self.cfg.early_reply_eou_prob):
            return
        speaker = self.speakers.speaker(self.turn_start_time, self.heard / ASR_RATE) if self.speakers else None
        self.draft = EarlyReply(self.models, self.assistant, text, speaker, self.cfg.tts_pace,
                                asyncio.get_running_loop()).start()

    def _drop_draft(self) -> None:
        if self.draft is not None:
            self.draft.cancel()
            self.draft = None

    async def _interrupt(self, turn_id: int) -> None:
        """Barge-in: stop the turn's LLM and TTS, drop its queued output, tell the client."""
        self._drop_draft()
        if turn_id in self.interrupted:
            return
        self.interrupted.add(turn_id)  # from here on the sender drops every message of this turn
        self.cancel_llm.set()
        if self.responder and self.responder_turn == turn_id and not self.responder.done():
            self.responder.cancel()
        self.turns.bot_finished(turn_id)
        self._queue(None, proto.event("interruption", turn_id=turn_id))

    # --- answering -----------------------------------------------------------------

    async def _respond(self, turn_id: int, text: str, speaker: int | None, draft: EarlyReply | None = None) -> None:
        """LLM -> sentences -> TTS for one user turn (continuing `draft`, a kept early reply, if given).
        Ends with a ("metrics") marker that the sender turns into the turn's end once its speech has
        played; a failure ends the turn, not the session."""
        self.turns.bot_started(turn_id)
        sentences: asyncio.Queue = asyncio.Queue()
        speaker_task = asyncio.create_task(self._speak(turn_id, sentences, draft))
        try:
            self._queue(turn_id, proto.event("bot-llm-started", turn_id=turn_id))
            aggregator = SentenceAggregator()
            try:
                async for piece in self._llm_stream(turn_id, text, speaker, draft):
                    self._queue(turn_id, proto.event("bot-llm-text", text=piece, turn_id=turn_id))
                    for sentence in aggregator.push(piece):
                        sentences.put_nowait(sentence)
                rest = aggregator.flush()
                if rest:
                    sentences.put_nowait(rest)
            except LLMTimeout as exc:
                await self._error(proto.ProtocolError("llm-timeout", str(exc), False), turn_id)
                aggregator.flush()
                sentences.put_nowait(APOLOGY_TIMEOUT)
            self._queue(turn_id, proto.event("bot-llm-stopped", turn_id=turn_id))
            sentences.put_nowait(None)
            await speaker_task
        except asyncio.CancelledError:
            speaker_task.cancel()
            if draft is not None:
                draft.cancel()
            raise
        except Exception as exc:
            log.exception("session %s: turn %d failed", self.id, turn_id)
            speaker_task.cancel()
            await self._error(proto.ProtocolError("llm-failed", f"the reply failed: {exc}", False), turn_id)
        self._queue(turn_id, ("metrics", b""))

    async def _llm_stream(self, turn_id: int, text: str, speaker: int | None,
                          draft: EarlyReply | None = None) -> AsyncIterator[str]:
        """The assistant's reply text as it is generated (tool calls run in between), with timeouts.

        The generator runs on an LLM worker thread (`run_llm`; a kept draft's is already running)
        and hands each piece to the loop; cancelling sets `cancel_llm`, which the thread checks
        after every piece."""
        loop = asyncio.get_running_loop()
        cancel = self.cancel_llm
        times = self.times.setdefault(turn_id, TurnTimes(turn_end=time.monotonic()))
        if draft is not None:
            pieces, future = draft.pieces, draft.future
        else:
            pieces, future = run_llm(loop, self.models.llm_pool, self.assistant, text, speaker, cancel)
            self.llm_future = future
        deadline = time.monotonic() + self.cfg.llm_total_timeout_s
        first = True
        try:
            while True:
                limit = self.cfg.llm_first_token_timeout_s if first else deadline - time.monotonic()
                try:
                    piece = await asyncio.wait_for(pieces.get(), timeout=max(0.0, limit))
                except asyncio.TimeoutError:
                    what = "first words" if first else "whole reply"
                    limit_s = self.cfg.llm_first_token_timeout_s if first else self.cfg.llm_total_timeout_s
                    raise LLMTimeout(f"the language model gave no {what} within {limit_s:g} s") from None
                if piece is None:
                    break
                if isinstance(piece, Exception):
                    raise piece
                if first:
                    times.llm_first = time.monotonic()
                    first = False
                yield piece
        finally:
            cancel.set()
            future.add_done_callback(lambda f: f.exception())  # the thread ends on its own; never block here

    async def _speak(self, turn_id: int, sentences: asyncio.Queue, draft: EarlyReply | None = None) -> None:
        """Synthesise each sentence as it arrives (a kept draft's first one is synthesised already);
        audio leaves in chunks of at most 100 ms."""
        started = False
        while True:
            sentence = await sentences.get()
            if sentence is None:
                break
            if not started:
                self._queue(turn_id, proto.event("bot-tts-started", turn_id=turn_id))
                started = True
            self._queue(turn_id, proto.event("bot-transcription", text=sentence, turn_id=turn_id))
            early = draft is not None and sentence == draft.first_sentence
            chunks = aiter(draft.first_audio) if early else self._synthesise(sentence)
            try:
                while True:
                    try:
                        chunk = await asyncio.wait_for(anext(chunks), timeout=self.cfg.tts_timeout_s)
                    except StopAsyncIteration:
                        break
                    times = self.times.get(turn_id)
                    if times is not None and times.tts_first is None:
                        times.tts_first = time.monotonic()
                    for piece in proto.split_audio(chunk.audio, self.out_rate, max_ms=100):
                        self._queue(turn_id, ("audio", proto.pcm16_bytes(piece)))
            except asyncio.TimeoutError:
                await self._error(proto.ProtocolError("tts-failed", f"speech synthesis took over "
                                                      f"{self.cfg.tts_timeout_s:g} s for one sentence", False), turn_id)
            except Exception as exc:
                log.exception("session %s: TTS failed", self.id)
                await self._error(proto.ProtocolError("tts-failed", f"speech synthesis failed: {exc}", False), turn_id)
        if started:
            self._queue(turn_id, proto.event("bot-tts-stopped", turn_id=turn_id))

    async def _synthesise(self, sentence: str) -> AsyncIterator:
        """TTS chunks of one sentence, each made on the TTS worker thread."""
        loop = asyncio.get_running_loop()
        chunks = self.models.tts.stream(sentence, pace=self.cfg.tts_pace)
        while (chunk := await loop.run_in_executor(self.models.tts_pool, next, chunks, None)) is not None:
            yield chunk

    def _metrics(self, turn_id: int) -> list[str]:
        """The turn's `metrics` event: latencies in ms from the wall-clock marks (None if unknown)."""
        t = self.times.pop(turn_id, None) or TurnTimes()
        ms = lambda a, b: None if a is None or b is None else round((b - a) * 1000, 1)  # noqa: E731
        return proto.event(
            "metrics", turn_id=turn_id, voice_to_voice_ms=ms(t.speech_end, t.first_audio),
            turn_detect_ms=ms(t.speech_end, t.turn_end), llm_first_text_ms=ms(t.turn_end, t.llm_first),
            tts_first_audio_ms=ms(t.llm_first, t.tts_first), max_input_lag_ms=round(self.max_input_lag * 1000, 1),
            early_reply=t.early, continues=t.continues)

    # --- output --------------------------------------------------------------------

    def _queue(self, turn_id: int | None, message) -> None:
        """Queue messages for the client: a list of JSON strings (from proto.event) or ("audio", pcm16).
        A client that does not keep up is dropped (fatal `backpressure`), never buffered without bound."""
        items = message if isinstance(message, list) else [message]
        if self.out.qsize() + len(items) > self.cfg.max_out_messages:
            if self.fatal is None:
                self.fatal = proto.ProtocolError("backpressure", f"the client is not reading: over "
                                                 f"{self.cfg.max_out_messages} messages waiting")
                self.fatal_close_code = self.fatal.close_code
                self.closed.set()
            return
        for item in items:
            self.out.put_nowait((turn_id, item))

    async def _error(self, error: proto.ProtocolError, turn_id: int | None = None) -> None:
        self._queue(None, error.event_messages())
        if error.fatal:
            self.fatal = error
            self.fatal_close_code = error.close_code or proto.CLOSE_PROTOCOL_ERROR
            await self._drain()
            self.closed.set()

    async def _drain(self, timeout: float = 1.0) -> None:
        """Give the sender a moment to deliver what is queued (e.g. a fatal error before closing)."""
        end = time.monotonic() + timeout
        while not self.out.empty() and time.monotonic() < end:
            await asyncio.sleep(0.01)

    async def _send_now(self, messages: list[str]) -> None:
        for m in messages:
            try:
                await self._send(m)
            except Exception:
                return

    async def _sender(self) -> None:
        """The only writer to the socket: drops messages of interrupted turns, numbers audio frames,
        and paces audio to real time (at most `audio_lead_ms` ahead of the client's playback), so
        the bot's turn lasts as long as its speech and a barge-in finds the rest still here to drop."""
        lead = self.cfg.audio_lead_ms / 1000
        playhead = 0.0  # wall time at which the client will have played everything sent
        while True:
            turn_id, message = await self.out.get()
            if turn_id is not None and turn_id in self.interrupted:
                continue
            if isinstance(message, tuple) and message[0] == "metrics":  # the turn's last message
                await asyncio.sleep(max(0.0, playhead - time.monotonic()))  # until its speech has played
                if turn_id not in self.interrupted:
                    self.turns.bot_finished(turn_id)
                    for event in self._metrics(turn_id):
                        if self.log:
                            self.log.event("out", json.loads(event))
                        await self._send_now([event])
                continue
            if isinstance(message, tuple):  # ("audio", pcm16)
                pcm = message[1]
                wait = playhead - lead - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    if turn_id in self.interrupted:  # a barge-in came while we waited
                        continue
                now = time.monotonic()
                playhead = max(playhead, now) + len(pcm) / 2 / self.out_rate
                if self.log:
                    self.log.write_output(pcm)
                times = self.times.get(turn_id)
                if times is not None and times.first_audio is None:
                    times.first_audio = now
                data = proto.audio_frame(self.out_seq, pcm)
                self.out_seq += 1
            else:
                data = message
                if self.log:
                    self.log.event("out", json.loads(message))
            try:
                await self._send(data)
            except Exception:  # the client left: the receive task ends the session
                self.closed.set()
                return
