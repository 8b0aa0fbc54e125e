"""The voice agent's asyncio server: one port for the web page, a health check and the WebSocket.

    python -m minivox.serve server --config configs/serve.toml [--host H] [--port P] [--llm-base-url URL]

    GET /           the browser client (serve/web/)
    GET /healthz    {"status": "ok", "sessions": n, "max_sessions": m}
    WS  /ws         one agent session per connection (docs/protocol.md)

The shell is thin: it accepts connections, enforces the session limit, and hands each socket
to a `serve.pipeline.Session`. SIGTERM/SIGINT shut down gracefully: new connections are
refused, each session is told (`error` code `server-shutdown`) and ended, logs are flushed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from minivox.serve import protocol as proto
from minivox.serve.audio_log import AudioLogger
from minivox.serve.pipeline import ModelPaths, Models, PipelineConfig, Session

log = logging.getLogger("minivox.serve")

WEB_DIR = Path(__file__).resolve().parent / "web"


@dataclass
class ServerConfig:
    """configs/serve.toml: where to listen, how many sessions, which models, per-session behaviour."""

    host: str = "127.0.0.1"
    port: int = 8765
    max_sessions: int = 4  # concurrent connections; one more is refused with `server-busy`
    threads: int = 1  # torch threads per model worker (each model has its own worker thread)
    log_audio: str = ""  # a directory for per-session input/output WAV + events JSONL ("" = off)
    models: ModelPaths = field(default_factory=ModelPaths)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


class AgentServer:
    """Serves sessions over `models` until `stop()`.

        server = AgentServer(models, config)
        await server.start()          # binds; server.port is the real port (config.port 0 = any free one)
        await server.wait_closed()    # until stop() (e.g. from a signal handler)
    """

    def __init__(self, models: Models, config: ServerConfig, audio_log: AudioLogger | None = None):
        self.models, self.cfg, self.audio_log = models, config, audio_log
        self.sessions: set[Session] = set()
        self.server = None
        self.port = config.port
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        from websockets.asyncio.server import serve

        self.server = await serve(self._handle, self.cfg.host, self.cfg.port, process_request=self._http,
                                  max_size=4 * proto.MAX_BINARY_BYTES,  # larger ones get our own error first
                                  ping_interval=20, ping_timeout=20, compression=None)
        self.port = next(iter(self.server.sockets)).getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}/"

    async def wait_closed(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        """Graceful shutdown: refuse new connections, tell and end every session, close."""
        if self.server is None or self._stopped.is_set():
            return
        self.server.close(close_connections=False)
        await asyncio.gather(*(s.shutdown() for s in list(self.sessions)), return_exceptions=True)
        try:
            await asyncio.wait_for(self.server.wait_closed(), timeout=5)
        except asyncio.TimeoutError:
            log.warning("connections still open after 5 s; closing anyway")
        self._stopped.set()

    # --- HTTP: the page and the health check ---------------------------------------

    def _http(self, connection, request):
        """Answer plain HTTP requests; return None to let /ws upgrade to a WebSocket."""
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        path = request.path.split("?", 1)[0]
        if path == "/ws":
            return None
        if path == "/healthz":
            body = json.dumps({"status": "ok", "sessions": len(self.sessions), "max_sessions": self.cfg.max_sessions})
            return Response(200, "OK", Headers([("Content-Type", "application/json")]), body.encode())
        name = "index.html" if path in ("/", "") else path.lstrip("/")
        file = (WEB_DIR / name).resolve()
        if WEB_DIR.resolve() not in file.parents or not file.is_file():
            return connection.respond(404, f"no such page: {path}\n")
        kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if kind in ("text/javascript", "application/javascript", "text/html", "text/css"):
            kind += "; charset=utf-8"
        return Response(200, "OK", Headers([("Content-Type", kind), ("Cache-Control", "no-cache")]), file.read_bytes())

    # --- WebSocket sessions ----------------------------------------------------------

    async def _handle(self, ws) -> None:
        if len(self.sessions) >= self.cfg.max_sessions:
            busy = proto.ProtocolError("server-busy", f"the server already has {self.cfg.max_sessions} sessions "
                                       "(its maximum); try again later")
            for message in busy.event_messages():
                await ws.send(message)
            await ws.close(busy.close_code, "server busy")
            return
        session = Session(self.models, self.cfg.pipeline, ws.send, log=self.audio_log)
        self.sessions.add(session)
        log.info("session %s opened from %s (%d open)", session.id, ws.remote_address, len(self.sessions))
        try:
            code = await session.run(_messages(ws))
        finally:
            self.sessions.discard(session)
        log.info("session %s closed (%d)", session.id, code)
        await ws.close(code)


async def _messages(ws) -> AsyncIterator[str | bytes]:
    """The socket's messages until it closes (cleanly or not)."""
    from websockets.exceptions import ConnectionClosed

    try:
        async for message in ws:
            yield message
    except ConnectionClosed:
        return


def load_server_config(path: str | None, overrides: list[str]) -> ServerConfig:
    from minivox.config import load_config

    return load_config(ServerConfig, path, overrides)


async def serve_until_signal(models: Models, config: ServerConfig, on_ready: Callable[[AgentServer], None] | None = None,
                             audio_log: AudioLogger | None = None) -> None:
    """Run the server until SIGTERM or SIGINT."""
    server = AgentServer(models, config, audio_log)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.stop()))
    if on_ready:
        on_ready(server)
    await server.wait_closed()
