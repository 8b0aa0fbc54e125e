"""The voice agent's WebSocket protocol, sans-I/O: validate what a client sends, serialise what the server sends.

No sockets and no asyncio here: str/bytes go in, dataclasses and str/bytes come out, so every rule
is tested without a network (the design of python-websockets itself). docs/protocol.md describes
the same rules for client authors and is the contract.

    stream = ClientStream()                          # one per connection
    for item in stream.feed(message):                # message: str (text frame) or bytes (binary frame)
        ...  # ClientReady | Action | ClientPlayback | AudioChunk | ProtocolError
    if stream.closed:                                # after a fatal error
        close the socket with stream.close_code

    for text in event("user-transcription", text="hi", final=True, speaker=None, eou_prob=0.9, turn_id=3):
        send(text)                                   # a long "text" comes as several events (part/parts)
    for pcm in split_audio(reply, 22050, max_ms=100):
        send(audio_frame(seq, pcm16_bytes(pcm)))     # seq counts the session's audio frames from 0

Wire format. Text frames are JSON objects with a "type". Binary frames, both ways, are a 4-byte
little-endian uint32 sequence number followed by PCM: client -> server in the format declared by
client-ready (pcm_s16le or float32, channels interleaved), server -> client PCM16 mono at the
`audio_out` rate announced in `bot-ready`.

Shapes: S samples per channel, C channels (1 or 2). Audio arrays are float32 in [-1, 1].
"""

from __future__ import annotations

import json
import numbers
from collections import Counter
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

PROTOCOL_VERSION = 1
SUPPORTED_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)  # Hz; what the resampler converts exactly
SUPPORTED_CHANNELS = (1, 2)  # mono, or stereo interleaved (the server averages it to mono)
ENCODINGS = ("pcm_s16le", "float32")
SAMPLE_BYTES = {"pcm_s16le": 2, "float32": 4}  # bytes per sample of one channel

HEADER_BYTES = 4  # uint32 little-endian sequence number in front of every binary frame
MAX_SEQ = 2**32 - 1  # sequence numbers do not wrap: 2^32 frames of 10 ms are 497 days
MIN_FRAME_MS, MAX_FRAME_MS = 10, 200  # client audio frame duration bounds (inclusive)
MAX_TEXT_BYTES = 16 * 1024  # largest client JSON message accepted (UTF-8 bytes)
MAX_BINARY_BYTES = HEADER_BYTES + 48000 * 2 * 4 * MAX_FRAME_MS // 1000  # 76804: 200 ms of 48 kHz stereo float32
MAX_EVENT_TEXT = 2000  # characters; server events with a longer "text" are split into several events
MAX_GAP_MS = 2000  # a sequence gap longer than this is reported but not filled with silence
MAX_CONSECUTIVE_ERRORS = 50  # rejected client messages in a row before the connection is closed (1 s of 20 ms frames)
MAX_SHOWN = 60  # characters of an offending client value quoted in an error message

# WebSocket close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the server shuts down
CLOSE_PROTOCOL_ERROR = 1002  # the client broke the protocol
CLOSE_UNSUPPORTED = 1003  # the client's audio format is not supported
CLOSE_TOO_BIG = 1009  # a message over the size limits
CLOSE_INTERNAL_ERROR = 1011  # the server failed
CLOSE_TRY_AGAIN = 1013  # the server is full or the client could not keep up; try again later

ACTIONS = ("reset-context",)  # {"type": "action", "action": ...}: forget the conversation so far
CLIENT_TYPES = ("client-ready", "action", "client-playback")
EVENT_TYPES = (
    "bot-ready", "user-started-speaking", "user-stopped-speaking", "user-transcription",
    "bot-llm-started", "bot-llm-text", "bot-llm-stopped", "bot-tts-started", "bot-tts-stopped",
    "bot-transcription", "interruption", "metrics", "error",
)  # fmt: skip


# ---------------------------------------------------------------------------------------
# Errors: stable codes, each with whether it ends the session and the close code if it does.
# ---------------------------------------------------------------------------------------


class ErrorSpec(NamedTuple):
    fatal: bool  # does this error end the session (by default)?
    close_code: int  # the WebSocket close code when it does
    meaning: str  # one line for docs/protocol.md and for readers


_CLIENT, _SERVER = CLOSE_PROTOCOL_ERROR, CLOSE_INTERNAL_ERROR  # close codes of errors made fatal by hand

ERRORS: dict[str, ErrorSpec] = {
    # The client's input (found by ClientStream).
    "unsupported-version": ErrorSpec(True, CLOSE_PROTOCOL_ERROR, "client-ready asked for a version other than 1"),
    "unsupported-audio-format": ErrorSpec(True, CLOSE_UNSUPPORTED, "client-ready declared an unsupported format"),
    "message-too-large": ErrorSpec(True, CLOSE_TOO_BIG, "a text or binary message over the size limits"),
    "too-many-errors": ErrorSpec(True, CLOSE_PROTOCOL_ERROR, f"{MAX_CONSECUTIVE_ERRORS} messages in a row rejected"),
    "bad-json": ErrorSpec(False, _CLIENT, "a text message that is not JSON; dropped"),
    "bad-message": ErrorSpec(False, _CLIENT, "ill-typed or missing fields, or sent before client-ready; dropped"),
    "unknown-message": ErrorSpec(False, _CLIENT, "a JSON message of an unknown type; dropped"),
    "already-ready": ErrorSpec(False, _CLIENT, "a second client-ready; dropped (the format cannot change)"),
    "audio-before-ready": ErrorSpec(False, _CLIENT, "a binary frame before client-ready; dropped"),
    "bad-frame": ErrorSpec(False, _CLIENT, "no 4-byte header, partial samples, or float32 NaN/inf; dropped"),
    "frame-duration": ErrorSpec(False, _CLIENT, "a frame shorter than 10 ms or longer than 200 ms; dropped"),
    "sequence-gap": ErrorSpec(False, _CLIENT, "frames missing before this one; their time filled with silence"),
    "sequence-duplicate": ErrorSpec(False, _CLIENT, "a repeated or older sequence number; dropped"),
    # The server's side (raised by the pipeline and the server).
    "server-busy": ErrorSpec(True, CLOSE_TRY_AGAIN, "the server has its maximum number of sessions"),
    "backpressure": ErrorSpec(True, CLOSE_TRY_AGAIN, "the client did not read the server's messages fast enough"),
    "server-shutdown": ErrorSpec(True, CLOSE_GOING_AWAY, "the server is shutting down"),
    "asr-failed": ErrorSpec(False, _SERVER, "speech recognition failed on this audio"),
    "llm-timeout": ErrorSpec(False, _SERVER, "the language model gave no (complete) answer in time; the turn ends"),
    "llm-failed": ErrorSpec(False, _SERVER, "the language model failed; the turn ends"),
    "tts-failed": ErrorSpec(False, _SERVER, "speech synthesis failed or timed out; the turn ends"),
    "internal": ErrorSpec(False, _SERVER, "an unexpected server error; the turn ends"),
}


class ProtocolError(Exception):
    """One problem, reported to the client as an `error` event.

    Args:
        code: a key of ERRORS (stable; clients may switch on it).
        message: for humans; says what was expected and what came.
        fatal: whether the session ends; None takes the code's default from ERRORS.
    Attributes:
        close_code: the WebSocket close code if fatal, else None.
    """

    def __init__(self, code: str, message: str, fatal: bool | None = None):
        if code not in ERRORS:
            raise ValueError(f"expected an error code in ERRORS, got {code!r}")
        super().__init__(f"{code}: {message}")
        spec = ERRORS[code]
        self.code, self.message = code, message
        self.fatal = spec.fatal if fatal is None else bool(fatal)
        self.close_code: int | None = spec.close_code if self.fatal else None

    def event(self) -> dict:
        """The error event as a dict: {"type": "error", "code", "message", "fatal"} (`event(**e.event())` sends it)."""
        return {"type": "error", "code": self.code, "message": self.message, "fatal": self.fatal}

    def event_messages(self) -> list[str]:
        """The error event as JSON text message(s), ready to send."""
        return event(**self.event())

    def __repr__(self) -> str:
        return f"ProtocolError({self.code!r}, {self.message!r}, fatal={self.fatal})"


def _show(value: Any) -> str:
    """A client's value quoted in an error message, cut to MAX_SHOWN characters (it may be 16 KB)."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _is_int(value: Any) -> bool:
    """True for integers, False for bool (JSON true is not 1 here) and for 16000.0."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------
# The audio format and PCM encoding.
# ---------------------------------------------------------------------------------------


def _format_problem(sample_rate: Any, channels: Any, encoding: Any) -> str | None:
    """What is wrong with a declared audio format (expected vs got), or None if it is supported."""
    if not _is_int(sample_rate) or sample_rate not in SUPPORTED_RATES:
        return f"expected sample_rate in {SUPPORTED_RATES} (Hz), got {_show(sample_rate)}"
    if not _is_int(channels) or channels not in SUPPORTED_CHANNELS:
        return f"expected channels in {SUPPORTED_CHANNELS}, got {_show(channels)}"
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        return f"expected encoding in {ENCODINGS}, got {_show(encoding)}"
    return None


@dataclass(frozen=True)
class AudioFormat:
    """A PCM stream's format: the client's input as declared in client-ready, or the server's output."""

    sample_rate: int = 16000  # Hz, one of SUPPORTED_RATES
    channels: int = 1  # 1 or 2; stereo samples are interleaved (L R L R ...)
    encoding: str = "pcm_s16le"  # "pcm_s16le" (int16 / 32768) or "float32" (IEEE 754, little-endian)

    def __post_init__(self):
        problem = _format_problem(self.sample_rate, self.channels, self.encoding)
        if problem:
            raise ValueError(f"unsupported audio format: {problem}")
        object.__setattr__(self, "sample_rate", int(self.sample_rate))  # numpy ints -> int, for JSON
        object.__setattr__(self, "channels", int(self.channels))

    @classmethod
    def parse(cls, obj: Any) -> AudioFormat:
        """The format from client-ready's "audio" object; anything else raises ProtocolError
        `unsupported-audio-format`. Unknown keys are ignored (newer clients may send more)."""
        if not isinstance(obj, dict):
            raise ProtocolError("unsupported-audio-format",
                                'expected "audio": {"sample_rate": ..., "channels": ..., "encoding": ...}, '
                                f"got {_show(obj)}")  # fmt: skip
        fields = obj.get("sample_rate"), obj.get("channels"), obj.get("encoding")
        problem = _format_problem(*fields)
        if problem:
            raise ProtocolError("unsupported-audio-format", problem)
        return cls(*fields)

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample of one channel."""
        return SAMPLE_BYTES[self.encoding]

    @property
    def bytes_per_frame(self) -> int:
        """Bytes of one sample frame (one sample of every channel)."""
        return self.channels * self.sample_bytes

    @property
    def min_frame_samples(self) -> int:
        """Fewest samples (per channel) in a client frame: MIN_FRAME_MS, rounded up (221 at 22.05 kHz)."""
        return -(-self.sample_rate * MIN_FRAME_MS // 1000)

    @property
    def max_frame_samples(self) -> int:
        """Most samples (per channel) in a client frame: MAX_FRAME_MS, rounded down."""
        return self.sample_rate * MAX_FRAME_MS // 1000

    def to_dict(self) -> dict:
        return {"sample_rate": self.sample_rate, "channels": self.channels, "encoding": self.encoding}


def _float_to_int16(samples: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] -> int16: x * 32768 rounded to nearest, clipped to [-32768, 32767] (so 1.0 -> 32767)."""
    scaled = np.rint(np.clip(samples, -1.0, 1.0) * 32768.0)
    return np.clip(scaled, -32768, 32767).astype("<i2")


def decode_pcm(payload: bytes, fmt: AudioFormat) -> np.ndarray:
    """PCM bytes in `fmt` -> float32 [S, C]. pcm_s16le is scaled by 1/32768; float32 is returned as sent
    (NaN and out-of-range values included: ClientStream checks them). len(payload) must be whole frames."""
    if len(payload) % fmt.bytes_per_frame:
        raise ValueError(f"expected a multiple of {fmt.bytes_per_frame} bytes, got {len(payload)}")
    if fmt.encoding == "pcm_s16le":
        flat = np.frombuffer(payload, dtype="<i2").astype(np.float32) / np.float32(32768.0)  # [S * C]
    else:
        flat = np.frombuffer(payload, dtype="<f4").astype(np.float32)  # [S * C], a writable copy
    return flat.reshape(-1, fmt.channels)  # interleaved [S * C] -> [S, C]


def encode_pcm(samples: np.ndarray, fmt: AudioFormat) -> bytes:
    """float32 [S] (mono) or [S, C] -> PCM bytes in `fmt`, channels interleaved. pcm_s16le clips to
    [-1, 1] first; float32 is written as is. Raises ValueError for a wrong shape or NaN/inf."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1 and fmt.channels == 1:
        x = x[:, None]  # [S] -> [S, 1]
    if x.ndim != 2 or x.shape[1] != fmt.channels:
        raise ValueError(f"expected samples [S, {fmt.channels}] (or [S] for mono), got shape {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError("expected finite samples, got NaN or inf")
    if fmt.encoding == "pcm_s16le":
        return _float_to_int16(x).tobytes()  # row-major [S, C] is interleaved
    return x.astype("<f4").tobytes()


def pcm16_bytes(audio: np.ndarray) -> bytes:
    """Mono float32 [S] in [-1, 1] -> int16 little-endian bytes (clipped); the server's audio payload."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples [S], got shape {tuple(x.shape)}")
    return encode_pcm(x, AudioFormat(16000, 1, "pcm_s16le"))  # the rate does not enter the bytes


def pcm16_samples(payload: bytes) -> np.ndarray:
    """int16 little-endian bytes -> float32 [S] (/ 32768); the inverse of pcm16_bytes, for clients."""
    if len(payload) % 2:
        raise ValueError(f"expected an even number of PCM16 bytes, got {len(payload)}")
    return np.frombuffer(payload, dtype="<i2").astype(np.float32) / np.float32(32768.0)


def split_audio(audio: np.ndarray, sample_rate: int, max_ms: int = 100, pad_last: bool = False) -> list[np.ndarray]:
    """Cut [S] or [S, C] audio along S into pieces of at most `max_ms` (floor(sample_rate * max_ms / 1000)
    samples each; only the last may be shorter). `pad_last` zero-pads the last piece to full length, for a
    client streaming a file (a last frame under 10 ms would be rejected). Pieces are views unless padded."""
    if not _is_int(sample_rate) or sample_rate <= 0:
        raise ValueError(f"expected a positive integer sample_rate (Hz), got {sample_rate!r}")
    step = sample_rate * max_ms // 1000  # samples per piece
    if step < 1:
        raise ValueError(f"expected max_ms to hold at least one sample at {sample_rate} Hz, got {max_ms!r}")
    pieces = [audio[i : i + step] for i in range(0, len(audio), step)]
    if pad_last and pieces and len(pieces[-1]) < step:
        last = pieces[-1]
        padded = np.zeros((step, *last.shape[1:]), dtype=last.dtype)
        padded[: len(last)] = last
        pieces[-1] = padded
    return pieces


# ---------------------------------------------------------------------------------------
# Client -> server messages and the per-connection validator.
# ---------------------------------------------------------------------------------------


def _dumps(obj: dict) -> str:
    """Compact JSON; numpy scalars become Python numbers; NaN/inf are an error (browsers cannot parse them)."""

    def plain(value):
        if isinstance(value, np.generic):
            return value.item()
        raise TypeError(f"{type(value).__name__} is not JSON")

    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=plain)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"expected JSON-serialisable fields in {obj.get('type')!r} (no NaN/inf), got: {exc}") from None


@dataclass(frozen=True)
class ClientReady:
    """{"type": "client-ready", "version": 1, "audio": {...}}: the first message; declares the input format."""

    version: int
    audio: AudioFormat

    def to_json(self) -> str:
        return _dumps({"type": "client-ready", "version": self.version, "audio": self.audio.to_dict()})


@dataclass(frozen=True)
class Action:
    """{"type": "action", "action": "reset-context"}: forget the conversation so far."""

    action: str

    def to_json(self) -> str:
        return _dumps({"type": "action", "action": self.action})


@dataclass(frozen=True)
class ClientPlayback:
    """{"type": "client-playback", "played_ms": n}: ms of server audio the client has played so far (cumulative)."""

    played_ms: int

    def to_json(self) -> str:
        return _dumps({"type": "client-playback", "played_ms": self.played_ms})


@dataclass(eq=False)
class AudioChunk:
    """One accepted binary frame.

    samples: float32 [S, C] in [-1, 1] at the declared rate. When frames were missing before this one,
        its first `gap_filled` rows are the silence standing in for them, followed by the frame's own
        samples, so the stream's timeline stays whole; the consumer just appends `samples`.
    """

    seq: int
    samples: np.ndarray  # [S, C] float32
    gap_filled: int = 0  # leading rows of `samples` that are inserted silence (samples per channel)

    def __repr__(self) -> str:  # not the samples themselves
        shape = tuple(self.samples.shape)
        return f"AudioChunk(seq={self.seq}, samples=<{self.samples.dtype} {shape}>, gap_filled={self.gap_filled})"


def client_ready(fmt: AudioFormat) -> str:
    """The client-ready JSON a client sends first."""
    return ClientReady(PROTOCOL_VERSION, fmt).to_json()


def client_audio_frame(seq: int, samples: np.ndarray, fmt: AudioFormat) -> bytes:
    """A client's binary frame: uint32 LE seq + float32 [S] or [S, C] encoded in `fmt` (no duration check)."""
    return _header(seq) + encode_pcm(samples, fmt)


def _header(seq: int) -> bytes:
    if not _is_int(seq) or not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"expected a sequence number in [0, {MAX_SEQ}], got {seq!r}")
    return int(seq).to_bytes(HEADER_BYTES, "little")


class ClientStream:
    """Per-connection sans-I/O parser and validator of everything a client sends.

    The server calls `feed(message)` for every received WebSocket message (str = text frame,
    bytes = binary frame) and gets a list of items: parsed messages (ClientReady, Action,
    ClientPlayback, AudioChunk) and ProtocolError instances to send as `error` events. feed never
    raises. After a fatal error `closed` is True, `close_code` says why, and further input returns [].

    Rules (docs/protocol.md has the client's view):
    - Size first: a text message over MAX_TEXT_BYTES or a binary one over MAX_BINARY_BYTES is fatal.
    - client-ready first. A bad version or audio format is fatal (the session cannot start); a
      second client-ready, other JSON before it, and audio before it are dropped with an error.
    - A binary frame is a uint32 LE seq + PCM in the declared encoding: whole sample frames,
      10-200 ms, float32 finite (clipped to [-1, 1]); otherwise dropped (bad-frame, frame-duration).
    - seq starts at 0 and goes up by 1. seq <= the last accepted one is dropped (sequence-duplicate).
      A jump over k missing frames is filled with k times this frame's length of silence and
      reported (sequence-gap); a gap over MAX_GAP_MS is reported but not filled. A rejected frame
      leaves its seq unused, so its time is filled like a lost frame's when the next one arrives.
    - Non-fatal errors only drop the message, but MAX_CONSECUTIVE_ERRORS rejected messages in a row
      end the connection (too-many-errors): a broken client is told at once, not flooded with errors.
    """

    def __init__(self):
        self.format: AudioFormat | None = None  # the declared input format, once ready
        self.ready = False  # client-ready accepted
        self.closed = False  # a fatal error happened; the server should close the socket
        self.close_code: int | None = None
        self.last_seq = -1  # seq of the last accepted audio frame
        self.samples_received = 0  # samples per channel accepted so far, inserted silence included
        self.error_counts: Counter[str] = Counter()  # code -> how many times reported
        self.consecutive_errors = 0  # rejected messages since the last accepted one

    def feed(self, message: str | bytes) -> list:
        """Parse one WebSocket message. Returns [ClientReady | Action | ClientPlayback | AudioChunk | ProtocolError]."""
        if self.closed:
            return []
        try:
            if isinstance(message, str):
                items = self._text(message)
            elif isinstance(message, (bytes, bytearray, memoryview)):
                items = self._binary(bytes(message))
            else:
                items = [ProtocolError("bad-message", f"expected a str or bytes message, got {type(message).__name__}")]
        except ProtocolError as err:
            items = [err]
        except Exception as exc:  # a bug here must not kill the server; tests assert this never happens
            items = [ProtocolError("internal", f"the message could not be parsed: {exc!r}", fatal=True)]
        return self._account(items)

    def _account(self, items: list) -> list:
        """Count errors, close after a fatal one or too many rejected messages in a row."""
        errors = [item for item in items if isinstance(item, ProtocolError)]
        self.error_counts.update(err.code for err in errors)
        if len(errors) < len(items):  # something was accepted (a gap report comes with its frame)
            self.consecutive_errors = 0
        elif errors and not any(err.fatal for err in errors):
            self.consecutive_errors += 1
            if self.consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
                err = ProtocolError("too-many-errors", f"{self.consecutive_errors} client messages in a row were "
                                    f"rejected (the last: {errors[-1].code}); closing")  # fmt: skip
                self.error_counts[err.code] += 1
                items = [*items, err]
        fatal = next((item for item in items if isinstance(item, ProtocolError) and item.fatal), None)
        if fatal is not None:
            self.closed, self.close_code = True, fatal.close_code
        return items

    # --- text frames -------------------------------------------------------------------

    def _text(self, text: str) -> list:
        size = len(text.encode("utf-8", "surrogatepass")) if len(text) <= MAX_TEXT_BYTES else len(text)
        if size > MAX_TEXT_BYTES:  # (a str longer than the limit in characters is longer in bytes too)
            return [ProtocolError("message-too-large", f"expected a text message of at most {MAX_TEXT_BYTES} "
                                  f"bytes, got {size}")]  # fmt: skip
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested thousands deep
            return [ProtocolError("bad-json", f"expected a JSON object, got invalid JSON ({type(exc).__name__}: "
                                  f"{str(exc)[:MAX_SHOWN]})")]  # fmt: skip
        if not isinstance(msg, dict):
            return [ProtocolError("bad-message", f"expected a JSON object, got {type(msg).__name__} {_show(msg)}")]
        kind = msg.get("type")
        if not isinstance(kind, str):
            return [ProtocolError("bad-message", f'expected a "type" string, got {_show(kind)}')]
        if kind not in CLIENT_TYPES:
            return [ProtocolError("unknown-message", f"expected a type in {CLIENT_TYPES}, got {_show(kind)}")]
        if kind == "client-ready":
            return [self._ready(msg)]
        if not self.ready:
            return [ProtocolError("bad-message", f"expected client-ready as the first message, got {kind!r}")]
        if kind == "action":
            action = msg.get("action")
            if not isinstance(action, str) or action not in ACTIONS:
                return [ProtocolError("bad-message", f"expected an action in {ACTIONS}, got {_show(action)}")]
            return [Action(action)]
        played = msg.get("played_ms")  # kind == "client-playback"
        if not _is_int(played) or played < 0:
            return [ProtocolError("bad-message", f"expected played_ms a non-negative integer, got {_show(played)}")]
        return [ClientPlayback(int(played))]

    def _ready(self, msg: dict) -> ClientReady | ProtocolError:
        if self.ready:
            return ProtocolError("already-ready", "client-ready was already accepted; the audio format cannot "
                                 "change within a connection (reconnect to change it)")  # fmt: skip
        version = msg.get("version")
        if not _is_int(version) or version != PROTOCOL_VERSION:
            return ProtocolError("unsupported-version", f"expected version {PROTOCOL_VERSION}, got {_show(version)}")
        fmt = AudioFormat.parse(msg.get("audio"))  # raises ProtocolError unsupported-audio-format
        self.format, self.ready = fmt, True
        return ClientReady(PROTOCOL_VERSION, fmt)

    # --- binary frames -----------------------------------------------------------------

    def _binary(self, data: bytes) -> list:
        if len(data) > MAX_BINARY_BYTES:
            return [ProtocolError("message-too-large", f"expected a binary message of at most {MAX_BINARY_BYTES} "
                                  f"bytes, got {len(data)}")]  # fmt: skip
        if not self.ready:
            return [ProtocolError("audio-before-ready", "expected client-ready before any audio; frame dropped")]
        if len(data) < HEADER_BYTES:
            return [ProtocolError("bad-frame", f"expected a {HEADER_BYTES}-byte sequence number + PCM, "
                                  f"got {len(data)} bytes")]  # fmt: skip
        seq = int.from_bytes(data[:HEADER_BYTES], "little")
        if seq <= self.last_seq:
            return [ProtocolError("sequence-duplicate", f"expected seq > {self.last_seq}, got {seq}; frame dropped")]
        fmt, payload = self.format, data[HEADER_BYTES:]
        if len(payload) % fmt.bytes_per_frame:
            expected = f"whole sample frames of {fmt.bytes_per_frame} bytes ({fmt.channels} x {fmt.encoding})"
            return [ProtocolError("bad-frame", f"expected {expected}, got {len(payload)} bytes; frame {seq} dropped")]
        n = len(payload) // fmt.bytes_per_frame  # samples per channel
        lo, hi = fmt.min_frame_samples, fmt.max_frame_samples
        if not lo <= n <= hi:
            expected = f"{MIN_FRAME_MS}-{MAX_FRAME_MS} ms ({lo}-{hi} samples at {fmt.sample_rate} Hz)"
            got = f"{n} samples ({1000 * n / fmt.sample_rate:.1f} ms)"
            return [ProtocolError("frame-duration", f"expected {expected}, got {got}; frame {seq} dropped")]
        samples = decode_pcm(payload, fmt)  # [S, C]
        if fmt.encoding == "float32":
            if not np.isfinite(samples).all():
                return [ProtocolError("bad-frame", "expected finite float32 samples, got NaN or inf; "
                                      f"frame {seq} dropped")]
            np.clip(samples, -1.0, 1.0, out=samples)

        items: list = []
        missing = seq - self.last_seq - 1  # frames lost before this one
        gap = 0
        if missing > 0:
            gap_samples = missing * n  # estimated from this frame's length
            gap_ms = 1000 * gap_samples / fmt.sample_rate
            if gap_samples * 1000 <= MAX_GAP_MS * fmt.sample_rate:
                gap = gap_samples
                samples = np.concatenate([np.zeros((gap, fmt.channels), np.float32), samples])  # [gap + S, C]
                note = f"filled with {gap_ms:.1f} ms of silence"
            else:
                note = f"not filled (over {MAX_GAP_MS} ms)"
            items.append(ProtocolError("sequence-gap", f"expected seq {self.last_seq + 1}, got {seq}: {missing} "
                                       f"frame(s) missing, {note}"))  # fmt: skip
        self.last_seq = seq
        self.samples_received += len(samples)
        items.append(AudioChunk(seq, samples, gap))
        return items


# ---------------------------------------------------------------------------------------
# Server -> client messages.
# ---------------------------------------------------------------------------------------


def split_text(text: str, limit: int = MAX_EVENT_TEXT) -> list[str]:
    """Cut `text` into pieces of at most `limit` characters whose concatenation is `text`. A cut goes
    after the last whitespace of a piece when that keeps at least half of it, else mid-word."""
    if limit < 1:
        raise ValueError(f"expected limit >= 1, got {limit}")
    pieces, start = [], 0
    while len(text) - start > limit:
        end = start + limit
        space = max(text.rfind(c, start, end) for c in " \n\t")  # index of the last whitespace, or -1
        if space >= start and space + 1 - start >= limit // 2:
            end = space + 1  # keep the space with the piece before it (never an empty piece)
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


def event(type: str, **fields) -> list[str]:  # noqa: A002 (the field is called "type" on the wire)
    """Serialise one server event to JSON text message(s).

    A str "text" field longer than MAX_EVENT_TEXT characters is split across several events of the
    same type, each with the other fields and "part": i (from 0), "parts": n; the client joins the
    texts in order. Raises ValueError for a type not in EVENT_TYPES or fields that are not JSON.
    """
    if type not in EVENT_TYPES:
        raise ValueError(f"expected an event type in EVENT_TYPES, got {type!r}")
    text = fields.get("text")
    if not isinstance(text, str) or len(text) <= MAX_EVENT_TEXT:
        return [_dumps({"type": type, **fields})]
    if "part" in fields or "parts" in fields:
        raise ValueError(f"expected no 'part'/'parts' fields in an event to split, got {sorted(fields)}")
    pieces = split_text(text)
    return [_dumps({"type": type, **fields, "text": piece, "part": i, "parts": len(pieces)})
            for i, piece in enumerate(pieces)]  # fmt: skip


def audio_frame(seq: int, pcm16: bytes) -> bytes:
    """A server binary frame: uint32 LE seq + PCM16 mono payload."""
    if len(pcm16) % 2:
        raise ValueError(f"expected an even number of PCM16 bytes, got {len(pcm16)}")
    return _header(seq) + bytes(pcm16)


def parse_server_message(message: str | bytes) -> dict | tuple[int, bytes]:
    """For clients and tests: a text message -> its event dict; a binary one -> (seq, PCM16 payload).
    Raises ValueError for anything the server would not send."""
    if isinstance(message, str):
        msg = json.loads(message)  # json.JSONDecodeError is a ValueError
        if not isinstance(msg, dict) or msg.get("type") not in EVENT_TYPES:
            raise ValueError(f"expected an event object with a type in EVENT_TYPES, got {_show(msg)}")
        return msg
    data = bytes(message)
    if len(data) < HEADER_BYTES or (len(data) - HEADER_BYTES) % 2:
        raise ValueError(f"expected a {HEADER_BYTES}-byte seq + PCM16 (even length), got {len(data)} bytes")
    return int.from_bytes(data[:HEADER_BYTES], "little"), data[HEADER_BYTES:]
