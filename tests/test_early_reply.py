"""serve/early_reply.py's parts: tools wait for the commit, audio feeds, and the context copy a
draft answers. (Sessions keeping and dropping drafts over a socket: tests/test_server.py.)"""

from __future__ import annotations

import asyncio
import threading

import pytest

from minivox.chat import ChatContext
from minivox.serve.early_reply import ChunkFeed, GatedTools
from minivox.chat_template import ToolCall
from minivox.tools import ToolError, ToolRegistry


def echo(text: str) -> dict:
    """Say it back."""
    return {"said": text}


def test_gated_tools_run_only_after_open_and_fail_when_cancelled():
    cancel = threading.Event()
    gated = GatedTools(ToolRegistry([echo]), cancel)
    assert gated.openai_schemas() == ToolRegistry([echo]).openai_schemas()
    done = []
    worker = threading.Thread(target=lambda: done.append(gated.call(ToolCall("echo", '{"text": "hi"}'))))
    worker.start()
    worker.join(0.2)
    assert worker.is_alive() and not done  # waiting for the commit
    gated.open()
    worker.join(2)
    assert done == [({"text": "hi"}, {"said": "hi"})]

    dropped = GatedTools(ToolRegistry([echo]), threading.Event())
    errors = []

    def run():
        try:
            dropped.call(ToolCall("echo", '{"text": "no"}'))
        except ToolError as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    dropped.cancel.set()
    worker.join(2)
    assert not worker.is_alive() and len(errors) == 1


def test_chunk_feed_yields_what_came_before_and_after_reading_began():
    async def main():
        feed = ChunkFeed()
        feed.append(1)

        async def produce():
            for x in (2, 3):
                await asyncio.sleep(0.01)
                feed.append(x)
            feed.close()

        task = asyncio.create_task(produce())
        got = [x async for x in feed]
        await task
        again = [x async for x in feed]  # a closed feed replays everything
        failed = ChunkFeed()
        failed.close(RuntimeError("tts broke"))
        with pytest.raises(RuntimeError, match="tts broke"):
            [x async for x in failed]
        return got, again

    assert asyncio.run(main()) == ([1, 2, 3], [1, 2, 3])


def test_context_copy_is_independent():
    context = ChatContext(max_tokens=1000)
    context.add_user("what is two plus two")
    context.add_assistant("", [{"name": "calculator", "arguments": {"expression": "2 + 2"}}])
    context.add_tool_result("calculator", {"result": 4})
    twin = context.copy()
    assert twin.messages() == context.messages()
    twin.add_assistant("Four.")
    twin.add_user("thanks")
    twin.turns[0][1]["tool_calls"][0]["arguments"]["expression"] = "changed"
    assert len(context.messages()) == 4 and len(twin.messages()) == 6
    assert context.turns[0][1]["tool_calls"][0]["arguments"]["expression"] == "2 + 2"
