"""Tests for minivox.audio: WAV I/O, resampling, log-mel features, streaming features.

Each fast path is held against something independent: the stdlib `wave` module and scipy for WAV
files, a per-output-sample numpy loop and scipy.signal.resample_poly for the resampler, a per-frame
numpy DFT loop with a mel matrix written from the formulas for LogMel, and the offline frontend
for the streaming paths (hypothesis over random chunkings).
"""

from __future__ import annotations

import math
import struct
import wave
from dataclasses import asdict

import numpy as np
import pytest
import scipy.io.wavfile
import scipy.signal
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minivox.audio import (
    ASR_FEATURES, KAISER_BETA, TTS_FEATURES, FeatureConfig, LogMel, Resampler, StreamingFeatureBufferer,
    hz_to_mel, mel_filterbank, mel_to_hz, read_wav, resample, speech_bounds, write_wav,
)

RATES = [8000, 16000, 22050, 24000, 32000, 44100, 48000]
BITS = {"pcm16": 16, "pcm24": 24, "pcm32": 32}
KSDATAFORMAT_TAIL = bytes.fromhex("000000001000800000aa00389b71")  # GUID bytes after the 2-byte format tag


def _rng(seed=0):
    return np.random.default_rng(seed)


def _chunked(signal, sizes):
    """Split signal [..., S] at the cumulative sums of sizes (clipped to S); the rest is the last chunk."""
    S, out, pos = signal.shape[-1], [], 0
    for size in sizes:
        end = min(S, pos + size)
        out.append(signal[..., pos:end])
        pos = end
    out.append(signal[..., pos:])
    return out


chunk_sizes = st.lists(st.one_of(st.sampled_from([0, 1]), st.integers(0, 700)), max_size=25)


# ---------------------------------------------------------------------------------------------
# WAV I/O
# ---------------------------------------------------------------------------------------------

def _riff(fmt_body: bytes, data: bytes, before_data: bytes = b"") -> bytes:
    """A WAV file by hand: RIFF header, 'fmt ', optional chunks, 'data' (+ pad byte)."""
    chunks = b"fmt " + struct.pack("<I", len(fmt_body)) + fmt_body + before_data
    chunks += b"data" + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1)
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("encoding", ["pcm16", "pcm24", "pcm32", "float32"])
def test_wav_round_trip(tmp_path, encoding, channels):
    audio = _rng(channels).uniform(-1, 1, size=(1001, channels)).astype(np.float32)
    audio[:4, 0] = [1.0, -1.0, 0.0, 0.5]  # full scale both ways, zero, an exact code
    audio = audio[:, 0] if channels == 1 else audio
    path = tmp_path / f"x_{encoding}.wav"
    write_wav(path, torch.from_numpy(audio) if channels == 2 else audio, 24000, encoding)  # torch or numpy
    back, sr = read_wav(path)
    assert sr == 24000 and back.dtype == np.float32 and back.shape == audio.shape, (sr, back.dtype, back.shape)
    if encoding == "float32":
        np.testing.assert_array_equal(back, audio)
        return
    lsb = 2.0 ** -(BITS[encoding] - 1)
    err = np.abs(back.astype(np.float64) - audio)
    assert err.max() <= lsb + 1e-7, err.max()  # +1.0 -> top code (1 LSB); else round to nearest
    assert np.sort(err.ravel())[-2] <= max(lsb / 2, 2.0 ** -25) + 1e-9  # only +1.0 is off by a full LSB
    write_wav(path, back, 24000, encoding)  # quantised values survive exactly
    np.testing.assert_array_equal(read_wav(path)[0], back)


def test_wav_pcm_codes_match_stdlib_wave(tmp_path):
    """Our PCM files as the stdlib reads them: exact integer codes, rate, channels, width."""
    audio = np.array([[0.0, 0.5], [-1.0, 1.0], [-0.5, 0.25], [1e-5, -1e-5]])  # [S=4, C=2]
    for encoding, bits in BITS.items():
        path = tmp_path / f"{encoding}.wav"
        write_wav(path, audio, 16000, encoding)
        with wave.open(str(path)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (16000, 2, bits // 8, 4)
            raw = w.readframes(4)
        width = bits // 8
        codes = [int.from_bytes(raw[i:i + width], "little", signed=True) for i in range(0, len(raw), width)]
        full = 2 ** (bits - 1)
        expected = [0, full // 2, -full, full - 1, -full // 2, full // 4, round(1e-5 * full), round(-1e-5 * full)]
        assert codes == expected, (encoding, codes, expected)


@pytest.mark.parametrize("bits", [16, 24, 32])
def test_read_wav_of_stdlib_wave_files(tmp_path, bits):
    codes = _rng(bits).integers(-2 ** (bits - 1), 2 ** (bits - 1), size=(50, 2))  # [S, C]
    path = tmp_path / "stdlib.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2), w.setsampwidth(bits // 8), w.setframerate(8000)
        w.writeframes(b"".join(int(c).to_bytes(bits // 8, "little", signed=True) for c in codes.ravel()))
    audio, sr = read_wav(path)
    assert sr == 8000
    np.testing.assert_allclose(audio, codes / 2.0 ** (bits - 1), rtol=1e-7, atol=0)
    mono, _ = read_wav(path, mono=True)
    np.testing.assert_allclose(mono, (codes / 2.0 ** (bits - 1)).mean(1), atol=2.0 ** -24)  # float32 average


def test_wav_against_scipy(tmp_path):
    """scipy.io.wavfile reads what we write (PCM and IEEE float), and we read what it writes."""
    audio = _rng(3).uniform(-0.9, 0.9, size=(300, 2)).astype(np.float32)
    for encoding in ["pcm16", "pcm32", "float32"]:
        write_wav(tmp_path / "ours.wav", audio, 44100, encoding)
        sr, theirs = scipy.io.wavfile.read(tmp_path / "ours.wav")
        ours, _ = read_wav(tmp_path / "ours.wav")
        scale = 1.0 if encoding == "float32" else 2.0 ** (BITS[encoding] - 1)
        assert sr == 44100
        np.testing.assert_allclose(ours, theirs / scale, rtol=1e-7)
    scipy.io.wavfile.write(tmp_path / "theirs.wav", 32000, audio)  # float32 -> WAVE_FORMAT_IEEE_FLOAT
    back, sr = read_wav(tmp_path / "theirs.wav")
    assert sr == 32000
    np.testing.assert_array_equal(back, audio)


@pytest.mark.parametrize("tag,bits,dtype", [(1, 16, "<i2"), (1, 24, None), (3, 32, "<f4")])
def test_read_extensible_format_and_skips_other_chunks(tmp_path, tag, bits, dtype):
    codes = np.array([[1, -2], [3, -4], [-8388608 if bits == 24 else -32768, 5]])  # [S=3, C=2]
    if bits == 24:
        data = b"".join(int(c).to_bytes(3, "little", signed=True) for c in codes.ravel())
        expected = codes / 2.0 ** 23
    elif tag == 3:
        expected = codes / 7.0
        data = expected.astype(dtype).tobytes()
    else:
        data, expected = codes.astype(dtype).tobytes(), codes / 2.0 ** 15
    block = 2 * bits // 8
    fmt = struct.pack("<HHIIHH", 0xFFFE, 2, 48000, 48000 * block, block, bits)
    fmt += struct.pack("<HHI", 22, bits, 0b11) + struct.pack("<H", tag) + KSDATAFORMAT_TAIL
    odd_chunk = b"LIST" + struct.pack("<I", 3) + b"abc" + b"\0"  # odd size -> pad byte
    path = tmp_path / "ext.wav"
    path.write_bytes(_riff(fmt, data, before_data=odd_chunk))
    audio, sr = read_wav(path)
    assert sr == 48000
    np.testing.assert_allclose(audio, expected, rtol=1e-6)


def _pcm16_file(tmp_path, name="ok.wav", samples=100):
    path = tmp_path / name
    write_wav(path, np.linspace(-0.5, 0.5, samples), 16000, "pcm16")
    return path


def test_wav_errors_name_file_and_problem(tmp_path):
    good = _pcm16_file(tmp_path).read_bytes()
    cases = {
        "truncated.wav": (good[:-7], "truncated"),  # data chunk cut short
        "odd_frames.wav": (_riff(good[20:36], b"\1\2\3"), "whole number"),  # 3 bytes of 2-byte frames
        "text.wav": (b"hello, I am not audio at all", "not a WAV"),
        "empty.wav": (b"", "not a WAV"),
        "no_data.wav": (b"RIFF" + struct.pack("<I", 28) + b"WAVE" + good[12:36], "'data'"),
        "short_fmt.wav": (_riff(b"\1\0\1\0", b""), "'fmt '"),
        "alaw.wav": (_riff(struct.pack("<HHIIHH", 6, 1, 8000, 8000, 1, 8), b"\0" * 4), "unsupported"),
        "pcm8.wav": (_riff(struct.pack("<HHIIHH", 1, 1, 8000, 8000, 1, 8), b"\0" * 4), "unsupported"),
        "float64.wav": (_riff(struct.pack("<HHIIHH", 3, 1, 8000, 64000, 8, 64), b"\0" * 8), "unsupported"),
        "bad_align.wav": (_riff(struct.pack("<HHIIHH", 1, 2, 8000, 32000, 2, 16), b"\0" * 4), "block_align"),
    }
    for name, (content, problem) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=problem) as info:
            read_wav(path)
        assert name in str(info.value), info.value


def test_write_wav_errors(tmp_path):
    path = tmp_path / "out.wav"
    with pytest.raises(ValueError, match="out.wav.*unsupported encoding 'mp3'"):
        write_wav(path, np.zeros(10), 16000, "mp3")
    with pytest.raises(ValueError, match=r"\[S\] or \[S, C\].*\(2, 3, 4\)"):
        write_wav(path, np.zeros((2, 3, 4)), 16000)
    with pytest.raises(ValueError, match="NaN"):
        write_wav(path, np.array([0.0, np.nan]), 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        write_wav(path, np.zeros(10), 0)
    write_wav(path, np.array([3.0, -7.0]), 16000, "pcm16")  # out of range: clipped, not wrapped
    np.testing.assert_array_equal(read_wav(path)[0], [32767 / 32768, -1.0])


# ---------------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------------

def reference_resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Slow and direct: y[n] = sum_k x[k] h(n * orig / new - k), one output sample at a time, with
    the Kaiser-windowed sinc written out here (cutoff and support taken from the module's design)."""
    design = Resampler(orig_sr, new_sr).design
    up, down = design.up, design.down
    k = np.arange(len(x))
    y = np.zeros(-(-len(x) * up // down))
    for n in range(len(y)):
        tau = (n * down - k * up) / up  # time of output n minus time of input k, in input samples
        inside = np.abs(tau) < design.half_width
        r = np.clip(tau / design.half_width, -1, 1)
        window = np.i0(KAISER_BETA * np.sqrt(1 - r ** 2)) / np.i0(KAISER_BETA)
        h = np.where(inside, design.cutoff * np.sinc(design.cutoff * tau) * window, 0.0)
        y[n] = h @ x
    return y


@pytest.mark.parametrize("orig,new", [(44100, 16000), (16000, 48000), (22050, 16000), (8000, 44100), (48000, 8000)])
def test_resample_matches_slow_reference(orig, new):
    x = _rng(orig + new).standard_normal(orig // 100)  # 10 ms
    np.testing.assert_allclose(resample(x, orig, new), reference_resample(x, orig, new), atol=1e-10)


@pytest.mark.parametrize("orig,new", [(44100, 16000), (48000, 16000), (16000, 22050), (24000, 32000)])
def test_resample_matches_scipy_with_the_same_filter(orig, new):
    """resample_poly with our prototype filter: checks the polyphase indexing, delay and length."""
    design = Resampler(orig, new).design
    c = design.taps * design.up  # prototype on the upsampled grid, centred, odd length 2c + 1
    prototype = design.kernel(torch.arange(-c, c + 1, dtype=torch.float64) / design.up).numpy()
    x = _rng(1).standard_normal((2, 3001))  # [C, S]
    theirs = scipy.signal.resample_poly(x, new, orig, axis=-1, window=prototype / design.up)  # it scales by up
    ours = resample(x, orig, new)
    assert ours.shape == theirs.shape == (2, math.ceil(3001 * new / orig)), (ours.shape, theirs.shape)
    np.testing.assert_allclose(ours, theirs, atol=1e-10)


@pytest.mark.parametrize("orig,new", [(44100, 16000), (48000, 16000), (16000, 48000), (22050, 24000)])
def test_resample_agrees_with_scipy_default_on_band_limited_signal(orig, new):
    """Peer check against scipy's own filter design (Kaiser beta 5) on a signal both pass flat."""
    t = np.arange(orig // 4) / orig  # 0.25 s
    band = min(orig, new) / 2
    rng = _rng(2)
    freqs = rng.uniform(50, 0.6 * band, size=8)
    x = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) for f in freqs) / 8 * np.hanning(len(t))
    theirs = scipy.signal.resample_poly(x, new, orig)
    ours = resample(x.astype(np.float32), orig, new)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    err_db = 20 * np.log10(np.sqrt(np.mean((ours - theirs) ** 2)) / np.sqrt(np.mean(theirs ** 2)))
    assert err_db < -55, err_db  # measured about -61 dB: scipy's beta-5 window ripples at that level


def _tone_fit(y: np.ndarray, sr: int, freq: float) -> tuple[float, float]:
    """Least-squares fit of a sinusoid at freq: (amplitude, residual rms / amplitude)."""
    t = np.arange(len(y)) / sr
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], 1)  # [S, 2]
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    amp = float(np.hypot(*coef))
    return amp, float(np.sqrt(np.mean((y - basis @ coef) ** 2)) / amp)


def test_resample_keeps_sine_frequency_and_amplitude():
    orig, new = 44100, 16000
    for freq in [1000.0, 3000.0, 0.9 * new / 2]:  # 1 kHz, and the top of the flat passband
        x = 0.5 * np.sin(2 * np.pi * freq * np.arange(orig) / orig)  # 1 s
        y = resample(torch.from_numpy(x).float(), orig, new).numpy()
        middle = y[new // 4: 3 * new // 4]  # away from the start/end transients
        amp, residual = _tone_fit(middle, new, freq)
        assert abs(20 * np.log10(amp / 0.5)) < 0.1, (freq, amp)
        assert residual < 1e-3, (freq, residual)  # a shifted frequency would leave a large residual


def _alias_level_db(x: np.ndarray, orig: int, new: int) -> float:
    """Output rms over input rms (dB) in the middle of the output, edges excluded."""
    y = resample(x, orig, new)
    middle = y[len(y) // 8: -len(y) // 8]
    return 20 * np.log10(np.sqrt(np.mean(middle ** 2)) / np.sqrt(np.mean(x ** 2)))


@pytest.mark.parametrize("orig,new", [(44100, 16000), (48000, 16000), (22050, 16000), (48000, 8000), (32000, 24000)])
def test_resample_rejects_aliases_by_60_db(orig, new):
    """Tones at or above the new Nyquist (they would fold into the band) and a sweep across them."""
    t = np.arange(orig // 2) / orig  # 0.5 s
    taper = np.hanning(len(t))  # smooth on/off: an abrupt start is broadband
    for freq in np.linspace(new / 2, 0.97 * orig / 2, 6):
        level = _alias_level_db(taper * np.sin(2 * np.pi * freq * t), orig, new)
        assert level < -60, (freq, level)
    f0, f1 = new / 2, 0.97 * orig / 2
    sweep = taper * np.sin(2 * np.pi * (f0 * t + (f1 - f0) / (2 * t[-1]) * t ** 2))
    assert _alias_level_db(sweep, orig, new) < -60


@pytest.mark.parametrize("orig,new", [(16000, 48000), (8000, 22050), (16000, 44100)])
def test_upsampling_has_no_images(orig, new):
    t = np.arange(orig // 2) / orig
    freq = 0.85 * orig / 2
    y = resample(np.hanning(len(t)) * np.sin(2 * np.pi * freq * t), orig, new)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y)))) ** 2
    bin_hz = np.fft.rfftfreq(len(y), 1 / new)
    image_db = 10 * np.log10(spectrum[bin_hz >= orig / 2].sum() / spectrum.sum())
    assert image_db < -60, image_db


@settings(max_examples=40, deadline=None)
@given(orig=st.sampled_from(RATES), new=st.sampled_from(RATES), length=st.integers(0, 3000),
       sizes=chunk_sizes, seed=st.integers(0, 2 ** 16), channels=st.sampled_from([(), (2,)]))
def test_streaming_resampler_equals_offline(orig, new, length, sizes, seed, channels):
    x = torch.from_numpy(_rng(seed).standard_normal((*channels, length)).astype(np.float32))
    stream = Resampler(orig, new)
    outs = [stream.process(chunk) for chunk in _chunked(x, sizes)] + [stream.flush()]
    got = torch.cat(outs, dim=-1)
    full = resample(x, orig, new)
    assert got.shape == full.shape == (*channels, math.ceil(length * new / orig)), (got.shape, full.shape)
    if length:
        assert (got - full).abs().max().item() <= 1e-5
    assert stream.samples_in == 0  # flush reset it for the next stream


def test_resampler_types_and_errors():
    x64 = _rng(0).standard_normal(441)
    assert resample(x64, 44100, 16000).dtype == np.float64
    y = resample(torch.zeros(3, 2, 480), 48000, 16000)
    assert isinstance(y, torch.Tensor) and y.shape == (3, 2, 160)
    np.testing.assert_array_equal(resample(x64, 16000, 16000), x64)  # equal rates: identity
    for bad in [(0, 16000), (16000, -1), (16000, 16001)]:  # 16001 / 16000: ratio terms too large
        with pytest.raises(ValueError, match="sr|ratio"):
            resample(x64, *bad)
    with pytest.raises(ValueError, match="float"):
        resample(np.zeros(10, dtype=np.int16), 16000, 8000)
    stream = Resampler(16000, 8000)
    stream.process(torch.zeros(2, 10))
    with pytest.raises(ValueError, match=r"leading dims.*\(2,\).*\(3,\)"):
        stream.process(torch.zeros(3, 10))


# ---------------------------------------------------------------------------------------------
# Mel scale and filterbank
# ---------------------------------------------------------------------------------------------

def test_mel_scales_at_known_points():
    slaney = hz_to_mel(torch.tensor([0.0, 200.0, 1000.0, 6400.0]))
    np.testing.assert_allclose(slaney, [0.0, 3.0, 15.0, 42.0], atol=1e-12)  # 200/3 Hz per mel; 27 mels per x6.4
    np.testing.assert_allclose(hz_to_mel(700.0, "htk"), 2595 * math.log10(2), rtol=1e-12)
    f = torch.linspace(0, 11025, 101, dtype=torch.float64)
    for scale in ["slaney", "htk"]:
        np.testing.assert_allclose(mel_to_hz(hz_to_mel(f, scale), scale), f, atol=1e-9)


@pytest.mark.parametrize("scale", ["slaney", "htk"])
def test_filterbank_defining_properties(scale):
    sr, n_fft, n_mels, fmin, fmax = 16000, 2 ** 15, 40, 20.0, 7600.0  # fine grid: 0.49 Hz per bin
    bin_hz = sr / n_fft
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(fmin, scale)), float(hz_to_mel(fmax, scale)), n_mels + 2),
                      scale).numpy()
    fb = mel_filterbank(sr, n_fft, n_mels, fmin, fmax, scale, norm="slaney").numpy()
    peaks = fb.argmax(1) * bin_hz
    assert np.all(np.abs(peaks - edges[1:-1]) <= bin_hz), np.abs(peaks - edges[1:-1]).max()
    # Slaney peak height 2 / width, up to missing the apex by half a bin on this grid:
    height = 2 / (edges[2:] - edges[:-2])
    apex_miss = (bin_hz / 2) / np.minimum(edges[1:-1] - edges[:-2], edges[2:] - edges[1:-1])
    assert np.all(fb.max(1) <= height * (1 + 1e-12)) and np.all(fb.max(1) >= height * (1 - apex_miss))
    np.testing.assert_allclose(fb.sum(1) * bin_hz, 1.0, rtol=2e-3)  # Slaney: unit area in Hz
    plain = mel_filterbank(sr, n_fft, n_mels, fmin, fmax, scale, norm=None).numpy()
    between = (np.arange(n_fft // 2 + 1) * bin_hz >= edges[1]) & (np.arange(n_fft // 2 + 1) * bin_hz <= edges[-2])
    np.testing.assert_allclose(plain[:, between].sum(0), 1.0, atol=1e-9)  # neighbours cross at 1/2
    assert plain.min() >= 0 and np.all((plain > 0).sum(0) <= 2)


# ---------------------------------------------------------------------------------------------
# Log-mel features
# ---------------------------------------------------------------------------------------------

def reference_mel_matrix(cfg: FeatureConfig) -> np.ndarray:
    """[M, F] from the formulas, one triangle at a time."""
    if cfg.mel_scale == "slaney":
        def to_mel(f):
            return f / (200 / 3) if f < 1000 else 15 + 27 * math.log(f / 1000) / math.log(6.4)

        def to_hz(m):
            return m * 200 / 3 if m < 15 else 1000 * 6.4 ** ((m - 15) / 27)
    else:
        def to_mel(f):
            return 2595 * math.log10(1 + f / 700)

        def to_hz(m):
            return 700 * (10 ** (m / 2595) - 1)
    fmax = cfg.sample_rate / 2 if cfg.fmax is None else cfg.fmax
    lo, hi = to_mel(cfg.fmin), to_mel(fmax)
    edges = [to_hz(lo + (hi - lo) * i / (cfg.n_mels + 1)) for i in range(cfg.n_mels + 2)]
    freqs = np.arange(cfg.n_fft // 2 + 1) * cfg.sample_rate / cfg.n_fft
    fb = np.zeros((cfg.n_mels, len(freqs)))
    for m in range(cfg.n_mels):
        left, centre, right = edges[m:m + 3]
        for k, f in enumerate(freqs):
            if left < f <= centre:
                fb[m, k] = (f - left) / (centre - left)
            elif centre < f < right:
                fb[m, k] = (right - f) / (right - centre)
        if cfg.mel_norm == "slaney":
            fb[m] *= 2 / (right - left)
    return fb


def reference_log_mel(x: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Slow LogMel of one signal [S] -> [M, T]: preemphasis, then per frame an explicit DFT."""
    x = np.asarray(x, dtype=np.float64)
    S, W, hop, n_fft = len(x), cfg.win_length, cfg.hop_length, cfg.n_fft
    y = x.copy()
    y[1:] -= cfg.preemphasis * x[:-1]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(W) / (W - 1))  # symmetric
    dft = np.exp(-2j * np.pi * np.outer(np.arange(n_fft // 2 + 1), np.arange(W)) / n_fft)  # [F, W], zero-padded
    fb = reference_mel_matrix(cfg)
    columns = []
    for t in range(math.ceil(S / hop)):
        first = t * hop - W // 2  # frame t is centred on sample t * hop
        segment = np.array([y[i] if 0 <= i < S else 0.0 for i in range(first, first + W)])
        power = np.abs(dft @ (segment * hann)) ** 2
        spec = power if cfg.power == 2.0 else np.sqrt(power + 1e-9)
        columns.append(np.log(fb @ spec + cfg.log_guard))
    return np.stack(columns, 1) if columns else np.zeros((cfg.n_mels, 0))


def _speechish(n: int, sr: int, seed: int = 0) -> np.ndarray:
    """Noise plus a few harmonics: energy in every mel band, so log values are well conditioned."""
    t = np.arange(n) / sr
    rng = _rng(seed)
    return (0.05 * rng.standard_normal(n) + sum(0.2 / h * np.sin(2 * np.pi * 150 * h * t) for h in range(1, 6)))


SMALL_HTK = FeatureConfig(sample_rate=8000, n_fft=128, win_length=100, hop_length=40, n_mels=20, fmin=100.0,
                          fmax=3800.0, preemphasis=0.9, mel_scale="htk", mel_norm=None)


@pytest.mark.parametrize("cfg", [ASR_FEATURES, TTS_FEATURES, SMALL_HTK], ids=["asr", "tts", "htk"])
def test_logmel_matches_slow_reference(cfg):
    x = _speechish(int(0.2 * cfg.sample_rate) + 37, cfg.sample_rate)
    features, lengths = LogMel(cfg)(torch.from_numpy(x).float()[None])
    expected = reference_log_mel(x, cfg)
    assert features.shape == (1, cfg.n_mels, expected.shape[1]) and lengths.tolist() == [expected.shape[1]]
    np.testing.assert_allclose(features[0].numpy(), expected, atol=1e-4)  # float32 (measured <= 2.2e-5)
    features64, _ = LogMel(cfg)(torch.from_numpy(x)[None])  # float64 audio, float32-rounded buffers
    np.testing.assert_allclose(features64[0].numpy(), expected, atol=1e-5)


def test_reference_mel_matrix_equals_module_filterbank():
    for cfg in [ASR_FEATURES, TTS_FEATURES, SMALL_HTK]:
        fmax = cfg.sample_rate / 2 if cfg.fmax is None else cfg.fmax
        ours = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, fmax, cfg.mel_scale, cfg.mel_norm)
        np.testing.assert_allclose(ours.numpy(), reference_mel_matrix(cfg), atol=1e-12)


def test_logmel_framing_equals_torch_stft_centered():
    """Same frames as torch.stft(center=True, zero padding), of which LogMel keeps ceil(S / hop)."""
    cfg = ASR_FEATURES
    x = torch.from_numpy(_speechish(16000, 16000)).float()
    y = torch.cat([x[:1], x[1:] - 0.97 * x[:-1]])
    stft = torch.stft(y, cfg.n_fft, cfg.hop_length, cfg.win_length, torch.hann_window(400, periodic=False),
                      center=True, pad_mode="constant", return_complex=True)  # [F, S // hop + 1]
    module = LogMel(cfg)
    expected = torch.log(module.filterbank @ stft.abs() ** 2 + cfg.log_guard)  # [M, 101]
    features, _ = module(x[None])
    assert features.shape[-1] == 100
    torch.testing.assert_close(features[0], expected[:, :100], atol=1e-4, rtol=0)


def test_frame_counts():
    cfg = ASR_FEATURES
    for S, T in [(0, 0), (1, 1), (159, 1), (160, 1), (161, 2), (16000, 100), (16001, 101)]:
        assert cfg.num_frames(S) == T
        assert LogMel(cfg)(torch.zeros(1, S))[0].shape == (1, 80, T)


def test_logmel_padding_invariance():
    """A batch row equals the item alone; padding (even NaN) is ignored; frames past the end are 0."""
    cfg, module = ASR_FEATURES, LogMel(ASR_FEATURES)
    lengths = [3200, 1601, 0, 2999]
    batch = torch.full((4, 3200), float("nan"))
    for b, n in enumerate(lengths):
        batch[b, :n] = torch.from_numpy(_speechish(n, 16000, seed=b)).float()
    features, frame_lengths = module(batch, torch.tensor(lengths))
    assert frame_lengths.tolist() == [cfg.num_frames(n) for n in lengths]
    for b, n in enumerate(lengths):
        alone, _ = module(batch[b:b + 1, :n])
        T = frame_lengths[b]
        torch.testing.assert_close(features[b, :, :T], alone[0], atol=1e-5, rtol=0)
        assert torch.all(features[b, :, T:] == 0)


def test_logmel_gradient():
    cfg = FeatureConfig(sample_rate=8000, n_fft=32, win_length=24, hop_length=8, n_mels=6, power=1.0)
    module = LogMel(cfg)
    x = torch.from_numpy(_speechish(50, 8000)).double().requires_grad_()[None]
    assert torch.autograd.gradcheck(lambda a: module(a)[0], (x,))


def test_logmel_input_errors():
    module = LogMel()
    with pytest.raises(ValueError, match=r"\[B, S\].*\(16000,\)"):
        module(torch.zeros(16000))
    with pytest.raises(ValueError, match="lengths"):
        module(torch.zeros(2, 100), torch.tensor([100, 101]))


def test_feature_config_presets_and_validation():
    assert (ASR_FEATURES.sample_rate, ASR_FEATURES.n_fft, ASR_FEATURES.win_length, ASR_FEATURES.hop_length,
            ASR_FEATURES.n_mels, ASR_FEATURES.preemphasis, ASR_FEATURES.log_guard) == (
        16000, 512, 400, 160, 80, 0.97, 2.0 ** -24)
    assert (TTS_FEATURES.sample_rate, TTS_FEATURES.n_fft, TTS_FEATURES.win_length, TTS_FEATURES.hop_length,
            TTS_FEATURES.n_mels, TTS_FEATURES.fmin, TTS_FEATURES.fmax) == (22050, 1024, 1024, 256, 80, 0.0, 8000.0)
    assert FeatureConfig(**asdict(TTS_FEATURES)) == TTS_FEATURES  # checkpoints store asdict(config)
    for bad in [dict(win_length=600), dict(fmax=9000.0), dict(power=3.0), dict(mel_scale="bark"),
                dict(preemphasis=1.0), dict(hop_length=0)]:
        with pytest.raises(ValueError, match="FeatureConfig: expected"):
            FeatureConfig(**bad)


# ---------------------------------------------------------------------------------------------
# Streaming features
# ---------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(cfg=st.sampled_from([ASR_FEATURES, TTS_FEATURES, SMALL_HTK]), length=st.integers(0, 4000),
       sizes=chunk_sizes, seed=st.integers(0, 2 ** 16))
def test_streaming_features_equal_offline(cfg, length, sizes, seed):
    x = torch.from_numpy(_speechish(length, cfg.sample_rate, seed)).float()
    offline, _ = LogMel(cfg)(x[None])  # [1, M, T]
    stream = StreamingFeatureBufferer(cfg)
    outs = []
    for chunk in _chunked(x, sizes):
        outs.append(stream.push(chunk))
        assert stream.pending.numel() < cfg.win_length + cfg.hop_length  # bounded state: O(chunk) pushes
    outs.append(stream.flush())
    got = torch.cat(outs, dim=1)  # [M, T]
    assert got.shape == offline[0].shape, (got.shape, offline.shape)
    if length:
        assert (got - offline[0]).abs().max().item() <= 1e-4


def test_streaming_features_reset_and_one_sample_pushes():
    cfg = ASR_FEATURES
    x = torch.from_numpy(_speechish(1000, 16000, seed=5)).float()
    stream = StreamingFeatureBufferer(cfg)
    stream.push(torch.randn(777))  # an abandoned utterance
    stream.reset()
    outs = [stream.push(x[i:i + 1]) for i in range(len(x))] + [stream.flush()]
    got = torch.cat(outs, 1)
    # Frame t appears once sample t * hop + 199 has arrived: 15 ms look-ahead for the 25 ms window.
    first = next(i for i, o in enumerate(outs) if o.shape[1])
    assert first == cfg.win_length - cfg.win_length // 2 - 1, first
    torch.testing.assert_close(got, LogMel(cfg)(x[None])[0][0], atol=1e-4, rtol=0)
    assert stream.flush().shape == (80, 0)  # flush reset the stream: nothing left


def test_speech_bounds_finds_the_loud_stretch_of_a_clean_recording():
    """A tone burst between quiet stretches: the bounds are its first and last 10 ms frames; a tail
    40 dB down is not speech, one 30 dB down is; digital silence has no speech."""
    sr = 16000
    t = np.arange(int(0.5 * sr)) / sr
    burst = 0.3 * np.sin(2 * np.pi * 220 * t)
    quiet = lambda seconds, db: 0.3 * 10 ** (db / 20) * np.sin(2 * np.pi * 220 * np.arange(int(seconds * sr)) / sr)  # noqa: E731
    x = np.concatenate([np.zeros(int(0.3 * sr)), burst, quiet(0.2, -40), np.zeros(int(0.4 * sr))])
    assert speech_bounds(x, sr) == pytest.approx((0.3, 0.8))
    x = np.concatenate([np.zeros(int(0.3 * sr)), burst, quiet(0.2, -30), np.zeros(int(0.4 * sr))])
    assert speech_bounds(x, sr) == pytest.approx((0.3, 1.0))
    assert speech_bounds(np.zeros(sr), sr) is None
