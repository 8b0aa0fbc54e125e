"""Early replies: start answering while the user may still be finishing, keep the work if they were.

The ASR declares a turn over with `<EOU>` some 200-350 ms after the speech ends, and the reply's
first words (LLM) and first audio (TTS) then take another ~70 ms (bench/agent.py). When a
streaming step brings no new words and the ASR's `<EOU>` probability has begun to rise, the
session starts an `EarlyReply` for the words so far:

    draft = EarlyReply(models, assistant, text, speaker, pace, loop).start()
    ...                                   # more ASR steps
    draft.cancel()                        # the words changed, a barge-in, a reset, the session ended
    assistant = draft.commit()            # the turn ended with the same words: keep it all

A draft never touches the session's state until `commit`:
- it answers a copy of the chat context (`ChatContext.copy`); `commit` hands back the assistant
  holding that copy, which becomes the session's;
- it runs no tool before `commit` (a timer must not start for words the user goes on from): its
  LLM thread waits at a tool call until then, or gives up when cancelled;
- its text pieces wait in `pieces` (the session's reply reads them after `commit` as it would a
  fresh LLM stream), and the first sentence's audio in `first_audio`: the TTS worker
  synthesises it as soon as the LLM has written it.
A cancelled draft costs only the compute it used (the LLM stops at its next piece, the TTS at
its next chunk).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

from minivox.serve.sentences import SentenceAggregator
from minivox.tools import ToolError

__all__ = ["ChunkFeed", "EarlyReply", "GatedTools", "run_llm"]


def run_llm(loop: asyncio.AbstractEventLoop, pool, assistant, text: str, speaker: int | None,
            cancel: threading.Event, on_piece: Callable[[object], None] | None = None
            ) -> tuple[asyncio.Queue, asyncio.Future]:
    """Run `assistant.respond(text, speaker)` on a `pool` thread. Its text pieces, then an
    Exception if it failed, then None arrive on the returned queue (and go to `on_piece`, on the
    loop, first). `cancel` stops it at the next piece; a reply cut short is kept in the context
    as what was said plus " ..."."""
    pieces: asyncio.Queue = asyncio.Queue()

    def put(item) -> None:  # on the loop
        if on_piece is not None:
            on_piece(item)
        pieces.put_nowait(item)

    def produce() -> None:
        context = assistant.context
        spoken = []
        gen = assistant.respond(text, speaker)
        try:
            for event in gen:
                if cancel.is_set():
                    break
                if event.text:
                    spoken.append(event.text)
                    loop.call_soon_threadsafe(put, event.text)
        except Exception as exc:
            loop.call_soon_threadsafe(put, exc)
        finally:
            gen.close()
            last = context.messages()[-1] if context.messages() else None
            if last is not None and last.get("role") == "user":  # cut short: keep what was said
                context.add_assistant(("".join(spoken).strip() + " ...").strip())
            loop.call_soon_threadsafe(put, None)

    return pieces, loop.run_in_executor(pool, produce)


class GatedTools:
    """A tool registry whose calls wait until `open()`; cancelled first, they fail (ToolError)."""

    def __init__(self, tools, cancel: threading.Event):
        self.tools, self.cancel = tools, cancel
        self.opened = threading.Event()

    def openai_schemas(self) -> list[dict]:
        return self.tools.openai_schemas()

    def call(self, call):
        while not self.opened.wait(0.005):
            if self.cancel.is_set():
                raise ToolError("error", "the early reply was dropped before its tool ran")
        return self.tools.call(call)

    def open(self) -> None:
        self.opened.set()


class ChunkFeed:
    """Audio chunks as a producer appends them; `async for` reads them all, waiting for more
    until `close()`."""

    def __init__(self):
        self.chunks: list = []
        self.closed = False
        self.error: BaseException | None = None
        self._changed = asyncio.Event()

    def append(self, chunk) -> None:
        self.chunks.append(chunk)
        self._changed.set()

    def close(self, error: BaseException | None = None) -> None:
        self.closed, self.error = True, error
        self._changed.set()

    async def __aiter__(self) -> AsyncIterator:
        i = 0
        while True:
            if i < len(self.chunks):
                i += 1
                yield self.chunks[i - 1]
            elif self.closed:
                if self.error is not None:
                    raise self.error
                return
            else:
                self._changed.clear()
                await self._changed.wait()


class EarlyReply:
    """One draft reply to `text` (see the module docstring). `models` is the session's shared
    `Models`, `assistant` the session's `Assistant` (copied here, never changed)."""

    def __init__(self, models, assistant, text: str, speaker: int | None, pace: float,
                 loop: asyncio.AbstractEventLoop):
        from minivox.chat import Assistant

        self.models, self.text, self.speaker, self.pace, self.loop = models, text, speaker, pace, loop
        self.cancel_event = threading.Event()  # stops the LLM thread (the session sets it when the reply ends)
        self.dropped = False  # cancel() was called: stop the speech too
        self.tools = GatedTools(assistant.tools, self.cancel_event)
        self.assistant = Assistant(assistant.backend, self.tools, context=assistant.context.copy(),
                                   options=assistant.options)
        self.aggregator = SentenceAggregator()
        self.first_sentence: str | None = None
        self.first_audio = ChunkFeed()
        self.pieces: asyncio.Queue | None = None
        self.future: asyncio.Future | None = None
        self.tts_task: asyncio.Task | None = None

    def start(self) -> EarlyReply:
        self.pieces, self.future = run_llm(self.loop, self.models.llm_pool, self.assistant, self.text, self.speaker,
                                           self.cancel_event, on_piece=self._on_piece)
        self.future.add_done_callback(lambda f: f.exception())  # never "exception was never retrieved"
        return self

    def matches(self, text: str, speaker: int | None) -> bool:
        return text == self.text and speaker == self.speaker and not self.dropped

    def commit(self):
        """The turn ended with these words: let tools run; returns the assistant holding the context."""
        self.tools.open()
        self.assistant.tools = self.tools.tools
        return self.assistant

    def cancel(self) -> None:
        """Drop the draft (or, after commit, its turn was interrupted): stop the LLM and the speech."""
        self.dropped = True
        self.cancel_event.set()
        if self.tts_task is not None:
            self.tts_task.cancel()

    def _on_piece(self, piece) -> None:
        if self.first_sentence is not None or isinstance(piece, Exception):
            return
        sentences = self.aggregator.push(piece) if isinstance(piece, str) else [self.aggregator.flush()]
        if sentences and sentences[0] and not self.dropped:
            self.first_sentence = sentences[0]
            self.tts_task = self.loop.create_task(self._synthesise(sentences[0]))

    async def _synthesise(self, sentence: str) -> None:
        chunks = self.models.tts.stream(sentence, pace=self.pace)
        try:
            while not self.dropped:  # not cancel_event: the LLM may end before the sentence is spoken
                chunk = await self.loop.run_in_executor(self.models.tts_pool, next, chunks, None)
                if chunk is None:
                    break
                self.first_audio.append(chunk)
            self.first_audio.close()
        except asyncio.CancelledError:
            self.first_audio.close(asyncio.CancelledError())
            raise
        except Exception as exc:
            self.first_audio.close(exc)
