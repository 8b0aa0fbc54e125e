"""HiFi-GAN vocoder: log-mel frames -> waveform, with its two discriminators and three losses.

Kong, Kim & Bae 2020, "HiFi-GAN: Generative Adversarial Networks for Efficient and High Fidelity
Speech Synthesis" (NeurIPS, arXiv 2010.05646).

    mel [B, 80, T] --conv_pre--> [B, C, T]
      for each upsampling stage i (rate u_i):  LeakyReLU -> ConvTranspose1d (x u_i, channels / 2)
                                               -> multi-receptive-field fusion: mean of K residual blocks
      --LeakyReLU--> conv_post --> tanh --> audio [B, 1, T * hop],   hop = prod(u_i) (256 at 22.05 kHz)

Discriminators: the multi-period discriminator (MPD) folds the waveform into [T / p, p] images for
p in (2, 3, 5, 7, 11) and runs 2-D convs over them (periodic structure); the multi-scale
discriminator (MSD) runs 1-D convs on the waveform at 1x, 2x and 4x average-pooled scales.
Losses (paper eq. 1-6): least-squares GAN for both sides, feature matching (L1 between the
discriminators' feature maps of real and generated audio) and L1 between log-mels, with the
weights of `HiFiGANLossWeights` (lambda_fm = 2, lambda_mel = 45 in the paper).

Presets V1/V2/V3 are the paper's three generators; `demo` is a narrower V3 sized to run faster
than real time on one CPU core (bench/tts.py). Every conv carries weight normalisation
(Salimans & Kingma 2016) while training, stored as NeMo's and the original code's `weight_g` /
`weight_v`; `remove_weight_norm()` folds it into plain weights for inference. Module names follow
NeMo's HifiGanModel (`generator.conv_pre`, `generator.ups.0`, `generator.resblocks.0.convs1.0`,
`mpd.discriminators.0.convs.0`, `msd.meanpools.0`).

Streaming: the generator is convolutional, so a stretch of output samples depends only on mel
frames within `Generator.receptive_field_frames()` of it; `vocode_in_chunks` synthesises chunks
with that much context either side and equals synthesising the whole mel at once (tested).

Shape letters: B batch, C channels, T mel frames, S samples, P period.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minivox.audio import TTS_FEATURES, FeatureConfig, LogMel
from minivox.checkpoint import load_checkpoint, load_state_dict, save_checkpoint
from minivox.config import from_dict, load_config

__all__ = [
    "HiFiGANConfig", "HIFIGAN_PRESETS", "hifigan_preset", "HiFiGANLossWeights", "load_generator", "Generator", "MultiPeriodDiscriminator",
    "MultiScaleDiscriminator", "HiFiGAN", "discriminator_loss", "generator_adversarial_loss",
    "feature_matching_loss", "vocode_in_chunks", "load_model_config",
]

LRELU_SLOPE = 0.1  # LeakyReLU slope inside the generator and discriminators (paper's code)
POST_LRELU_SLOPE = 0.01  # the activation before conv_post uses torch's default slope (paper's code, NeMo)
INIT_STD = 0.01  # generator convs after conv_pre start from N(0, 0.01^2) weights (paper's code, NeMo)


# ---------------------------------------------------------------------------------------
# Config and presets
# ---------------------------------------------------------------------------------------


@dataclass
class HiFiGANConfig:
    """Generator and discriminator sizes. Defaults are the paper's V1 at the TTS features of DESIGN §4."""

    n_mels: int = TTS_FEATURES.n_mels  # input mel bands
    upsample_rates: list[int] = field(default_factory=lambda: [8, 8, 2, 2])  # product = hop (256)
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [16, 16, 4, 4])  # 2 x rate: no checkerboard
    upsample_initial_channel: int = 512  # C after conv_pre; halved by every upsampling
    resblock: str = "1"  # "1": 3 dilated + 3 plain convs per block (V1, V2); "2": 2 dilated convs (V3)
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])  # one residual block each
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]])
    mpd_periods: list[int] = field(default_factory=lambda: [2, 3, 5, 7, 11])  # primes: little overlap
    msd_scales: int = 3  # raw, /2, /4 average-pooled
    discriminator_width: float = 1.0  # multiplies every discriminator's channels (the paper's = 1.0)

    def __post_init__(self):
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError(f"HiFiGANConfig: upsample_rates and upsample_kernel_sizes differ in length: "
                             f"{self.upsample_rates} vs {self.upsample_kernel_sizes}")
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            if k < u or (k - u) % 2:
                raise ValueError(f"HiFiGANConfig: each upsample kernel must be >= its rate with an even "
                                 f"difference (exact x rate output), got rate {u}, kernel {k}")
        if self.resblock not in ("1", "2"):
            raise ValueError(f"HiFiGANConfig: resblock must be '1' or '2', got {self.resblock!r}")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError(f"HiFiGANConfig: one dilation list per resblock kernel, got "
                             f"{self.resblock_kernel_sizes} and {self.resblock_dilation_sizes}")
        need = 3 if self.resblock == "1" else 2
        if any(len(d) != need for d in self.resblock_dilation_sizes):
            raise ValueError(f"HiFiGANConfig: resblock {self.resblock} takes {need} dilations per block, "
                             f"got {self.resblock_dilation_sizes}")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise ValueError(f"HiFiGANConfig: upsample_initial_channel ({self.upsample_initial_channel}) must "
                             f"halve {len(self.upsample_rates)} times")

    @property
    def hop_length(self) -> int:
        """Output samples per mel frame: the product of the upsampling rates."""
        return math.prod(self.upsample_rates)


# The paper's generators (Table 1) and the bundled demo's. V1 and V2 differ only in width.
HIFIGAN_PRESETS: dict[str, dict] = {
    "v1": dict(upsample_initial_channel=512),
    "v2": dict(upsample_initial_channel=128),
    "v3": dict(upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8], upsample_initial_channel=256,
               resblock="2", resblock_kernel_sizes=[3, 5, 7], resblock_dilation_sizes=[[1, 2], [2, 6], [3, 12]]),
    # V3 at half width (channels 128 -> 64 -> 32 -> 16), a quarter of V3's compute.
    "demo": dict(upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8], upsample_initial_channel=128,
                 resblock="2", resblock_kernel_sizes=[3, 5, 7], resblock_dilation_sizes=[[1, 2], [2, 6], [3, 12]]),
}


def hifigan_preset(name: str, **overrides) -> HiFiGANConfig:
    """HiFiGANConfig of a preset in HIFIGAN_PRESETS ("v1", "v2", "v3", "demo"), with field overrides."""
    if name not in HIFIGAN_PRESETS:
        raise ValueError(f"unknown HiFi-GAN preset {name!r}; expected one of {list(HIFIGAN_PRESETS)}")
    return HiFiGANConfig(**{**HIFIGAN_PRESETS[name], **overrides})


@dataclass
class HiFiGANLossWeights:
    """Generator loss weights (Kong et al. 2020, eq. 6 and section 4: lambda_fm = 2, lambda_mel = 45)."""

    adversarial: float = 1.0  # LSGAN generator term, summed over all sub-discriminators
    feature_matching: float = 2.0  # lambda_fm
    mel: float = 45.0  # lambda_mel
    mel_fmax: float | None = None  # Hz; upper edge of the loss mel; None = Nyquist (the paper's fmax_for_loss)


def load_model_config(path: str | Path, overrides: Sequence[str] = ()) -> HiFiGANConfig:
    """The `[model]` table of a preset (configs/hifigan_*.toml) as a HiFiGANConfig; overrides are relative to it."""
    return load_config(HiFiGANConfig, path, overrides, section="model")


# ---------------------------------------------------------------------------------------
# Weight normalisation: w = g * v / ||v||, the norm over every dim but 0 (torch's weight_norm, dim=0)
# ---------------------------------------------------------------------------------------


def _norm_except_dim0(v: torch.Tensor) -> torch.Tensor:
    return v.pow(2).sum(dim=tuple(range(1, v.ndim)), keepdim=True).sqrt()


class _WeightNorm:
    """Mixin for conv layers: replaces `weight` by `weight_g` [out, 1, ...] and `weight_v` (same shape as
    weight); `remove_weight_norm()` puts the plain `weight` back (same function, faster)."""

    def _init_weight_norm(self) -> None:
        weight = self.weight.detach()
        del self._parameters["weight"]
        self.weight_g = nn.Parameter(_norm_except_dim0(weight))
        self.weight_v = nn.Parameter(weight.clone())

    def init_normal(self, std: float) -> None:
        """Draw the weight from N(0, std^2) (the paper's code initialises its generator convs so)."""
        with torch.no_grad():
            self.weight_v.normal_(0.0, std)
            self.weight_g.copy_(_norm_except_dim0(self.weight_v))  # g = ||v||: the weight is v itself

    def effective_weight(self) -> torch.Tensor:
        if "weight" in self._parameters:
            return self._parameters["weight"]
        return self.weight_g * self.weight_v / _norm_except_dim0(self.weight_v)

    def remove_weight_norm(self) -> None:
        if "weight" in self._parameters:
            return
        weight = self.effective_weight().detach()
        del self._parameters["weight_g"], self._parameters["weight_v"]
        self.weight = nn.Parameter(weight)


class WNConv1d(_WeightNorm, nn.Conv1d):
    """Conv1d with weight normalisation."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_weight_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class WNConvTranspose1d(_WeightNorm, nn.ConvTranspose1d):
    """ConvTranspose1d with weight normalisation (norm over dim 0, the input channels, as torch's default)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_weight_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(x, self.effective_weight(), self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


class WNConv2d(_WeightNorm, nn.Conv2d):
    """Conv2d with weight normalisation."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_weight_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the length of a stride-1 conv: dilation * (kernel - 1) / 2."""
    return dilation * (kernel_size - 1) // 2


# ---------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------


class ResBlock1(nn.Module):
    """V1/V2 residual block: for each dilation d, x += conv_k(lrelu(conv_{k,d}(lrelu(x))))."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, dilation=d, padding=same_padding(kernel_size, d)) for d in dilations)
        self.convs2 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, padding=same_padding(kernel_size)) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, S] -> [B, C, S]."""
        for conv1, conv2 in zip(self.convs1, self.convs2):
            x = x + conv2(F.leaky_relu(conv1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x

    def reach(self) -> int:
        """Samples either side that one output sample depends on."""
        return sum(c.dilation[0] * (c.kernel_size[0] - 1) // 2 for c in [*self.convs1, *self.convs2])


class ResBlock2(nn.Module):
    """V3 residual block: for each dilation d, x += conv_{k,d}(lrelu(x))."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]):
        super().__init__()
        self.convs = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, dilation=d, padding=same_padding(kernel_size, d)) for d in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, S] -> [B, C, S]."""
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, LRELU_SLOPE))
        return x

    def reach(self) -> int:
        """Samples either side that one output sample depends on."""
        return sum(c.dilation[0] * (c.kernel_size[0] - 1) // 2 for c in self.convs)


class Generator(nn.Module):
    """Mel frames [B, n_mels, T] -> audio [B, 1, T * hop] in [-1, 1]."""

    def __init__(self, cfg: HiFiGANConfig):
        super().__init__()
        self.cfg = cfg
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        C = cfg.upsample_initial_channel
        self.conv_pre = WNConv1d(cfg.n_mels, C, 7, padding=3)
        block = ResBlock1 if cfg.resblock == "1" else ResBlock2
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()  # flat: stage i owns resblocks[i * K : (i + 1) * K] (NeMo/paper layout)
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            c_in, c_out = C // 2 ** i, C // 2 ** (i + 1)
            self.ups.append(WNConvTranspose1d(c_in, c_out, k, stride=u, padding=(k - u) // 2))  # length x u exactly
            for kernel, dilations in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                self.resblocks.append(block(c_out, kernel, dilations))
        self.conv_post = WNConv1d(C // 2 ** len(cfg.upsample_rates), 1, 7, padding=3)
        for module in [*self.ups.modules(), *self.resblocks.modules(), self.conv_post]:
            if isinstance(module, _WeightNorm):
                module.init_normal(INIT_STD)

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """mels [B, n_mels, T] -> audio [B, 1, T * hop]."""
        if mels.ndim != 3 or mels.shape[1] != self.cfg.n_mels:
            raise ValueError(f"Generator: expected mels [B, {self.cfg.n_mels}, T], got {tuple(mels.shape)}")
        x = self.conv_pre(mels)  # [B, C, T]
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))  # [B, C / 2^(i+1), T * u_0 * ... * u_i]
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels  # multi-receptive-field fusion
        return torch.tanh(self.conv_post(F.leaky_relu(x, POST_LRELU_SLOPE)))  # [B, 1, S]

    def remove_weight_norm(self) -> None:
        """Fold weight normalisation into plain weights (inference; same outputs up to float error)."""
        for module in self.modules():
            if isinstance(module, _WeightNorm):
                module.remove_weight_norm()

    def receptive_field_frames(self) -> int:
        """F: output samples of frame t depend on mel frames t - F .. t + F only (an upper bound).

        Worked backwards from the output: conv_post reaches 3 samples; each stage adds its widest
        residual block's reach and converts to the previous rate through the transposed conv (an
        output sample j of ConvTranspose1d(k, u, p) reads inputs i with i*u - p <= j <= i*u - p + k - 1);
        conv_pre adds 3 frames."""
        reach = 3  # samples at the output rate (conv_post, kernel 7)
        for i in reversed(range(len(self.ups))):
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            reach += max(block.reach() for block in blocks)
            u, k = self.cfg.upsample_rates[i], self.cfg.upsample_kernel_sizes[i]
            reach = math.ceil((reach + k) / u)  # in samples of the previous (slower) rate, rounded up
        return reach + 3  # conv_pre, kernel 7


def vocode_in_chunks(generator: Generator, mels: torch.Tensor, chunk_frames: int,
                     context_frames: int | None = None, first_chunk_frames: int | None = None) -> Iterator[torch.Tensor]:
    """Synthesise mels [n_mels, T] chunk by chunk: yields audio [chunk * hop] pieces whose concatenation
    equals generator(mels)[0, 0] (float error aside) when context_frames >= the receptive field
    (the default). The first chunk may be shorter (`first_chunk_frames`) to get audio out sooner."""
    if mels.ndim != 2:
        raise ValueError(f"vocode_in_chunks: expected mels [n_mels, T], got {tuple(mels.shape)}")
    if chunk_frames < 1:
        raise ValueError(f"vocode_in_chunks: chunk_frames must be >= 1, got {chunk_frames}")
    context = generator.receptive_field_frames() if context_frames is None else context_frames
    hop, T = generator.hop_length, mels.shape[1]
    start = 0
    size = first_chunk_frames or chunk_frames
    while start < T:
        end = min(T, start + size)
        lo, hi = max(0, start - context), min(T, end + context)  # the chunk with its context
        audio = generator(mels[None, :, lo:hi])[0, 0]  # [(hi - lo) * hop]
        yield audio[(start - lo) * hop:(end - lo) * hop]
        start, size = end, chunk_frames


# ---------------------------------------------------------------------------------------
# Discriminators
# ---------------------------------------------------------------------------------------


def _width(channels: int, width: float, multiple: int = 1) -> int:
    """channels * width, rounded to a positive multiple of `multiple` (the conv groups)."""
    return max(multiple, int(round(channels * width / multiple)) * multiple)


class DiscriminatorP(nn.Module):
    """One MPD sub-discriminator: audio [B, 1, S] -> [B, 1, ceil(S / p), p] image -> 2-D convs (kernel 5 x 1)."""

    CHANNELS = (32, 128, 512, 1024, 1024)  # the paper's widths

    def __init__(self, period: int, width: float = 1.0, kernel_size: int = 5, stride: int = 3):
        super().__init__()
        self.period = period
        channels = [1] + [_width(c, width) for c in self.CHANNELS]
        strides = [stride] * (len(self.CHANNELS) - 1) + [1]
        self.convs = nn.ModuleList(
            WNConv2d(c_in, c_out, (kernel_size, 1), (s, 1), padding=(same_padding(kernel_size), 0))
            for c_in, c_out, s in zip(channels[:-1], channels[1:], strides))
        self.conv_post = WNConv2d(channels[-1], 1, (3, 1), 1, padding=(1, 0))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """audio [B, 1, S] -> (scores [B, *] flattened, feature maps of every layer)."""
        B, _, S = audio.shape
        if S % self.period:  # reflect-pad to a whole number of periods
            audio = F.pad(audio, (0, self.period - S % self.period), mode="reflect")
        x = audio.view(B, 1, -1, self.period)  # [B, 1, S / P, P]
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            features.append(x)
        x = self.conv_post(x)
        features.append(x)
        return x.flatten(1), features


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, cfg: HiFiGANConfig):
        super().__init__()
        self.discriminators = nn.ModuleList(DiscriminatorP(p, cfg.discriminator_width) for p in cfg.mpd_periods)

    def forward(self, audio: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """audio [B, 1, S] -> (scores per sub-discriminator, feature maps per sub-discriminator)."""
        outputs = [d(audio) for d in self.discriminators]
        return [score for score, _ in outputs], [features for _, features in outputs]


class DiscriminatorS(nn.Module):
    """One MSD sub-discriminator: strided, grouped 1-D convs over the waveform."""

    # (out channels, kernel, stride, groups), the paper's layers
    LAYERS = ((128, 15, 1, 1), (128, 41, 2, 4), (256, 41, 2, 16), (512, 41, 4, 16), (1024, 41, 4, 16),
              (1024, 41, 1, 16), (1024, 5, 1, 1))

    def __init__(self, width: float = 1.0, spectral: bool = False):
        super().__init__()
        self.convs = nn.ModuleList()
        c_in = 1
        for c_out, kernel, stride, groups in self.LAYERS:
            c_out = _width(c_out, width, 16)
            conv = nn.Conv1d(c_in, c_out, kernel, stride, groups=groups, padding=same_padding(kernel))
            self.convs.append(nn.utils.spectral_norm(conv) if spectral else WNConv1d(
                c_in, c_out, kernel, stride, groups=groups, padding=same_padding(kernel)))
            c_in = c_out
        post = nn.Conv1d(c_in, 1, 3, 1, padding=1)
        self.conv_post = nn.utils.spectral_norm(post) if spectral else WNConv1d(c_in, 1, 3, 1, padding=1)

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """audio [B, 1, S] -> (scores [B, *], feature maps of every layer)."""
        x, features = audio, []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            features.append(x)
        x = self.conv_post(x)
        features.append(x)
        return x.flatten(1), features


class MultiScaleDiscriminator(nn.Module):
    """Sub-discriminators on the raw waveform (spectral norm, as in the paper) and on 2x, 4x, ... average-pooled copies."""

    def __init__(self, cfg: HiFiGANConfig):
        super().__init__()
        self.discriminators = nn.ModuleList(
            DiscriminatorS(cfg.discriminator_width, spectral=(i == 0)) for i in range(cfg.msd_scales))
        self.meanpools = nn.ModuleList(nn.AvgPool1d(4, 2, padding=2) for _ in range(cfg.msd_scales - 1))

    def forward(self, audio: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """audio [B, 1, S] -> (scores per scale, feature maps per scale)."""
        scores, features = [], []
        for i, discriminator in enumerate(self.discriminators):
            if i > 0:
                audio = self.meanpools[i - 1](audio)  # [B, 1, ~S / 2^i]
            score, fmap = discriminator(audio)
            scores.append(score)
            features.append(fmap)
        return scores, features


# ---------------------------------------------------------------------------------------
# Losses (Kong et al. 2020, eq. 1-3)
# ---------------------------------------------------------------------------------------


def discriminator_loss(real_scores: Sequence[torch.Tensor], fake_scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """LSGAN discriminator loss, summed over sub-discriminators: mean((1 - D(x))^2) + mean(D(G(s))^2)."""
    return sum(torch.mean((1 - real) ** 2) + torch.mean(fake ** 2) for real, fake in zip(real_scores, fake_scores))


def generator_adversarial_loss(fake_scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """LSGAN generator loss, summed over sub-discriminators: mean((1 - D(G(s)))^2)."""
    return sum(torch.mean((1 - fake) ** 2) for fake in fake_scores)


def feature_matching_loss(real_features: Sequence[Sequence[torch.Tensor]],
                          fake_features: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Sum over sub-discriminators and layers of mean |features(real) - features(generated)| (real detached)."""
    return sum(torch.mean(torch.abs(real.detach() - fake))
               for real_maps, fake_maps in zip(real_features, fake_features)
               for real, fake in zip(real_maps, fake_maps))


# ---------------------------------------------------------------------------------------
# The whole model (what training holds; checkpoints for inference keep the generator)
# ---------------------------------------------------------------------------------------


class HiFiGAN(nn.Module):
    """Generator + MPD + MSD, and the log-mel used for the mel loss (NeMo HifiGanModel's names)."""

    def __init__(self, cfg: HiFiGANConfig, features: FeatureConfig = TTS_FEATURES, loss_fmax: float | None = None):
        super().__init__()
        if cfg.hop_length != features.hop_length or cfg.n_mels != features.n_mels:
            raise ValueError(f"HiFiGAN: generator hop {cfg.hop_length} / mels {cfg.n_mels} must match the "
                             f"features' hop {features.hop_length} / mels {features.n_mels}")
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.mpd = MultiPeriodDiscriminator(cfg)
        self.msd = MultiScaleDiscriminator(cfg)
        loss_features = FeatureConfig(**{**features.__dict__, "fmax": loss_fmax})
        self.loss_mel = LogMel(loss_features)  # no parameters

    def discriminate(self, audio: torch.Tensor):
        """audio [B, 1, S] -> (scores, feature maps) of all MPD then all MSD sub-discriminators."""
        mpd_scores, mpd_features = self.mpd(audio)
        msd_scores, msd_features = self.msd(audio)
        return mpd_scores + msd_scores, mpd_features + msd_features

    def save(self, path: str | Path, meta: dict | None = None, fp16: bool = False) -> Path:
        """Write a kind "hifigan" checkpoint holding the generator only (keys "generator.*")."""
        state = {f"generator.{name}": tensor for name, tensor in self.generator.state_dict().items()}
        return save_checkpoint(path, "hifigan", self.cfg, state, meta=meta, fp16=fp16)


def load_generator(path: str | Path, map_location: str | torch.device = "cpu",
                   remove_weight_norm: bool = True) -> Generator:
    """The generator of a "hifigan" checkpoint, in eval mode (weight norm folded in by default)."""
    payload = load_checkpoint(path, kind="hifigan", map_location=map_location)
    generator = Generator(from_dict(HiFiGANConfig, payload["config"]))
    state = {name.removeprefix("generator."): t for name, t in payload["model"].items() if name.startswith("generator.")}
    load_state_dict(generator, state, source=str(path))
    generator.meta = payload["meta"]
    if remove_weight_norm:
        generator.remove_weight_norm()
    return generator.to(map_location).eval()
