"""The browser client serve/web/ in headless Chromium, with a WAV file as the microphone.

Three layers, each against something independent:
- resampler.js (both worklets' resampler) against minivox.audio.resample, the Python
  implementation of the same windowed-sinc design, under node: equal to float32 rounding, for
  every rate pair a browser meets, in random chunks; plus the anti-aliasing property itself;
- the page against a scripted server (Playwright's WebSocket routing, no minivox server): the
  frames it sends (client-ready first, seq from 0 without gaps, 20 ms of 16 kHz PCM16 that
  correlates with the spoken WAV), mute, reset-context, a split event joined, an error shown,
  an `interruption` emptying the playback queue at once, and Stop/Start opening a new session;
- the page against the real agent (`python -m minivox.serve demo`: every bundled model, the
  streaming ASR included): a spoken question (espeak-ng) gives a final user transcription and the
  start of bot audio playback.

Needs Debian's `chromium`, node and `npm ci --prefix tests/browser` (playwright-core); a missing
one is a failure that says how to install it, never a skip.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from minivox.audio import read_wav, resample, write_wav

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "serve" / "web"
DRIVER = ROOT / "tests" / "browser"
FAKE_MIC_RATE = 48000  # Hz: Chromium's fake capture device plays the WAV at its own rate; 48 kHz is its usual
QUESTION = "what time is it"
MIC_RATE = 16000  # what the page sends
FRAME_SAMPLES = MIC_RATE * 20 // 1000  # 320: 20 ms frames
SERVER_START_TIMEOUT_S = 120  # model loading on a busy 2-core machine
TURN_TIMEOUT_S = 90  # page load + 4 s of speech + the agent's reply


# ---------------------------------------------------------------------------------------------
# Tools: a missing one fails with the command that installs it.
# ---------------------------------------------------------------------------------------------


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found: install Node.js >= 18 (Debian: apt-get install -y nodejs npm), "
                    "then run `npm ci --prefix tests/browser`")
    return node


def _chromium() -> str:
    path = os.environ.get("MINIVOX_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None or not os.access(path, os.X_OK):
        pytest.fail(f"chromium not found{f' at {path}' if path else ''}: install it with `apt-get install -y chromium` "
                    "(Debian), or set MINIVOX_CHROMIUM=/path/to/chromium")
    if not (DRIVER / "node_modules" / "playwright-core").is_dir():
        pytest.fail("playwright-core is not installed: run `npm ci --prefix tests/browser`")
    return path


def _run_driver(args: list[str], timeout_s: float) -> dict:
    """Run tests/browser/run.mjs; returns its JSON report (its exit code is in report["ok"])."""
    cmd = [_node(), str(DRIVER / "run.mjs"), *args, "--chromium", _chromium()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 30, cwd=ROOT)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"the browser driver printed no report (exit {proc.returncode}):\n"
                    f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}")


def _summary(report: dict) -> str:
    """The report without the bulky parts, for assertion messages."""
    keep = {k: v for k, v in report.items() if k not in ("received", "atFlush", "afterFlush")}
    if "stats" in keep:
        keep["stats"] = {**keep["stats"], "events": [e.get("type") for e in keep["stats"].get("events", [])]}
    return json.dumps(keep, indent=1)[:6000]


# ---------------------------------------------------------------------------------------------
# The fake microphone: a spoken question.
# ---------------------------------------------------------------------------------------------


def _spoken_question(path: Path, silence_before_s: float, silence_after_s: float) -> Path:
    """espeak-ng saying QUESTION, as FAKE_MIC_RATE mono PCM16 with silence around it."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng not found: install it with `apt-get install -y espeak-ng`")
    raw = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), QUESTION], check=True, capture_output=True)
    speech, rate = read_wav(raw, mono=True)
    speech = resample(speech, rate, FAKE_MIC_RATE).astype(np.float32)
    before = np.zeros(round(silence_before_s * FAKE_MIC_RATE), np.float32)
    after = np.zeros(round(silence_after_s * FAKE_MIC_RATE), np.float32)
    write_wav(path, np.concatenate([before, speech, after]), FAKE_MIC_RATE)
    return path


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory) -> Path:
    """The question with 1 s of silence before and 2 s after (the agent's turn end needs the silence)."""
    return _spoken_question(tmp_path_factory.mktemp("mic") / "question.wav", 1.0, 2.0)


@pytest.fixture(scope="module")
def short_question_wav(tmp_path_factory) -> Path:
    return _spoken_question(tmp_path_factory.mktemp("mic") / "short.wav", 0.3, 0.5)


# ---------------------------------------------------------------------------------------------
# 1. resampler.js vs minivox.audio.resample (node, no browser)
# ---------------------------------------------------------------------------------------------


def _js_resample(cases: list[dict]) -> list[dict]:
    """Feed each case's chunks to one resampler.js Resampler, then flush; returns [{up, down, W, output}].
    Needs only node (no browser, no node_modules)."""
    proc = subprocess.run([_node(), str(DRIVER / "resample.mjs"), str(WEB / "resampler.js")],
                          input=json.dumps(cases), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# The rate pairs a browser meets: AudioContext rates -> 16 kHz (capture), 22.05 kHz -> context rates (playback).
RATE_PAIRS = [(48000, 16000), (44100, 16000), (96000, 16000), (16000, 16000),
              (22050, 48000), (22050, 44100), (22050, 96000), (24000, 48000)]


def test_resampler_js_equals_minivox_audio():
    rng = np.random.default_rng(0)
    cases = []
    for in_rate, out_rate in RATE_PAIRS:
        n = int(rng.integers(1500, 5000))
        signal = (0.3 * rng.standard_normal(n)).astype(np.float32)
        cuts = np.sort(rng.choice(np.arange(1, n), size=9, replace=False))  # 10 random chunks
        chunks = np.diff(np.r_[0, cuts, n]).tolist()
        cases.append({"inRate": in_rate, "outRate": out_rate, "signal": signal.tolist(), "chunks": chunks})
    for case, got in zip(cases, _js_resample(cases)):
        want = resample(np.asarray(case["signal"], np.float64), case["inRate"], case["outRate"])
        out = np.asarray(got["output"])
        pair = f"{case['inRate']} -> {case['outRate']}"
        assert out.shape == want.shape, (pair, out.shape, want.shape)
        np.testing.assert_allclose(out, want, atol=2e-7, err_msg=pair)  # float32 output rounding


def test_resampler_js_low_passes_before_decimating():
    """48 kHz -> 16 kHz: a 1 kHz tone passes at unit gain; 9, 12 and 20 kHz tones (which sample dropping
    would fold to 7, 4 and 4 kHz) come out at least 70 dB down."""
    in_rate, out_rate, seconds = 48000, 16000, 0.5
    t = np.arange(int(in_rate * seconds)) / in_rate
    freqs = [1000, 9000, 12000, 20000]
    cases = [{"inRate": in_rate, "outRate": out_rate, "signal": (0.5 * np.sin(2 * np.pi * f * t)).tolist(),
              "chunks": [128] * (len(t) // 128) + [len(t) % 128]} for f in freqs]  # render quanta
    outs = [np.asarray(r["output"]) for r in _js_resample(cases)]
    steady = slice(400, -400)  # away from the zero padding at both ends
    rms = [float(np.sqrt(np.mean(o[steady] ** 2))) for o in outs]
    assert abs(rms[0] / (0.5 / np.sqrt(2)) - 1) < 1e-3, rms[0]
    for f, r in zip(freqs[1:], rms[1:]):
        assert 20 * np.log10(r / (0.5 / np.sqrt(2))) < -70, (f, r)


# ---------------------------------------------------------------------------------------------
# 2. The page against a scripted server
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mock_report(short_question_wav) -> dict:
    report = _run_driver(["mock", "--web", str(WEB), "--wav", str(short_question_wav), "--timeout-ms", "30000"], 30)
    assert report["ok"], _summary(report)
    assert not report["pageErrors"], report["pageErrors"]
    return report


def test_page_sends_client_ready_then_seq_numbered_16khz_frames(mock_report, short_question_wav):
    received = mock_report["received"]
    assert received["json"][0] == {"type": "client-ready", "version": 1, "frameIndex": 0,
                                   "audio": {"sample_rate": MIC_RATE, "channels": 1, "encoding": "pcm_s16le"}}
    assert received["frameBytes"] == [4 + 2 * FRAME_SAMPLES]  # uint32 seq + 20 ms of PCM16, every frame
    seqs = received["seqs"]
    assert seqs == list(range(len(seqs))), seqs[:20]  # from 0, no gap even across the mute
    # What was heard is the question: the frames before the mute, against the WAV at 16 kHz. Chromium's
    # echo cancellation, noise suppression and gain control run on the fake device too, so the match is
    # a correlation, not equality (0.83 when written; every third sample of the 44.1 kHz headless context,
    # i.e. a wrong rate, gave 0.13). Aliasing itself is the resampler tests' business above.
    pcm = np.frombuffer(base64.b64decode(received["pcmBase64"]), "<i2")
    assert len(pcm) == len(seqs) * FRAME_SAMPLES, (len(pcm), len(seqs))
    heard = pcm[:mock_report["mute"]["framesAtMute"] * FRAME_SAMPLES].astype(np.float64) / 32768
    wav, rate = read_wav(short_question_wav, mono=True)
    ref = resample(wav.astype(np.float64), rate, MIC_RATE)
    n_fft = 1 << (len(heard) + len(ref)).bit_length()  # cross-correlation by FFT, no circular wrap
    xcorr = np.fft.irfft(np.fft.rfft(heard, n_fft) * np.conj(np.fft.rfft(ref, n_fft)), n_fft)  # [n_fft], lag k at k mod n_fft
    lag = int(np.argmax(xcorr))
    lag = lag - n_fft if lag > n_fft // 2 else lag  # heard[k] ~ ref[k - lag]
    a, b = (ref[-lag:], heard) if lag < 0 else (ref, heard[lag:])
    n = min(len(a), len(b))
    assert n > 0.8 * len(ref), (n, len(ref), lag)
    ncc = a[:n] @ b[:n] / (np.linalg.norm(a[:n]) * np.linalg.norm(b[:n]))
    assert ncc > 0.6, ncc


def test_page_mute_stops_audio_and_keeps_the_socket(mock_report):
    mute = mock_report["mute"]
    assert mute["pressed"] == "true" and mute["state"] == "ready", mute
    assert mute["framesAfter400ms"] == mute["framesAtMute"], mute
    assert len(mock_report["received"]["seqs"]) > mute["framesAtMute"] + 5  # unmuted: frames flow again


def test_page_reset_context_and_events(mock_report):
    json_sent = [{k: v for k, v in m.items() if k != "frameIndex"} for m in mock_report["received"]["json"]]
    assert {"type": "action", "action": "reset-context"} in json_sent
    stats = mock_report["stats"]
    assert stats["finalTranscripts"] == 1 and stats["interimTranscripts"] == 1, stats
    assert "You:what time is it" in mock_report["transcript"]  # the two parts joined; interim replaced
    assert not any("what tim" == line.removeprefix("You:") for line in mock_report["transcript"])
    assert "minivox:It is noon." in mock_report["transcript"]
    assert "the language model gave no first words within 5 s [llm-timeout]" in mock_report["errorsShown"]


def test_page_interruption_flushes_playback_at_once(mock_report):
    """3 s of reply audio arrive at once; 300 ms into playback the server interrupts: the queue empties
    within a few render quanta and nothing more plays."""
    at, after = mock_report["atFlush"], mock_report["afterFlush"]
    interruption = next(e for e in at["events"] if e["type"] == "interruption")
    flush_ms = at["flushedAt"] - interruption["receivedAt"]
    assert 0 <= flush_ms < 50, flush_ms  # a worklet message round trip; 128 samples are 2.7 ms at 48 kHz
    assert at["botAudioFramesReceived"] == 30 and at["playbackStarts"] == 1 and not at["botAudioPlaying"], at
    assert 200 <= at["playedMs"] < 1000, at["playedMs"]  # played ~300 ms of the 3 s, then stopped
    assert after["playedMs"] == at["playedMs"] and after["botAudioFramesPlayed"] == at["botAudioFramesPlayed"]
    assert after["playbackStarts"] == 1 and not after["botAudioPlaying"], after
    playback_reports = [m for m in mock_report["received"]["json"] if m["type"] == "client-playback"]
    assert playback_reports and playback_reports[-1]["played_ms"] == at["playedMs"], playback_reports


def test_page_stop_and_start_again_opens_a_new_session(mock_report):
    assert "disconnected (code 1000" in mock_report["stopped"]["status"], mock_report["stopped"]
    second = mock_report["second"]
    assert second["connections"] == 2, second["connections"]
    assert second["json"][0]["type"] == "client-ready", second["json"]
    assert second["seqs"] and second["seqs"] == list(range(len(second["seqs"]))), second["seqs"][:10]


# ---------------------------------------------------------------------------------------------
# 3. The page against the real agent
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def agent(tmp_path):
    """The agent (`python -m minivox.serve demo`, all bundled models) on a free port; yields its base
    URL once /healthz answers."""
    _chromium()  # fail before loading models when the browser is missing
    port = _free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "minivox.serve", "demo", "--host", "127.0.0.1",
                                 "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"/healthz did not answer within {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url, log
    finally:
        proc.terminate()  # SIGTERM: the server's graceful shutdown
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_page_talks_to_the_agent(agent, question_wav):
    url, log = agent
    report = _run_driver(["turn", "--url", url, "--wav", str(question_wav), "--timeout-ms", str(TURN_TIMEOUT_S * 1000)],
                         TURN_TIMEOUT_S)
    assert report["ok"], _summary(report) + "\nserver log:\n" + log.read_text()[-3000:]
    stats = report["stats"]
    assert not report["pageErrors"], report["pageErrors"]
    types = [e["type"] for e in stats["events"]]
    assert types[0] == "bot-ready", types
    final = [e for e in stats["events"] if e["type"] == "user-transcription" and e.get("final")]
    assert final and stats["finalTranscripts"] >= 1, types
    assert stats["botAudioFramesReceived"] >= 1 and stats["playbackStarts"] >= 1 and stats["botAudioFramesPlayed"] >= 1
    assert not [e for e in stats["errors"] if e["fatal"]], stats["errors"]
