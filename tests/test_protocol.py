"""serve/protocol.py: every client error code, exact PCM decoding, event splitting, and fuzzing of the
parser (random bytes / text / JSON never raise). docs/protocol.md is checked against the module, and its
client example is run against a loopback server built on ClientStream."""

from __future__ import annotations

import asyncio
import json
import re
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minivox.serve import protocol as P
from minivox.serve.protocol import (
    Action,
    AudioChunk,
    AudioFormat,
    ClientPlayback,
    ClientReady,
    ClientStream,
    ProtocolError,
)

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ITEM_TYPES = (ClientReady, Action, ClientPlayback, AudioChunk, ProtocolError)


def ready_stream(rate=16000, channels=1, encoding="pcm_s16le") -> ClientStream:
    stream = ClientStream()
    assert stream.feed(P.client_ready(AudioFormat(rate, channels, encoding))) == [
        ClientReady(1, AudioFormat(rate, channels, encoding))
    ]
    return stream


def frame(stream: ClientStream, seq: int, ms: float = 20.0, value: float = 0.25) -> bytes:
    """A valid-shaped frame of `ms` milliseconds of a constant in the stream's format."""
    fmt = stream.format
    n = round(fmt.sample_rate * ms / 1000)
    return P.client_audio_frame(seq, np.full((n, fmt.channels), value, np.float32), fmt)


def codes(items) -> list[str]:
    return [item.code for item in items if isinstance(item, ProtocolError)]


def chunks(items) -> list[AudioChunk]:
    return [item for item in items if isinstance(item, AudioChunk)]


def ready_json(**audio) -> str:
    return json.dumps({"type": "client-ready", "version": 1,
                       "audio": {"sample_rate": 16000, "channels": 1, "encoding": "pcm_s16le", **audio}})  # fmt: skip


# --- handshake ---------------------------------------------------------------------------


@pytest.mark.parametrize("rate", P.SUPPORTED_RATES)
@pytest.mark.parametrize("channels", P.SUPPORTED_CHANNELS)
@pytest.mark.parametrize("encoding", P.ENCODINGS)
def test_every_supported_format_is_accepted(rate, channels, encoding):
    stream = ready_stream(rate, channels, encoding)
    assert stream.ready and stream.format.bytes_per_frame == channels * {"pcm_s16le": 2, "float32": 4}[encoding]
    # the frame bounds are the ms bounds in samples: n samples are allowed iff 10 <= 1000 n / rate <= 200
    lo, hi = stream.format.min_frame_samples, stream.format.max_frame_samples
    assert 1000 * lo / rate >= P.MIN_FRAME_MS > 1000 * (lo - 1) / rate
    assert 1000 * hi / rate <= P.MAX_FRAME_MS < 1000 * (hi + 1) / rate


@pytest.mark.parametrize("audio", [
    {"sample_rate": 11025}, {"sample_rate": 16000.0}, {"sample_rate": "16000"}, {"sample_rate": True},
    {"sample_rate": None}, {"channels": 0}, {"channels": 3}, {"channels": True}, {"encoding": "mulaw"},
    {"encoding": "PCM_S16LE"}, {"encoding": 2},
])  # fmt: skip
def test_unsupported_audio_format_is_fatal(audio):
    stream = ClientStream()
    [err] = stream.feed(ready_json(**audio))
    assert err.code == "unsupported-audio-format" and err.fatal and err.close_code == P.CLOSE_UNSUPPORTED
    assert repr(next(iter(audio.values())))[:10] in err.message  # names what came
    assert stream.closed and stream.close_code == P.CLOSE_UNSUPPORTED and not stream.ready
    assert stream.feed(ready_json()) == [] and stream.feed(b"\0" * 324) == []  # nothing after a fatal error


@pytest.mark.parametrize("message", [
    {"type": "client-ready", "version": 1},
    {"type": "client-ready", "version": 1, "audio": [16000, 1, "pcm_s16le"]},
    {"type": "client-ready", "version": 1, "audio": "16k"},
])  # fmt: skip
def test_missing_or_malformed_audio_object_is_unsupported_format(message):
    stream = ClientStream()
    assert codes(stream.feed(json.dumps(message))) == ["unsupported-audio-format"] and stream.closed


@pytest.mark.parametrize("version", [2, 0, "1", 1.0, True, None])
def test_other_protocol_versions_are_fatal(version):
    stream = ClientStream()
    msg = {"type": "client-ready", "audio": {"sample_rate": 16000, "channels": 1, "encoding": "pcm_s16le"}}
    if version is not None:
        msg["version"] = version
    [err] = stream.feed(json.dumps(msg))
    assert (err.code, err.fatal, stream.close_code) == ("unsupported-version", True, P.CLOSE_PROTOCOL_ERROR)


def test_unknown_keys_are_ignored_and_messages_round_trip():
    stream = ClientStream()
    msg = json.loads(ready_json(future_option=3))
    msg["extra"] = {"a": 1}
    [ready] = stream.feed(json.dumps(msg))
    assert ready == ClientReady(1, AudioFormat())
    for message in (Action("reset-context"), ClientPlayback(1234), ClientPlayback(0)):
        assert stream.feed(message.to_json()) == [message]


def test_second_client_ready_is_dropped_and_the_format_stays():
    stream = ready_stream(48000, 2, "float32")
    [err] = stream.feed(P.client_ready(AudioFormat(16000, 1, "pcm_s16le")))
    assert err.code == "already-ready" and not err.fatal and not stream.closed
    assert stream.format == AudioFormat(48000, 2, "float32")


def test_audio_format_constructed_directly_is_validated():
    with pytest.raises(ValueError, match="expected sample_rate in"):
        AudioFormat(11025, 1, "pcm_s16le")
    with pytest.raises(ValueError, match="got 'mp3'"):
        AudioFormat(16000, 1, "mp3")
    as_dict = AudioFormat(np.int64(8000), 1, "float32").to_dict()
    assert as_dict == {"sample_rate": 8000, "channels": 1, "encoding": "float32"}
    assert json.loads(P.client_ready(AudioFormat(np.int64(8000)))) == {  # numpy ints become JSON ints
        "type": "client-ready", "version": 1, "audio": {"sample_rate": 8000, "channels": 1, "encoding": "pcm_s16le"}}


# --- text messages -----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["{", "", "not json", '{"type": "action",}', "NaN]"])
def test_bad_json_is_reported_and_dropped(text):
    stream = ready_stream()
    assert codes(stream.feed(text)) == ["bad-json"] and not stream.closed
    assert stream.feed(Action("reset-context").to_json()) == [Action("reset-context")]  # the stream goes on


def test_deeply_nested_json_is_bad_json_not_a_recursion_crash():
    stream = ready_stream()
    assert codes(stream.feed("[" * 8000 + "]" * 8000)) == ["bad-json"]


@pytest.mark.parametrize("message", [
    [1, 2], "client-ready", 3, None, {"no": "type"}, {"type": 5}, {"type": None},
    {"type": "action"}, {"type": "action", "action": "dance"}, {"type": "action", "action": ["reset-context"]},
    {"type": "client-playback"}, {"type": "client-playback", "played_ms": -1},
    {"type": "client-playback", "played_ms": "5"}, {"type": "client-playback", "played_ms": 1.5},
    {"type": "client-playback", "played_ms": True},
])  # fmt: skip
def test_bad_messages_are_reported_and_dropped(message):
    stream = ready_stream()
    [err] = stream.feed(json.dumps(message))
    assert err.code == "bad-message" and not err.fatal and not stream.closed


def test_unknown_message_type_is_reported_and_dropped():
    stream = ready_stream()
    [err] = stream.feed(json.dumps({"type": "client-dance", "x": 1}))
    assert err.code == "unknown-message" and "client-dance" in err.message and not stream.closed


def test_json_before_client_ready_is_dropped():
    stream = ClientStream()
    [err] = stream.feed(Action("reset-context").to_json())
    assert err.code == "bad-message" and "client-ready" in err.message and not stream.closed
    assert stream.feed(P.client_ready(AudioFormat())) == [ClientReady(1, AudioFormat())]


def test_text_size_limit_counts_utf8_bytes_and_is_fatal():
    head = ready_json()[:-1] + ', "pad": "'
    at_limit = head + " " * (P.MAX_TEXT_BYTES - len(head) - 2) + '"}'
    assert len(at_limit.encode()) == P.MAX_TEXT_BYTES
    assert ClientStream().feed(at_limit) == [ClientReady(1, AudioFormat())]
    # 16 KB - 2 characters but 3 bytes each for the padding: over the limit in bytes
    over = head + "€" * ((P.MAX_TEXT_BYTES - len(head)) // 3 + 1) + '"}'
    assert len(over) < P.MAX_TEXT_BYTES < len(over.encode())
    stream = ClientStream()
    [err] = stream.feed(over)
    assert (err.code, err.fatal, stream.close_code) == ("message-too-large", True, P.CLOSE_TOO_BIG)


def test_binary_size_limit_is_fatal():
    assert P.MAX_BINARY_BYTES == 4 + 48000 * 2 * 4 // 5  # 200 ms of 48 kHz stereo float32 + the header
    biggest = ready_stream(48000, 2, "float32")
    [chunk] = biggest.feed(frame(biggest, 0, ms=200))
    assert chunk.samples.shape == (9600, 2)  # exactly MAX_BINARY_BYTES: accepted
    stream = ready_stream()
    [err] = stream.feed(b"\0" * (P.MAX_BINARY_BYTES + 1))
    assert (err.code, err.fatal, stream.close_code) == ("message-too-large", True, P.CLOSE_TOO_BIG)


# --- binary frames -----------------------------------------------------------------------


def test_audio_before_ready_is_dropped_not_fatal():
    stream = ClientStream()
    [err] = stream.feed(struct.pack("<I", 0) + b"\0" * 640)
    assert err.code == "audio-before-ready" and not err.fatal and not stream.closed
    stream.feed(P.client_ready(AudioFormat()))
    [chunk] = stream.feed(frame(stream, 0))  # seq 0 is still expected: the early frame was not counted
    assert chunk.seq == 0 and chunk.gap_filled == 0


def test_wire_layout_by_hand():
    """The header is uint32 little-endian, samples int16 LE / 32768, channels interleaved (L R L R)."""
    stream = ready_stream(16000, 2)
    left, right = [16384, -32768, 1] * 54, [-1, 32767, 0] * 54  # 162 samples = 10.125 ms
    payload = struct.pack(f"<{2 * 162}h", *[v for pair in zip(left, right) for v in pair])
    [chunk] = stream.feed(struct.pack("<I", 0) + payload)
    assert chunk.samples.dtype == np.float32 and chunk.samples.shape == (162, 2)
    np.testing.assert_array_equal(chunk.samples[:3], [[0.5, -1 / 32768], [-1.0, 32767 / 32768], [1 / 32768, 0.0]])
    [err, chunk] = stream.feed((7).to_bytes(4, "little") + payload)
    assert err.code == "sequence-gap" and chunk.seq == 7 and chunk.gap_filled == 6 * 162


@pytest.mark.parametrize("channels", [1, 2])
def test_pcm_s16le_decodes_exactly_and_round_trips(channels):
    rng = np.random.default_rng(0)
    stream = ready_stream(44100, channels, "pcm_s16le")
    ints = rng.integers(-32768, 32768, size=(882, channels))
    ints[:4] = [[-32768], [32767], [0], [-1]]
    exact = (ints / 32768).astype(np.float32)  # every k / 32768 is exact in float32
    [chunk] = stream.feed(P.client_audio_frame(0, exact, stream.format))
    np.testing.assert_array_equal(chunk.samples, exact)
    assert chunk.samples.flags.writeable  # consumers may process in place


@pytest.mark.parametrize("channels", [1, 2])
def test_float32_decodes_exactly_and_clips_out_of_range(channels):
    rng = np.random.default_rng(1)
    stream = ready_stream(48000, channels, "float32")
    x = rng.uniform(-1, 1, size=(960, channels)).astype(np.float32)
    [chunk] = stream.feed(P.client_audio_frame(0, x, stream.format))
    np.testing.assert_array_equal(chunk.samples, x)
    loud = x * 3
    [chunk] = stream.feed(P.client_audio_frame(1, loud, stream.format))
    np.testing.assert_array_equal(chunk.samples, np.clip(loud, -1, 1))


def test_stereo_is_kept_as_two_columns():
    stream = ready_stream(16000, 2, "float32")
    left = np.linspace(-1, 1, 320, dtype=np.float32)
    x = np.stack([left, -0.5 * left], axis=1)  # [S, 2]
    [chunk] = stream.feed(P.client_audio_frame(0, x, stream.format))
    assert chunk.samples.shape == (320, 2)
    np.testing.assert_array_equal(chunk.samples[:, 0], left)
    np.testing.assert_array_equal(chunk.samples[:, 1], -0.5 * left)


@pytest.mark.parametrize("fmt, payload_bytes", [
    (AudioFormat(16000, 1, "pcm_s16le"), 641), (AudioFormat(16000, 2, "pcm_s16le"), 642),
    (AudioFormat(16000, 1, "float32"), 1282), (AudioFormat(16000, 2, "float32"), 1284),
])  # fmt: skip
def test_frames_of_partial_samples_are_bad_frames(fmt, payload_bytes):
    stream = ready_stream(fmt.sample_rate, fmt.channels, fmt.encoding)
    [err] = stream.feed(struct.pack("<I", 0) + b"\0" * payload_bytes)
    assert err.code == "bad-frame" and str(payload_bytes) in err.message and not err.fatal


@pytest.mark.parametrize("data", [b"", b"\0", b"\0\0\0"])
def test_frames_shorter_than_the_header_are_bad_frames(data):
    assert codes(ready_stream().feed(data)) == ["bad-frame"]


def test_float32_nan_or_inf_is_a_bad_frame():
    stream = ready_stream(16000, 1, "float32")
    for bad in (np.nan, np.inf, -np.inf):
        x = np.zeros(160, np.float32)
        x[7] = bad
        payload = x.astype("<f4").tobytes()  # client_audio_frame refuses NaN, so build it by hand
        assert codes(stream.feed(struct.pack("<I", 0) + payload)) == ["bad-frame"]


@pytest.mark.parametrize("rate", [16000, 22050, 44100])
def test_frame_duration_bounds(rate):
    stream = ready_stream(rate)
    lo, hi = stream.format.min_frame_samples, stream.format.max_frame_samples
    seq = 0
    for n, ok in [(lo - 1, False), (lo, True), (hi, True), (hi + 1, False), (0, False)]:
        items = stream.feed(P.client_audio_frame(seq, np.zeros(n, np.float32), stream.format))
        if ok:
            assert [len(c.samples) for c in chunks(items)] == [n] and not codes(items)
            seq += 1
        else:
            assert codes(items) == ["frame-duration"] and f"got {n} samples" in items[0].message
    assert (lo, hi) == {16000: (160, 3200), 22050: (221, 4410), 44100: (441, 8820)}[rate]


# --- sequence numbers --------------------------------------------------------------------


def test_gap_is_filled_with_silence_of_the_missing_frames_length():
    stream = ready_stream(16000)
    stream.feed(frame(stream, 0))
    items = stream.feed(frame(stream, 4, ms=30))  # frames 1, 2, 3 missing; estimated at 30 ms each
    assert codes(items) == ["sequence-gap"] and "90.0 ms" in items[0].message and not items[0].fatal
    [chunk] = chunks(items)
    assert chunk.seq == 4 and chunk.gap_filled == 3 * 480 and chunk.samples.shape == (4 * 480, 1)
    assert not chunk.samples[:1440].any() and (chunk.samples[1440:] == 0.25).all()
    assert stream.samples_received == 320 + 4 * 480


def test_gap_longer_than_the_limit_is_reported_but_not_filled():
    stream = ready_stream(16000)
    stream.feed(frame(stream, 0))
    limit_frames = P.MAX_GAP_MS // 20  # 100 missing 20 ms frames = 2000 ms: still filled
    [chunk] = chunks(stream.feed(frame(stream, 1 + limit_frames)))
    assert chunk.gap_filled == limit_frames * 320
    items = stream.feed(frame(stream, chunk.seq + limit_frames + 2))
    assert codes(items) == ["sequence-gap"] and "not filled" in items[0].message
    assert chunks(items)[0].gap_filled == 0 and len(chunks(items)[0].samples) == 320
    items = stream.feed(frame(stream, P.MAX_SEQ))  # the largest seq: reported, nothing allocated
    assert chunks(items)[0].gap_filled == 0


def test_first_frame_must_be_seq_zero_else_a_gap():
    stream = ready_stream(8000)
    [err, chunk] = stream.feed(frame(stream, 2, ms=10))
    assert err.code == "sequence-gap" and chunk.gap_filled == 2 * 80


@pytest.mark.parametrize("seq", [0, 1, 2])
def test_repeated_or_older_seq_is_dropped(seq):
    stream = ready_stream()
    for s in range(3):
        stream.feed(frame(stream, s))
    [err] = stream.feed(frame(stream, seq, value=0.5))
    assert err.code == "sequence-duplicate" and not err.fatal and not stream.closed
    [chunk] = stream.feed(frame(stream, 3))
    assert chunk.gap_filled == 0 and stream.samples_received == 4 * 320


def test_a_rejected_frame_leaves_its_time_to_be_filled():
    """A frame dropped for its duration does not consume its seq: a retransmission is taken, and if
    none comes, the next frame fills the rejected one's time with silence."""
    stream = ready_stream()
    stream.feed(frame(stream, 0))
    assert codes(stream.feed(frame(stream, 1, ms=5))) == ["frame-duration"]
    [chunk] = stream.feed(frame(stream, 1))  # the retransmission is not a duplicate
    assert chunk.gap_filled == 0
    assert codes(stream.feed(frame(stream, 2, ms=300))) == ["frame-duration"]
    [err, chunk] = stream.feed(frame(stream, 3))
    assert err.code == "sequence-gap" and chunk.gap_filled == 320


@FUZZ
@given(steps=st.lists(st.integers(-3, 4), max_size=40), ms=st.sampled_from([10, 20, 40]))
def test_timeline_stays_whole_across_gaps_and_duplicates(steps, ms):
    """Property: however seqs jump (gaps below the limit) or repeat, the accepted samples cover frames
    0..last exactly: (last + 1) frames of audio, own samples in seq order."""
    stream = ready_stream(16000)
    seq, n = 0, 16 * ms
    got = []
    for step in steps:
        seq = max(0, seq + step)
        for item in stream.feed(frame(stream, seq, ms=ms, value=(seq % 100 + 1) / 128)):
            assert isinstance(item, (AudioChunk, ProtocolError))
            if isinstance(item, AudioChunk):
                got.append(item)
    if got:
        assert sum(len(c.samples) for c in got) == (got[-1].seq + 1) * n == stream.samples_received
        assert [c.seq for c in got] == sorted({c.seq for c in got})
        for c in got:
            assert (c.samples[c.gap_filled :] == (c.seq % 100 + 1) / 128).all() and not c.samples[: c.gap_filled].any()


# --- error accounting --------------------------------------------------------------------


def test_too_many_rejected_messages_in_a_row_close_the_connection():
    stream = ready_stream()
    for i in range(P.MAX_CONSECUTIVE_ERRORS - 1):
        assert codes(stream.feed(b"\0")) == ["bad-frame"]
    stream.feed(frame(stream, 0))  # an accepted frame resets the count
    for i in range(P.MAX_CONSECUTIVE_ERRORS - 1):
        stream.feed("{")
    items = stream.feed(b"\0")
    assert codes(items) == ["bad-frame", "too-many-errors"] and items[-1].fatal
    assert stream.closed and stream.close_code == P.CLOSE_PROTOCOL_ERROR
    assert stream.error_counts["bad-json"] == P.MAX_CONSECUTIVE_ERRORS - 1
    assert stream.error_counts["bad-frame"] == P.MAX_CONSECUTIVE_ERRORS
    assert stream.error_counts["too-many-errors"] == 1


def test_protocol_error_defaults_come_from_the_table():
    for code, spec in P.ERRORS.items():
        err = ProtocolError(code, "m")
        assert err.fatal == spec.fatal and err.close_code == (spec.close_code if spec.fatal else None)
    forced = ProtocolError("internal", "the model crashed", True)  # the server may make any error fatal
    assert forced.fatal and forced.close_code == P.CLOSE_INTERNAL_ERROR
    assert ProtocolError("llm-timeout", "m", False).event() == {"type": "error", "code": "llm-timeout",
                                                                "message": "m", "fatal": False}  # fmt: skip
    assert P.event(**forced.event()) == forced.event_messages()
    assert json.loads(forced.event_messages()[0]) == forced.event()
    with pytest.raises(ValueError, match="expected an error code"):
        ProtocolError("oops", "m")


def test_non_message_types_are_errors_not_exceptions():
    stream = ready_stream()
    assert codes(stream.feed(12)) == ["bad-message"]  # type: ignore[arg-type]
    [chunk] = stream.feed(bytearray(frame(stream, 0)))
    [chunk] = stream.feed(memoryview(frame(stream, 1)))
    assert chunk.seq == 1


# --- server -> client --------------------------------------------------------------------


def test_event_serialises_and_refuses_unknown_types():
    [text] = P.event("user-transcription", text="hello", final=True, speaker=None, eou_prob=0.75, turn_id=2)
    assert json.loads(text) == {"type": "user-transcription", "text": "hello", "final": True, "speaker": None,
                                "eou_prob": 0.75, "turn_id": 2}  # fmt: skip
    assert P.parse_server_message(text) == json.loads(text)
    with pytest.raises(ValueError, match="expected an event type"):
        P.event("bot-dance", text="x")
    with pytest.raises(ValueError, match="no NaN"):
        P.event("metrics", turn_id=1, voice_to_voice_ms=float("nan"))
    assert json.loads(P.event("metrics", asr_ms=np.float32(1.5), turn_id=np.int64(3))[0])["turn_id"] == 3


def test_event_splits_long_text_into_parts():
    words = " ".join(f"w{i}" for i in range(2000))  # ~11000 characters
    texts = P.event("bot-llm-text", text=words, turn_id=5)
    events = [json.loads(t) for t in texts]
    assert len(events) == len(P.split_text(words)) >= -(-len(words) // P.MAX_EVENT_TEXT) > 1
    assert "".join(e["text"] for e in events) == words
    assert [(e["part"], e["parts"]) for e in events] == [(i, len(events)) for i in range(len(events))]
    assert all(e["type"] == "bot-llm-text" and e["turn_id"] == 5 and len(e["text"]) <= P.MAX_EVENT_TEXT for e in events)
    assert all(e["text"].endswith(" ") for e in events[:-1])  # cut between words
    [short] = P.event("bot-llm-text", text="x" * P.MAX_EVENT_TEXT, turn_id=5)
    assert "part" not in json.loads(short)
    with pytest.raises(ValueError, match="part"):
        P.event("bot-transcription", text="x" * 5000, part=1)


@FUZZ
@given(text=st.text(max_size=600), limit=st.integers(1, 80))
def test_split_text_property(text, limit):
    pieces = P.split_text(text, limit)
    assert "".join(pieces) == text and all(len(p) <= limit for p in pieces)
    assert all(len(p) >= limit // 2 for p in pieces[:-1])  # no tiny pieces in the middle


@FUZZ
@given(n=st.integers(0, 5000), rate=st.sampled_from(P.SUPPORTED_RATES), max_ms=st.integers(1, 200),
       channels=st.sampled_from([None, 1, 2]), pad=st.booleans())  # fmt: skip
def test_split_audio_chunk_bounds(n, rate, max_ms, channels, pad):
    audio = np.arange(n, dtype=np.float32) if channels is None else np.ones((n, channels), np.float32)
    pieces = P.split_audio(audio, rate, max_ms=max_ms, pad_last=pad)
    step = rate * max_ms // 1000
    assert all(1000 * len(p) / rate <= max_ms for p in pieces)
    assert all(len(p) == step for p in pieces[:-1]) and all(p.shape[1:] == audio.shape[1:] for p in pieces)
    joined = np.concatenate(pieces) if pieces else audio[:0]
    np.testing.assert_array_equal(joined[:n], audio)
    assert len(joined) == (len(pieces) * step if pad else n)


def test_split_audio_rejects_bad_arguments():
    with pytest.raises(ValueError, match="sample_rate"):
        P.split_audio(np.zeros(10), 0)
    with pytest.raises(ValueError, match="max_ms"):
        P.split_audio(np.zeros(10), 8000, max_ms=0)


def test_server_audio_frames_round_trip_and_clip():
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 1 / 32768], np.float32)
    pcm = P.pcm16_bytes(x)
    assert struct.unpack("<8h", pcm) == (0, 16384, -16384, 32767, -32768, 32767, -32768, 1)
    seq, payload = P.parse_server_message(P.audio_frame(2**32 - 1, pcm))
    assert seq == 2**32 - 1 and payload == pcm
    np.testing.assert_array_equal(P.pcm16_samples(payload), np.clip(x, -1, 32767 / 32768))
    for bad in (lambda: P.audio_frame(-1, pcm), lambda: P.audio_frame(2**32, pcm), lambda: P.audio_frame(0, b"\0"),
                lambda: P.pcm16_bytes(np.zeros((4, 2))), lambda: P.pcm16_bytes(np.array([np.nan])),
                lambda: P.parse_server_message(b"\0\0\0"),
                lambda: P.parse_server_message('{"type": "hello"}')):  # fmt: skip
        with pytest.raises(ValueError):
            bad()


def test_client_audio_frame_checks_the_shape():
    with pytest.raises(ValueError, match=r"expected samples \[S, 2\]"):
        P.client_audio_frame(0, np.zeros(320, np.float32), AudioFormat(16000, 2))
    with pytest.raises(ValueError, match=r"\[S, 1\]"):
        P.client_audio_frame(0, np.zeros((320, 2), np.float32), AudioFormat(16000, 1))


# --- fuzzing: the parser never raises ----------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from([*P.CLIENT_TYPES, "other"]) | json_values},
    optional={"version": st.sampled_from([1, 2]) | json_values, "action": st.sampled_from(P.ACTIONS) | json_values,
              "played_ms": st.integers(-5, 10**6) | json_values, "audio": json_values},
)  # fmt: skip
ready_dicts = st.fixed_dictionaries(
    {"type": st.just("client-ready"), "version": st.sampled_from([1, 1, 1, 2, "1", None, True]),
     "audio": st.fixed_dictionaries({}, optional={
         "sample_rate": st.sampled_from(P.SUPPORTED_RATES) | st.integers() | st.floats() | st.text(max_size=5),
         "channels": st.integers(-1, 3) | st.booleans() | st.none(),
         "encoding": st.sampled_from([*P.ENCODINGS, "pcm_s24le", ""]) | st.text(max_size=5)}) | json_values},
)  # fmt: skip


def check_items(stream: ClientStream, items) -> None:
    assert isinstance(items, list) and all(isinstance(item, ITEM_TYPES) for item in items), items
    assert "internal" not in codes(items), items  # the safety net of feed() is never needed
    for item in items:
        if isinstance(item, ProtocolError):
            assert item.code in P.ERRORS and len(item.message) < 400
            if item.fatal:
                assert stream.closed and stream.close_code == item.close_code
        if isinstance(item, AudioChunk):
            s = item.samples
            assert s.dtype == np.float32 and s.ndim == 2 and s.shape[1] == stream.format.channels
            assert np.isfinite(s).all() and np.abs(s).max(initial=0) <= 1


@FUZZ
@given(data=st.binary(max_size=3000), fmt=st.sampled_from([None, AudioFormat(8000), AudioFormat(8000, 2, "float32")]))
def test_fuzz_random_bytes(data, fmt):
    stream = ClientStream() if fmt is None else ready_stream(fmt.sample_rate, fmt.channels, fmt.encoding)
    check_items(stream, stream.feed(data))


@FUZZ
@given(text=st.text(max_size=300))
def test_fuzz_random_text(text):
    for stream in (ClientStream(), ready_stream()):
        items = stream.feed(text)
        check_items(stream, items)
        assert len(items) == 1


@FUZZ
@given(value=json_values | message_like)
def test_fuzz_random_json(value):
    for stream in (ClientStream(), ready_stream()):
        check_items(stream, stream.feed(json.dumps(value)))


@FUZZ
@given(msg=ready_dicts)
def test_fuzz_client_ready(msg):
    stream = ClientStream()
    items = stream.feed(json.dumps(msg))
    check_items(stream, items)
    [item] = items
    audio = msg["audio"] if isinstance(msg["audio"], dict) else {}
    valid = (type(msg["version"]) is int and msg["version"] == 1 and isinstance(msg["audio"], dict)
             and type(audio.get("sample_rate")) is int and audio["sample_rate"] in P.SUPPORTED_RATES
             and type(audio.get("channels")) is int and audio["channels"] in (1, 2)
             and audio.get("encoding") in P.ENCODINGS)  # fmt: skip
    assert isinstance(item, ClientReady) == valid == stream.ready
    if not valid:
        assert item.code in ("unsupported-version", "unsupported-audio-format") and stream.closed


@FUZZ
@given(messages=st.lists(st.binary(max_size=400) | st.text(max_size=50) | json_values.map(json.dumps)
                         | message_like.map(json.dumps), max_size=30))  # fmt: skip
def test_fuzz_a_session_of_random_messages(messages):
    """Random messages in sequence on one connection: only known items, accepted seqs strictly rise,
    and once closed nothing more comes out."""
    stream = ready_stream(8000, 1, "pcm_s16le")
    last = -1
    for message in messages:
        was_closed = stream.closed
        items = stream.feed(message)
        check_items(stream, items)
        if was_closed:
            assert items == []
        for chunk in chunks(items):
            assert chunk.seq > last
            last = chunk.seq


# --- docs/protocol.md --------------------------------------------------------------------

DOC = ROOT / "docs" / "protocol.md"


def test_docs_error_table_matches_the_module():
    rows = re.findall(r"^\| `([a-z-]+)` \| (yes|no)\b[^|]* \| (\d{4}|-) \|", DOC.read_text(), flags=re.M)
    table = {code: (fatal == "yes", close) for code, fatal, close in rows}
    assert set(table) == set(P.ERRORS), set(table) ^ set(P.ERRORS)
    for code, spec in P.ERRORS.items():
        assert table[code] == (spec.fatal, str(spec.close_code) if spec.fatal else "-"), code


def test_docs_name_every_event_and_limit():
    text = DOC.read_text()
    for name in (*P.EVENT_TYPES, *P.CLIENT_TYPES, *P.ACTIONS):
        assert f"`{name}`" in text, name
    for number in (P.MAX_TEXT_BYTES, P.MAX_BINARY_BYTES, P.MAX_EVENT_TEXT, P.MAX_GAP_MS, P.MAX_CONSECUTIVE_ERRORS):
        assert str(number) in text, number


async def fake_agent(ws):
    """A stand-in for the agent built on ClientStream: after the fourth frame it 'replies' with one
    150 ms audio reply in two frames; every error goes back as an event."""
    stream, out_seq = ClientStream(), 0
    ws.accepted = []
    async for message in ws:
        for item in stream.feed(message):
            if isinstance(item, ProtocolError):
                ws.accepted.append(item.code)
                for text in item.event_messages():
                    await ws.send(text)
            elif isinstance(item, ClientReady):
                out = {"sample_rate": 22050, "channels": 1, "encoding": "pcm_s16le"}
                for text in P.event("bot-ready", session_id="t", version=1, audio_out=out):
                    await ws.send(text)
            elif isinstance(item, AudioChunk):
                ws.accepted.append(item.seq)
                if item.seq == 3:
                    await ws.send(P.event("bot-tts-started", turn_id=1)[0])
                    reply = np.linspace(-0.5, 0.5, 3307, dtype=np.float32)  # 150 ms at 22.05 kHz
                    for piece in P.split_audio(reply, 22050, max_ms=100):
                        await ws.send(P.audio_frame(out_seq, P.pcm16_bytes(piece)))
                        out_seq += 1
                    await ws.send(P.event("bot-tts-stopped", turn_id=1)[0])
        if stream.closed:
            await ws.close(stream.close_code)


def test_docs_client_example_runs_against_a_loopback_server(tmp_path, monkeypatch):
    from websockets.asyncio.server import serve

    code = re.search(r"```python\n(# minimal client.*?)```", DOC.read_text(), flags=re.S).group(1)
    with wave.open(str(tmp_path / "question.wav"), "wb") as w:  # 0.25 s of a tone, 16 kHz mono PCM16
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(P.pcm16_bytes(0.3 * np.sin(np.arange(4000) * 0.05).astype(np.float32)))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_example"}
    exec(compile(code, "docs/protocol.md", "exec"), namespace)
    connections = []

    async def handler(ws):
        connections.append(ws)
        await fake_agent(ws)

    async def run():
        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            await asyncio.wait_for(namespace["main"]("question.wav", f"ws://127.0.0.1:{port}/ws"), 10)

    asyncio.run(run())
    assert connections[0].accepted[:4] == [0, 1, 2, 3]  # the example's frames pass validation
    with wave.open("reply.wav") as w:  # what the example saved: the fake agent's reply
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (22050, 1, 3307)
        expected = P.pcm16_bytes(np.linspace(-0.5, 0.5, 3307, dtype=np.float32))
        assert w.readframes(3307) == expected
