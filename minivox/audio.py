"""Audio in and out of minivox: WAV files, resampling, the log-mel frontend and its streaming twin.

Read top to bottom:

1. WAV I/O (`read_wav`, `write_wav`): a small RIFF chunk walker + numpy. PCM16/24/32 and float32,
   plain or WAVE_FORMAT_EXTENSIBLE, any channel count. (The stdlib `wave` module reads only integer
   PCM with a plain header, so one walker handles every case with one set of error messages; the
   tests use `wave` and scipy as peers.)
2. Resampling (`resample`, `Resampler`): a Kaiser-windowed sinc, laid out as a polyphase filter bank
   and run as one strided conv1d per chunk. Zero group delay: output sample n sits at time n / new_sr.
3. Log-mel features (`FeatureConfig`, `ASR_FEATURES`, `TTS_FEATURES`, `LogMel`) and
   `StreamingFeatureBufferer`, which turns PCM chunks of any size into exactly the frames `LogMel`
   gives for the whole signal.

Shape letters: B batch, S samples, C channels, T frames, F frequency bins (n_fft // 2 + 1),
M mel bands, W window length in samples, P polyphase phases (= `up`), K conv kernel taps.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "read_wav", "write_wav", "resample", "Resampler", "hz_to_mel", "mel_to_hz", "mel_filterbank",
    "FeatureConfig", "ASR_FEATURES", "TTS_FEATURES", "LogMel", "StreamingFeatureBufferer", "speech_bounds",
]

# ----------------------------------------------------------------------------------------------
# 1. WAV I/O
# ----------------------------------------------------------------------------------------------

WAVE_FORMAT_PCM = 0x0001  # integer samples, little-endian, signed (8-bit would be unsigned; unsupported)
WAVE_FORMAT_IEEE_FLOAT = 0x0003  # IEEE 754 little-endian floats
WAVE_FORMAT_EXTENSIBLE = 0xFFFE  # real format tag = first 2 bytes of the SubFormat GUID in the fmt chunk
FMT_BASIC_BYTES = 16  # format tag, channels, rate, byte rate, block align, bits per sample
FMT_EXTENSIBLE_BYTES = 40  # basic + cbSize(2) + valid bits(2) + channel mask(4) + SubFormat GUID(16)

# encoding name -> (format tag, bits per sample)
WAV_ENCODINGS = {
    "pcm16": (WAVE_FORMAT_PCM, 16),
    "pcm24": (WAVE_FORMAT_PCM, 24),
    "pcm32": (WAVE_FORMAT_PCM, 32),
    "float32": (WAVE_FORMAT_IEEE_FLOAT, 32),
}


def _riff_chunks(data: bytes, path: str | Path) -> dict[bytes, bytes]:
    """Split a RIFF/WAVE byte string into {chunk id: chunk body} (first occurrence of each id wins)."""
    if len(data) < 12 or data[0:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a WAV file: expected a 'RIFF....WAVE' header, got {data[:12]!r}")
    chunks: dict[bytes, bytes] = {}
    pos = 12
    while pos + 8 <= len(data):  # a chunk = 4-byte id, uint32 LE size, body, pad byte if size is odd
        chunk_id, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        body = data[pos + 8:pos + 8 + size]
        if len(body) < size:
            raise ValueError(f"{path}: truncated WAV: chunk {chunk_id!r} declares {size} bytes, "
                             f"only {len(body)} are present")
        chunks.setdefault(chunk_id, body)
        pos += 8 + size + (size & 1)
    return chunks


def _decode_samples(raw: bytes, format_tag: int, bits: int) -> np.ndarray:
    """Little-endian sample bytes -> float32 [N]; integer PCM is scaled by 1 / 2**(bits - 1)."""
    if format_tag == WAVE_FORMAT_IEEE_FLOAT:
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if bits == 24:  # no numpy int24: place the 3 bytes in the top of an int32, then shift the sign back
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)  # [N, 3]
        wide = np.zeros((b.shape[0], 4), dtype=np.uint8)  # [N, 4]
        wide[:, 1:] = b
        ints = wide.view("<i4")[:, 0] >> 8  # [N]
    else:
        ints = np.frombuffer(raw, dtype="<i2" if bits == 16 else "<i4")
    return (ints.astype(np.float64) / 2.0 ** (bits - 1)).astype(np.float32)


def read_wav(path: str | Path, mono: bool = False) -> tuple[np.ndarray, int]:
    """Read a WAV file (PCM16/24/32 or float32, plain or WAVE_FORMAT_EXTENSIBLE).

    Returns (audio, sample_rate): audio is float32, [S] for a mono file and [S, C] for C > 1 channels
    (mono=True averages the channels to [S]). Integer PCM maps to [-1, 1) by dividing by
    2**(bits-1); float files are returned as stored. A non-WAV, truncated or corrupt file, or an
    unsupported encoding, raises ValueError naming the file and the problem.
    """
    data = Path(path).read_bytes()
    chunks = _riff_chunks(data, path)
    if b"fmt " not in chunks or b"data" not in chunks:
        raise ValueError(f"{path}: corrupt WAV: expected 'fmt ' and 'data' chunks, got {sorted(chunks)}")
    fmt = chunks[b"fmt "]
    if len(fmt) < FMT_BASIC_BYTES:
        raise ValueError(f"{path}: corrupt WAV: 'fmt ' chunk has {len(fmt)} bytes, expected >= {FMT_BASIC_BYTES}")
    format_tag, channels, sample_rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt[:FMT_BASIC_BYTES])
    if format_tag == WAVE_FORMAT_EXTENSIBLE:
        if len(fmt) < FMT_EXTENSIBLE_BYTES:
            raise ValueError(f"{path}: corrupt WAV: extensible 'fmt ' chunk has {len(fmt)} bytes, "
                             f"expected {FMT_EXTENSIBLE_BYTES}")
        format_tag = int.from_bytes(fmt[24:26], "little")  # SubFormat GUID starts at byte 24
    if (format_tag, bits) not in WAV_ENCODINGS.values():
        raise ValueError(f"{path}: unsupported WAV encoding: format tag {format_tag:#06x} with {bits} bits; "
                         f"supported: {', '.join(WAV_ENCODINGS)}")
    if channels < 1 or sample_rate < 1 or block_align != channels * bits // 8:
        raise ValueError(f"{path}: corrupt WAV header: channels={channels}, sample_rate={sample_rate}, "
                         f"block_align={block_align} (expected channels * {bits // 8})")
    raw = chunks[b"data"]
    if len(raw) % block_align:
        raise ValueError(f"{path}: truncated WAV: 'data' holds {len(raw)} bytes, "
                         f"not a whole number of {block_align}-byte frames")
    audio = _decode_samples(raw, format_tag, bits).reshape(-1, channels)  # [S, C]
    if mono or channels == 1:
        audio = audio.mean(axis=1, dtype=np.float32) if channels > 1 else audio[:, 0]  # [S]
    return audio, int(sample_rate)


def write_wav(path: str | Path, audio, sample_rate: int, encoding: str = "pcm16") -> None:
    """Write float audio [S] or [S, C] (numpy or torch) as a WAV file.

    encoding: "pcm16" | "pcm24" | "pcm32" (values clipped to [-1, 1], scaled by 2**(bits-1),
    rounded, the top code clamped to 2**(bits-1) - 1) or "float32" (values written as they are).
    """
    if encoding not in WAV_ENCODINGS:
        raise ValueError(f"{path}: unsupported encoding {encoding!r}; expected one of {list(WAV_ENCODINGS)}")
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1:
        raise ValueError(f"{path}: sample_rate must be a positive int, got {sample_rate!r}")
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim not in (1, 2):
        raise ValueError(f"{path}: audio must be [S] or [S, C], got shape {audio.shape}")
    if not np.all(np.isfinite(audio)):
        raise ValueError(f"{path}: audio contains NaN or infinite values")
    frames = audio.reshape(audio.shape[0], -1)  # [S, C]
    format_tag, bits = WAV_ENCODINGS[encoding]
    if format_tag == WAVE_FORMAT_IEEE_FLOAT:
        payload = frames.astype("<f4").tobytes()
    else:
        full_scale = 2.0 ** (bits - 1)
        codes = np.clip(np.round(np.clip(frames, -1.0, 1.0) * full_scale), -full_scale, full_scale - 1)
        codes = codes.astype("<i4")  # [S, C]
        if bits == 16:
            payload = codes.astype("<i2").tobytes()
        elif bits == 24:  # keep the low 3 bytes of each little-endian int32
            payload = codes.reshape(-1, 1).view(np.uint8)[:, :3].tobytes()
        else:
            payload = codes.tobytes()
    channels, n_frames = frames.shape[1], frames.shape[0]
    block_align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", format_tag, channels, int(sample_rate), int(sample_rate) * block_align,
                      block_align, bits)
    extra = b""
    if format_tag != WAVE_FORMAT_PCM:  # non-PCM formats carry cbSize = 0 and a 'fact' chunk (frame count)
        fmt += struct.pack("<H", 0)
        extra = b"fact" + struct.pack("<II", 4, n_frames)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra
            + b"data" + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) & 1))
    Path(path).write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


# ----------------------------------------------------------------------------------------------
# 2. Resampling: Kaiser-windowed sinc, polyphase
# ----------------------------------------------------------------------------------------------
# The ideal resampler evaluates the band-limited interpolant of x at the output times:
#     y[n] = sum_k x[k] h(n * down / up - k),       h(tau) = c * sinc(c * tau) * kaiser(tau / half_width)
# with up / down = new_sr / orig_sr reduced by their gcd, tau in input samples and c the cutoff as a
# fraction of the input Nyquist. Output n falls between inputs q = floor(n * down / up) and q + 1, at
# phase p = (n * down) mod up; only `up` distinct phases exist, so the filter taps h(p / up + j) are
# tabulated once per rate pair (the polyphase bank) and output n reads the inputs around q.

RESAMPLE_STOPBAND_DB = 80.0  # alias rejection the window is designed for (tests require >= 60 dB)
RESAMPLE_TRANSITION = 0.1  # transition band as a fraction of the lower Nyquist: flat to 90 %, stop at 100 %
KAISER_BETA = 0.1102 * (RESAMPLE_STOPBAND_DB - 8.7)  # Kaiser's formula for A > 50 dB -> 7.857
# Kaiser's length estimate N = (A - 7.95) / (14.36 * df), df = transition width in cycles/sample. With
# df = TRANSITION * band / 2 (band = lower Nyquist / input Nyquist) the half-length N / 2, counted in
# sinc zero crossings (spaced 1 / band input samples), is independent of the rates:
RESAMPLE_ZERO_CROSSINGS = (RESAMPLE_STOPBAND_DB - 7.95) / (14.36 * RESAMPLE_TRANSITION)  # ~50.2
MAX_RATIO_TERM = 1000  # up/down after gcd reduction; 44100 <-> 16000 is 160/441, 8000 -> 44100 is 441/80


@dataclass(frozen=True)
class _ResampleFilter:
    """Design of the low-pass for one rate pair (tau in input samples)."""

    up: int  # output samples per `down` input samples (after gcd reduction)
    down: int
    cutoff: float  # -6 dB point as a fraction of the input Nyquist
    half_width: float  # kernel support is |tau| < half_width input samples
    taps: int  # W: the kernel for any output needs inputs q - W .. q + W

    def kernel(self, tau: torch.Tensor) -> torch.Tensor:
        """h(tau), float64, for tau in input samples; sums to ~1 over tau + integers (unit DC gain)."""
        if self.up == self.down:  # equal rates: identity
            return (tau == 0).to(torch.float64)
        inside = (tau / self.half_width).clamp(-1.0, 1.0)
        window = torch.special.i0(KAISER_BETA * torch.sqrt(1.0 - inside ** 2)) / torch.special.i0(
            torch.tensor(KAISER_BETA, dtype=torch.float64))
        return torch.where(tau.abs() < self.half_width, self.cutoff * torch.sinc(self.cutoff * tau) * window, 0.0)


@lru_cache(maxsize=64)
def _resample_design(orig_sr: int, new_sr: int) -> tuple[_ResampleFilter, torch.Tensor]:
    """(filter design, conv weight [P, 1, K] float64) for one rate pair, computed once and cached."""
    for name, rate in (("orig_sr", orig_sr), ("new_sr", new_sr)):
        if not isinstance(rate, (int, np.integer)) or rate < 1:
            raise ValueError(f"{name} must be a positive int, got {rate!r}")
    g = math.gcd(orig_sr, new_sr)
    up, down = new_sr // g, orig_sr // g
    if max(up, down) > MAX_RATIO_TERM:
        raise ValueError(f"rate ratio {new_sr}/{orig_sr} reduces to {up}/{down}; expected terms <= "
                         f"{MAX_RATIO_TERM} (e.g. 8000, 16000, 22050, 24000, 32000, 44100, 48000 Hz)")
    band = min(1.0, up / down)  # the lower Nyquist, as a fraction of the input Nyquist
    cutoff = band * (1.0 - RESAMPLE_TRANSITION / 2)  # centre of the transition band
    half_width = RESAMPLE_ZERO_CROSSINGS / band if up != down else 0.5
    design = _ResampleFilter(up, down, cutoff, half_width, taps=math.ceil(half_width) if up != down else 0)
    # Output n = m * up + r (block m, r in [0, up)) has phase p_r = r * down mod up and base input
    # q = m * down + q_r with q_r = floor(r * down / up) < down. It reads x[q - W .. q + W], i.e.
    # x_padded[m * down + q_r + j] for j in [0, 2W] where x_padded has W leading zeros. Folding the
    # offset q_r into the kernel makes all phases one strided conv1d over x_padded:
    #     weight[r, q_r + j] = h(p_r / up + W - j),     kernel K = 2W + down taps, stride down.
    W = design.taps
    r = torch.arange(up)
    phase, base = (r * down) % up, (r * down) // up  # [P], [P]
    j = torch.arange(2 * W + 1)
    taps = design.kernel(phase[:, None].double() / up + W - j[None, :])  # [P, 2W + 1]
    weight = torch.zeros(up, 2 * W + down, dtype=torch.float64)  # [P, K]
    weight.scatter_(1, base[:, None] + j[None, :], taps)
    return design, weight[:, None, :]  # [P, 1, K]


class Resampler:
    """Streaming polyphase resampler from orig_sr to new_sr (Hz, integers).

    `process(chunk [..., S_chunk]) -> [..., S_out]` emits every output whose inputs have all
    arrived; `flush() -> [..., S_rest]` pads the end with zeros, emits the rest and resets (a
    stream that never got a chunk flushes to an empty tensor [0]). For any chunking, the
    concatenated outputs equal `resample` of the whole signal, which has exactly
    ceil(S * new_sr / orig_sr) samples, sample n at time n / new_sr (zero delay; the signal is
    taken as zero outside [0, S)). Latency: at most `design.taps + down` input samples (3.2 ms
    for 48k -> 16k). Chunks may be numpy or torch, float32 or float64, on any device, and keep
    their type; leading dims must stay the same within a stream.
    """

    def __init__(self, orig_sr: int, new_sr: int):
        self.orig_sr, self.new_sr = orig_sr, new_sr
        self.design, self._weight64 = _resample_design(orig_sr, new_sr)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next chunk starts a new signal at time 0."""
        self.pending: torch.Tensor | None = None  # [N, 1, L] unconsumed x_padded, from the next block's start
        self.samples_in = 0  # input samples seen
        self.samples_out = 0  # output samples emitted
        self._lead: tuple[int, ...] | None = None  # leading dims of the chunks
        self._numpy = False

    def _blocks(self, pending: torch.Tensor, n_blocks: int) -> torch.Tensor:
        """Run `n_blocks` conv blocks over pending [N, 1, L] -> outputs [N, n_blocks * up]."""
        d = self.design
        weight = self._weight64.to(pending.dtype).to(pending.device)  # [P, 1, K]
        used = pending[..., :(n_blocks - 1) * d.down + weight.shape[-1]]
        out = F.conv1d(used, weight, stride=d.down)  # [N, P, n_blocks]
        return out.transpose(1, 2).reshape(out.shape[0], n_blocks * d.up)  # [N, n_blocks * P], time order

    def _emit(self, out: torch.Tensor):
        out = out.reshape(*self._lead, out.shape[-1])  # [..., S_out]
        return out.cpu().numpy() if self._numpy else out

    def process(self, chunk):
        """Feed chunk [..., S_chunk]; returns the outputs [..., S_out] that became computable."""
        x = self._as_tensor(chunk)  # [N, 1, S_chunk]
        d = self.design
        if self.pending is None:  # W leading zeros: the signal is zero before time 0
            self.pending = x.new_zeros(x.shape[0], 1, d.taps)
        self.pending = torch.cat([self.pending, x], dim=-1)
        self.samples_in += x.shape[-1]
        kernel = self._weight64.shape[-1]
        n_blocks = (self.pending.shape[-1] - kernel) // d.down + 1 if self.pending.shape[-1] >= kernel else 0
        if n_blocks == 0:
            return self._emit(x.new_zeros(x.shape[0], 0))
        out = self._blocks(self.pending, n_blocks)
        self.pending = self.pending[..., n_blocks * d.down:]
        self.samples_out += out.shape[-1]
        return self._emit(out)

    def flush(self):
        """End the stream: returns the remaining outputs [..., S_rest] and resets the resampler."""
        if self.pending is None:  # nothing was processed: nothing to return
            return torch.zeros(0)
        d = self.design
        total = -(-self.samples_in * d.up // d.down)  # ceil(S * up / down) outputs in all
        rest = total - self.samples_out
        n_blocks = -(-rest // d.up)  # outputs come in blocks of `up`
        out = self.pending.new_zeros(self.pending.shape[0], 0)
        if n_blocks > 0:
            need = (n_blocks - 1) * d.down + self._weight64.shape[-1]
            padded = F.pad(self.pending, (0, max(0, need - self.pending.shape[-1])))  # zeros after the end
            out = self._blocks(padded, n_blocks)[:, :rest]
        result = self._emit(out)
        self.reset()
        return result

    def _as_tensor(self, chunk) -> torch.Tensor:
        """numpy/torch float [..., S] -> torch [N, 1, S], remembering type and leading dims."""
        is_numpy = isinstance(chunk, np.ndarray)
        x = torch.from_numpy(np.ascontiguousarray(chunk)) if is_numpy else chunk
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1:
            raise ValueError(f"expected a float array or tensor [..., S], got {type(chunk).__name__} "
                             f"{getattr(chunk, 'dtype', '')} {tuple(getattr(chunk, 'shape', ()))}")
        lead = tuple(x.shape[:-1])
        if self._lead is not None and lead != self._lead:
            raise ValueError(f"chunk leading dims changed mid-stream: expected {self._lead}, got {lead}")
        self._lead, self._numpy = lead, is_numpy
        return x.reshape(math.prod(lead), 1, x.shape[-1])  # [N, 1, S]


def resample(x, orig_sr: int, new_sr: int):
    """Resample x [..., S] (numpy or torch float) from orig_sr to new_sr Hz -> same type [..., S'].

    S' = ceil(S * new_sr / orig_sr); output n is the band-limited value at time n / new_sr.
    """
    if orig_sr == new_sr:
        _resample_design(orig_sr, new_sr)  # validates the rates
        return x.copy() if isinstance(x, np.ndarray) else x.clone()
    stream = Resampler(orig_sr, new_sr)
    head, tail = stream.process(x), stream.flush()
    return np.concatenate([head, tail], axis=-1) if isinstance(head, np.ndarray) else torch.cat([head, tail], -1)


def speech_bounds(x: np.ndarray, sample_rate: int, within_db: float = 35.0) -> tuple[float, float] | None:
    """(start, end) in s of the speech in a clean recording x [S]: the first and last 10 ms frame
    whose mean power is within `within_db` of the loudest frame's (None if x is digital silence).
    A reference for end-of-speech times (VAD and EOU scoring); noise within the range defeats it."""
    hop = sample_rate // 100
    frames = np.asarray(x, dtype=np.float64)[:len(x) // hop * hop].reshape(-1, hop)  # [N, hop]
    if frames.size == 0 or not frames.any():
        return None
    energy_db = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-20)
    loud = np.nonzero(energy_db >= energy_db.max() - within_db)[0]
    return loud[0] * hop / sample_rate, (loud[-1] + 1) * hop / sample_rate


# ----------------------------------------------------------------------------------------------
# 3. Log-mel features
# ----------------------------------------------------------------------------------------------
# Mel scales. Slaney's (Auditory Toolbox, 1998; librosa's default, the one NeMo's filterbanks use):
# linear at 200/3 Hz per mel below 1 kHz, logarithmic above with 27 mels per factor 6.4.
# HTK's: mel = 2595 * log10(1 + f / 700).

SLANEY_HZ_PER_MEL = 200.0 / 3.0
SLANEY_BREAK_HZ = 1000.0
SLANEY_BREAK_MEL = SLANEY_BREAK_HZ / SLANEY_HZ_PER_MEL  # 15 mels at 1 kHz
SLANEY_LOG_STEP = math.log(6.4) / 27.0  # ln(frequency ratio) per mel above 1 kHz
MAGNITUDE_GUARD = 1e-9  # sqrt(power + guard): keeps the magnitude differentiable at 0 (HiFi-GAN's value)


def hz_to_mel(hz, scale: str = "slaney") -> torch.Tensor:
    """Frequency in Hz (float or tensor) -> mels on the "slaney" or "htk" scale, float64."""
    f = torch.as_tensor(hz, dtype=torch.float64)
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    above = SLANEY_BREAK_MEL + torch.log(f.clamp_min(SLANEY_BREAK_HZ) / SLANEY_BREAK_HZ) / SLANEY_LOG_STEP
    return torch.where(f >= SLANEY_BREAK_HZ, above, f / SLANEY_HZ_PER_MEL)


def mel_to_hz(mel, scale: str = "slaney") -> torch.Tensor:
    """Inverse of `hz_to_mel`, float64."""
    m = torch.as_tensor(mel, dtype=torch.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    above = SLANEY_BREAK_HZ * torch.exp(SLANEY_LOG_STEP * (m - SLANEY_BREAK_MEL))
    return torch.where(m >= SLANEY_BREAK_MEL, above, m * SLANEY_HZ_PER_MEL)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float,
                   scale: str = "slaney", norm: str | None = "slaney") -> torch.Tensor:
    """Triangular mel filters -> [M, F] float64, F = n_fft // 2 + 1 (rows weight FFT bins).

    n_mels + 2 edges equally spaced in mel between fmin and fmax; filter m rises linearly (in Hz)
    from edge m to a peak of 1 at edge m + 1 and falls to 0 at edge m + 2. norm="slaney" scales
    each filter by 2 / (edge m+2 - edge m) so every triangle has unit area in Hz (librosa's
    default); norm=None keeps peak 1.
    """
    bin_hz = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # [F]
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(fmin, scale)), float(hz_to_mel(fmax, scale)),
                                     n_mels + 2, dtype=torch.float64), scale)  # [M + 2]
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # [M, 1] each
    rising = (bin_hz - lower) / (centre - lower)  # [M, F]
    falling = (upper - bin_hz) / (upper - centre)  # [M, F]
    weights = torch.minimum(rising, falling).clamp_min(0.0)  # [M, F]
    if norm == "slaney":
        weights = weights * (2.0 / (upper - lower))
    return weights


@dataclass(frozen=True)
class FeatureConfig:
    """Log-mel frontend settings. Defaults are the ASR/diarizer features of DESIGN §4."""

    sample_rate: int = 16000  # Hz; ASR and diarizer input rate
    n_fft: int = 512  # FFT size: the window zero-padded to a power of two -> 257 bins
    win_length: int = 400  # samples; 25 ms Hann analysis window at 16 kHz
    hop_length: int = 160  # samples; 10 ms between frames -> 100 frames per second
    n_mels: int = 80  # mel bands
    fmin: float = 0.0  # Hz; lower edge of the first mel filter
    fmax: float | None = None  # Hz; upper edge of the last mel filter; None = Nyquist
    preemphasis: float = 0.97  # y[n] = x[n] - a x[n-1] flattens speech's spectral tilt (NeMo ASR); 0 = off
    power: float = 2.0  # exponent on |STFT|: 2 = power spectrum (ASR, NeMo), 1 = magnitude (TTS, HiFi-GAN)
    log_guard: float = 2.0 ** -24  # features = log(mel + guard): NeMo's additive guard, floor ln 2^-24 = -16.6
    mel_scale: str = "slaney"  # "slaney" (librosa default, as NeMo) or "htk"
    mel_norm: str | None = "slaney"  # "slaney": unit-area triangles (librosa default, as NeMo); None: peak 1

    def __post_init__(self):
        fmax = self.sample_rate / 2 if self.fmax is None else self.fmax
        checks = [
            (self.sample_rate > 0 and self.hop_length > 0 and self.n_mels > 0, "positive sample_rate, hop, n_mels"),
            (0 < self.win_length <= self.n_fft, f"0 < win_length <= n_fft ({self.n_fft})"),
            (0 <= self.fmin < fmax <= self.sample_rate / 2, f"0 <= fmin < fmax <= Nyquist ({self.sample_rate / 2})"),
            (0.0 <= self.preemphasis < 1.0, "0 <= preemphasis < 1"),
            (self.power in (1.0, 2.0), "power 1.0 (magnitude) or 2.0 (power)"),
            (self.log_guard > 0, "log_guard > 0"),
            (self.mel_scale in ("slaney", "htk"), "mel_scale 'slaney' or 'htk'"),
            (self.mel_norm in ("slaney", None), "mel_norm 'slaney' or None"),
        ]
        for ok, expected in checks:
            if not ok:
                raise ValueError(f"FeatureConfig: expected {expected}, got {self}")

    def num_frames(self, num_samples):
        """Frames for a signal of S samples (int or tensor): ceil(S / hop), one per hop whose centre
        t * hop lies inside the signal. 1 s at 16 kHz -> 100 frames; 0 samples -> 0 frames."""
        return (num_samples + self.hop_length - 1) // self.hop_length


# ASR and diarizer: DESIGN §4 (NeMo FastConformer's preprocessor without per-utterance normalisation).
ASR_FEATURES = FeatureConfig()
# TTS (FastPitch targets, HiFi-GAN input and mel loss), as NeMo's FastPitch/HiFi-GAN preprocessor:
# no preemphasis, magnitude (not power) spectrum, log(mel + 1e-5) -- the HiFi-GAN recipe's 1e-5 floor.
TTS_FEATURES = FeatureConfig(sample_rate=22050, n_fft=1024, win_length=1024, hop_length=256, n_mels=80,
                             fmin=0.0, fmax=8000.0, preemphasis=0.0, power=1.0, log_guard=1e-5)

# Framing (shared by LogMel and StreamingFeatureBufferer): frame t covers the (preemphasised)
# samples [t * hop - W // 2, t * hop - W // 2 + W), i.e. it is centred on sample t * hop, with zeros
# before 0 and after S. Its W samples are multiplied by a symmetric Hann window (NeMo's
# hann_window(W, periodic=False)) and zero-padded to n_fft; where the padding goes does not change
# |FFT|, so this equals torch.stft(center=True, pad_mode="constant") with the window centred in
# n_fft. Frame t is final once sample t * hop + W - W // 2 - 1 has arrived (15 ms look-ahead for ASR).


def _frames_to_log_mel(frames: torch.Tensor, window: torch.Tensor, filterbank: torch.Tensor,
                       cfg: FeatureConfig) -> torch.Tensor:
    """Raw frames [..., T, W] -> log-mel [..., M, T]."""
    spectrum = torch.fft.rfft(frames * window, n=cfg.n_fft)  # [..., T, F] complex
    power = spectrum.real ** 2 + spectrum.imag ** 2  # [..., T, F]
    spec = power if cfg.power == 2.0 else torch.sqrt(power + MAGNITUDE_GUARD)
    mel = spec @ filterbank.transpose(-1, -2)  # [..., T, M] (a filterbank per row: [B, M, F])
    return torch.log(mel + cfg.log_guard).transpose(-1, -2)  # [..., M, T]


def _hann_and_filterbank(cfg: FeatureConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric Hann window [W] and mel filterbank [M, F], float32."""
    window = torch.hann_window(cfg.win_length, periodic=False, dtype=torch.float64)
    fmax = cfg.sample_rate / 2 if cfg.fmax is None else cfg.fmax
    fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, fmax, cfg.mel_scale, cfg.mel_norm)
    return window.float(), fb.float()


class LogMel(nn.Module):
    """Log-mel spectrogram: audio [B, S] float (at cfg.sample_rate) -> features [B, M, T].

    Deterministic and streaming-safe: no dither, no per-utterance normalisation, T = ceil(S / hop)
    (see the framing note above). Padding invariant: samples at or beyond each item's length are
    ignored and its frames at or beyond ceil(length / hop) are set to 0, so a batch row equals the
    item alone. Differentiable (used in the HiFi-GAN mel loss).
    """

    def __init__(self, cfg: FeatureConfig = ASR_FEATURES):
        super().__init__()
        self.cfg = cfg
        window, fb = _hann_and_filterbank(cfg)
        self.register_buffer("window", window, persistent=False)  # [W]; derived from cfg, not saved
        self.register_buffer("filterbank", fb, persistent=False)  # [M, F]

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None,
                filterbank: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """audio [B, S] float, lengths [B] int samples (None = all S) -> (features [B, M, T] with
        T = ceil(S / hop), frame_lengths [B] = ceil(lengths / hop)). `filterbank` [B, M, F]
        replaces the mel filterbank row by row (train/asr.py's vocal tract length perturbation)."""
        if audio.ndim != 2 or not audio.is_floating_point():
            raise ValueError(f"LogMel: expected float audio [B, S], got {audio.dtype} {tuple(audio.shape)}")
        B, S = audio.shape
        if lengths is None:
            lengths = torch.full((B,), S, dtype=torch.long, device=audio.device)
        if lengths.shape != (B,) or bool((lengths < 0).any()) or bool((lengths > S).any()):
            raise ValueError(f"LogMel: expected lengths [B={B}] in [0, {S}], got {lengths.tolist()}")
        if filterbank is not None and filterbank.shape != (B, *self.filterbank.shape):
            raise ValueError(f"LogMel: expected a filterbank per row [{B}, {self.filterbank.shape[0]}, "
                             f"{self.filterbank.shape[1]}], got {tuple(filterbank.shape)}")
        cfg, W = self.cfg, self.cfg.win_length
        T = cfg.num_frames(S)
        frame_lengths = cfg.num_frames(lengths)
        if T == 0:
            return audio.new_zeros(B, cfg.n_mels, 0), frame_lengths
        valid = torch.arange(S, device=audio.device)[None, :] < lengths[:, None]  # [B, S]
        x = torch.where(valid, audio, 0.0)  # padding may hold anything, even NaN
        if cfg.preemphasis:
            x = torch.cat([x[:, :1], x[:, 1:] - cfg.preemphasis * x[:, :-1]], dim=1)  # [B, S]
            x = torch.where(valid, x, 0.0)  # x[len] - a * x[len - 1] is not part of the signal
        # Zeros before sample 0 and after S so that frame t starts at padded index t * hop.
        right = max(0, (T - 1) * cfg.hop_length + W - W // 2 - S)
        x = F.pad(x, (W // 2, right))  # [B, W // 2 + S + right]
        frames = x.unfold(1, W, cfg.hop_length)[:, :T]  # [B, T, W] view
        window = self.window.to(audio.dtype)
        fb = (self.filterbank if filterbank is None else filterbank).to(audio.dtype)  # [M, F] or [B, M, F]
        features = _frames_to_log_mel(frames, window, fb, cfg)  # [B, M, T]
        frame_valid = torch.arange(T, device=audio.device)[None, :] < frame_lengths[:, None]  # [B, T]
        return features.masked_fill(~frame_valid[:, None, :], 0.0), frame_lengths


class StreamingFeatureBufferer:
    """PCM chunks of any size -> exactly the frames `LogMel(cfg)` gives for the whole signal.

    `push(chunk [S_chunk] float) -> [M, T_new]` returns the frames that became complete;
    `flush() -> [M, T_rest]` pads the end with zeros, returns the rest and resets. Concatenating
    every output along time equals `LogMel(cfg)(whole[None])[0][0]`. The state is explicit below:
    the preemphasis carry, the pending preemphasised samples still needed by future frames (at most
    about W + hop of them), and counters. Each push costs O(chunk + W).
    """

    def __init__(self, cfg: FeatureConfig = ASR_FEATURES):
        self.cfg = cfg
        self.window, self.filterbank = _hann_and_filterbank(cfg)  # [W], [M, F]
        self.reset()

    def reset(self) -> None:
        """Start a new signal."""
        half = self.cfg.win_length // 2
        self.last_sample = 0.0  # raw x[n-1] for the preemphasis of the next chunk's first sample
        self.pending = torch.zeros(half)  # preemphasised samples from index `pending_start` on
        self.pending_start = -half  # absolute sample index of pending[0] (negative = zeros before 0)
        self.samples_seen = 0  # S so far
        self.frames_emitted = 0  # frames returned so far

    def _frames(self, first: int, count: int, samples: torch.Tensor) -> torch.Tensor:
        """Log-mel of frames first .. first + count - 1, read from samples (starting at pending_start)."""
        cfg, W = self.cfg, self.cfg.win_length
        if count <= 0:
            return torch.zeros(cfg.n_mels, 0)
        start = first * cfg.hop_length - W // 2 - self.pending_start
        span = samples[start:start + (count - 1) * cfg.hop_length + W]
        frames = span.unfold(0, W, cfg.hop_length)  # [count, W] view
        return _frames_to_log_mel(frames, self.window, self.filterbank, cfg)  # [M, count]

    def push(self, chunk) -> torch.Tensor:
        """Append chunk [S_chunk] float (numpy or torch; 0 samples allowed) -> new frames [M, T_new]."""
        x = torch.as_tensor(chunk, dtype=torch.float32).detach().cpu()
        if x.ndim != 1:
            raise ValueError(f"StreamingFeatureBufferer.push: expected a 1-D chunk [S], got shape {tuple(x.shape)}")
        cfg, W = self.cfg, self.cfg.win_length
        if x.numel():
            if cfg.preemphasis:
                previous = torch.cat([torch.tensor([self.last_sample]), x[:-1]])  # [S_chunk], x[n-1]
                self.last_sample = float(x[-1])
                x = x - cfg.preemphasis * previous
            self.pending = torch.cat([self.pending, x])
            self.samples_seen += x.numel()
        lookahead = W - W // 2  # frame t needs samples up to t * hop + lookahead - 1
        ready = (self.samples_seen - lookahead) // cfg.hop_length + 1 if self.samples_seen >= lookahead else 0
        out = self._frames(self.frames_emitted, ready - self.frames_emitted, self.pending)
        self.frames_emitted = max(self.frames_emitted, ready)
        # Drop samples that no future frame reads: keep from the next frame's first sample on.
        drop = min(self.frames_emitted * cfg.hop_length - W // 2 - self.pending_start, self.pending.numel())
        if drop > 0:
            self.pending, self.pending_start = self.pending[drop:], self.pending_start + drop
        return out

    def flush(self) -> torch.Tensor:
        """End the signal: frames [M, T_rest] up to ceil(S / hop), with zeros after the end; then reset."""
        cfg, W = self.cfg, self.cfg.win_length
        total = cfg.num_frames(self.samples_seen)
        count = total - self.frames_emitted
        need = (total - 1) * cfg.hop_length - W // 2 + W - self.pending_start  # samples the last frame reads
        samples = F.pad(self.pending, (0, max(0, need - self.pending.numel())))  # zeros after the end
        out = self._frames(self.frames_emitted, count, samples)
        self.reset()
        return out
