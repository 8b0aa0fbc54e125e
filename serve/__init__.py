"""The voice agent server: sans-I/O protocol, per-session pipeline, asyncio WebSocket shell."""
