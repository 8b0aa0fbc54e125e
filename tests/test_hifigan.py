"""HiFi-GAN: generator lengths and presets, weight norm against torch's, chunked == whole synthesis,
discriminators and losses against their formulas, checkpoints; (slow) a short GAN run lowers the mel loss."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minivox.audio import TTS_FEATURES
from minivox.hifigan import (HIFIGAN_PRESETS, Generator, HiFiGAN, HiFiGANConfig, discriminator_loss,
                             feature_matching_loss, generator_adversarial_loss, hifigan_preset, load_generator,
                             load_model_config, vocode_in_chunks)

SMALL = dict(upsample_initial_channel=32, resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 2], [2, 6]])


@pytest.fixture(scope="module")
def small_generator() -> Generator:
    torch.manual_seed(0)
    generator = Generator(hifigan_preset("v3", **SMALL)).eval()
    generator.remove_weight_norm()
    return generator


@pytest.mark.parametrize("preset", sorted(HIFIGAN_PRESETS))
def test_hop_is_the_product_of_the_upsampling_rates_and_output_is_frames_times_hop(preset):
    cfg = hifigan_preset(preset)
    assert cfg.hop_length == math.prod(cfg.upsample_rates) == TTS_FEATURES.hop_length
    narrow = hifigan_preset(preset, upsample_initial_channel=16 * 2 ** len(cfg.upsample_rates) // 2)
    generator = Generator(narrow).eval()
    with torch.no_grad():
        for frames in (1, 2, 7, 33):
            audio = generator(torch.randn(2, 80, frames))
            assert audio.shape == (2, 1, frames * cfg.hop_length)
            assert audio.abs().max() <= 1.0  # tanh output


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="even difference"):
        HiFiGANConfig(upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 15, 8])
    with pytest.raises(ValueError, match="takes 2 dilations"):
        HiFiGANConfig(resblock="2")  # V1's three dilations per block with V3's block type
    with pytest.raises(ValueError, match="expected mels"):
        Generator(hifigan_preset("demo"))(torch.randn(1, 40, 5))


def test_weight_names_are_nemo_compatible_and_weight_norm_matches_torch():
    generator = Generator(hifigan_preset("v1", upsample_initial_channel=64))
    names = set(generator.state_dict())
    for name in ("conv_pre.weight_g", "conv_pre.weight_v", "conv_pre.bias", "ups.0.weight_g", "ups.3.weight_v",
                 "resblocks.0.convs1.0.weight_g", "resblocks.11.convs2.2.weight_v", "conv_post.weight_g"):
        assert name in names, name
    for module in (generator.conv_pre, generator.ups[0], generator.resblocks[0].convs1[1]):
        expected = torch._weight_norm(module.weight_v, module.weight_g, 0)  # torch's own w = g v / ||v||
        torch.testing.assert_close(module.effective_weight(), expected)


def test_removing_weight_norm_keeps_the_output():
    torch.manual_seed(1)
    generator = Generator(hifigan_preset("v3", **SMALL)).eval()
    with torch.no_grad():
        for p in generator.parameters():  # move g away from ||v|| so the norm matters
            p.mul_(1 + 0.1 * torch.rand_like(p))
        mel = torch.randn(1, 80, 12)
        before = generator(mel)
        generator.remove_weight_norm()
        after = generator(mel)
    assert not any("weight_g" in name for name in generator.state_dict())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_receptive_field_is_an_upper_bound(small_generator):
    F = small_generator.receptive_field_frames()
    hop, T, t = small_generator.hop_length, 40, 20
    mel = torch.randn(1, 80, T)
    changed = mel.clone()
    changed[0, :, t] += 3.0
    with torch.no_grad():
        diff = (small_generator(changed) - small_generator(mel)).abs()[0, 0]  # [T * hop]
    touched = torch.nonzero(diff > 0).flatten()
    assert touched.numel() > 0
    assert touched.min() >= (t - F) * hop and touched.max() < (t + F + 1) * hop, (touched.min(), touched.max(), F)


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 70), st.integers(1, 25), st.one_of(st.none(), st.integers(1, 10)))
def test_chunked_synthesis_equals_whole(frames, chunk, first):
    torch.manual_seed(frames)
    generator = Generator(hifigan_preset("v3", **SMALL)).eval()
    generator.remove_weight_norm()
    mel = torch.randn(80, frames)
    with torch.no_grad():
        whole = generator(mel[None])[0, 0]
        pieces = list(vocode_in_chunks(generator, mel, chunk, first_chunk_frames=first))
    sizes = [p.numel() for p in pieces]
    hop = generator.hop_length
    expected_first = min(frames, first or chunk) * hop
    assert sizes[0] == expected_first and sum(sizes) == frames * hop
    torch.testing.assert_close(torch.cat(pieces), whole, atol=2e-5, rtol=1e-4)


def test_too_little_context_is_detected(small_generator):
    """The equality above is not vacuous: without context the joins differ."""
    mel = torch.randn(80, 40)
    with torch.no_grad():
        whole = small_generator(mel[None])[0, 0]
        pieces = torch.cat(list(vocode_in_chunks(small_generator, mel, 10, context_frames=0)))
    assert (pieces - whole).abs().max() > 1e-3


def test_discriminators_give_one_score_and_feature_list_per_sub_discriminator():
    cfg = hifigan_preset("demo", discriminator_width=0.125)
    model = HiFiGAN(cfg)
    audio = torch.randn(2, 1, 4000)  # not a multiple of any period: reflect-padded
    scores, features = model.discriminate(audio)
    assert len(scores) == len(cfg.mpd_periods) + cfg.msd_scales == len(features)
    assert all(s.shape[0] == 2 and s.ndim == 2 for s in scores)
    assert [len(f) for f in features] == [6] * 5 + [8] * 3  # 5 convs + post (MPD), 7 + post (MSD)
    # MPD sub-discriminator p sees a [B, C, S / p, p] image
    assert all(f[0].shape[-1] == p for f, p in zip(features[:5], cfg.mpd_periods))
    # the first MSD scale uses spectral norm, the others weight norm (paper)
    names = set(model.msd.state_dict())
    assert "discriminators.0.convs.0.weight_orig" in names and "discriminators.1.convs.0.weight_g" in names


def test_losses_follow_their_formulas():
    real = [torch.tensor([[0.9, 1.2]]), torch.tensor([[1.0]])]
    fake = [torch.tensor([[0.1, -0.3]]), torch.tensor([[0.5]])]
    expected_d = ((0.1 ** 2 + 0.2 ** 2) / 2 + (0.1 ** 2 + 0.3 ** 2) / 2) + (0.0 + 0.25)
    assert discriminator_loss(real, fake).item() == pytest.approx(expected_d)
    expected_g = (0.9 ** 2 + 1.3 ** 2) / 2 + 0.5 ** 2
    assert generator_adversarial_loss(fake).item() == pytest.approx(expected_g)
    perfect = [torch.ones(1, 3)]
    assert discriminator_loss(perfect, [torch.zeros(1, 3)]).item() == 0.0
    fm = feature_matching_loss([[torch.zeros(2), torch.ones(3)]], [[torch.ones(2), torch.ones(3) * 3]])
    assert fm.item() == pytest.approx(1.0 + 2.0)


def test_checkpoint_holds_the_generator_and_loads_for_inference(tmp_path):
    torch.manual_seed(2)
    model = HiFiGAN(hifigan_preset("v3", **SMALL, discriminator_width=0.125))
    path = model.save(tmp_path / "hifigan.pt", meta={"step": 7})
    generator = load_generator(path)
    assert generator.meta["step"] == 7 and not any("weight_g" in n for n in generator.state_dict())
    mel = torch.randn(1, 80, 9)
    with torch.no_grad():
        torch.testing.assert_close(generator(mel), model.generator.eval()(mel), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="'fastpitch' checkpoint was expected"):
        from minivox.fastpitch import FastPitch

        FastPitch.from_checkpoint(path)


@pytest.mark.parametrize("name", ["tiny", "demo", "base"])
def test_presets_load(name):
    cfg = load_model_config(f"configs/hifigan_{name}.toml")
    assert cfg.hop_length == TTS_FEATURES.hop_length


def test_demo_preset_file_equals_the_python_preset():
    cfg = load_model_config("configs/hifigan_demo.toml")
    assert cfg == hifigan_preset("demo", discriminator_width=cfg.discriminator_width)


@pytest.mark.slow
def test_short_gan_training_lowers_the_mel_loss():
    """Generator + discriminator steps as train/hifigan.py runs them, on harmonic tones."""
    torch.manual_seed(0)
    cfg = hifigan_preset("v3", upsample_initial_channel=32, resblock_kernel_sizes=[3],
                         resblock_dilation_sizes=[[1, 2]], mpd_periods=[2, 3], msd_scales=2,
                         discriminator_width=0.125)
    model = HiFiGAN(cfg)
    opt_g = torch.optim.AdamW(model.generator.parameters(), 2e-3, betas=(0.8, 0.99))
    opt_d = torch.optim.AdamW(list(model.mpd.parameters()) + list(model.msd.parameters()), 2e-3, betas=(0.8, 0.99))
    t = torch.arange(4096) / TTS_FEATURES.sample_rate
    f0 = torch.tensor([110.0, 150.0, 220.0, 180.0])[:, None]
    real = (0.3 * torch.sin(2 * math.pi * f0 * t) + 0.1 * torch.sin(4 * math.pi * f0 * t))[:, None]  # [4, 1, S]
    mel, _ = model.loss_mel(real[:, 0])
    history = []
    for step in range(250):
        fake = model.generator(mel)
        real_scores, _ = model.discriminate(real)
        fake_scores, _ = model.discriminate(fake.detach())
        opt_d.zero_grad()
        discriminator_loss(real_scores, fake_scores).backward()
        opt_d.step()
        fake_mel, _ = model.loss_mel(fake[:, 0])
        mel_l1 = (fake_mel - mel).abs().mean()
        _, real_features = model.discriminate(real)
        fake_scores, fake_features = model.discriminate(fake)
        total = generator_adversarial_loss(fake_scores) + 2 * feature_matching_loss(real_features, fake_features) + 45 * mel_l1
        opt_g.zero_grad()
        total.backward()
        opt_g.step()
        history.append(float(mel_l1))
    assert sum(history[-10:]) / 10 < 0.5 * sum(history[:10]) / 10, (history[:10], history[-10:])


# ---------------------------------------------------------------------------
# train/hifigan.py on a small synthetic corpus
# ---------------------------------------------------------------------------

def _tone_corpus(folder) -> tuple[str, str]:
    """WAVs of harmonic tones (22.05 kHz) with short texts, as train/dev manifests."""
    import json

    import numpy as np

    from minivox.audio import write_wav

    rows = []
    for k in range(4):
        seconds = 0.5 + 0.1 * k
        t = np.arange(int(seconds * 22050)) / 22050
        audio = 0.3 * np.sin(2 * np.pi * (110 + 20 * k) * t)
        write_wav(folder / f"utt{k}.wav", audio.astype(np.float32), 22050)
        rows.append({"audio_filepath": str(folder / f"utt{k}.wav"), "duration": seconds, "text": "a tone"})
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    return str(folder / "train.jsonl"), str(folder / "dev.jsonl")


def test_training_script_resumes_exactly_and_fine_tunes_on_fastpitch_mels(tmp_path):
    from minivox.fastpitch import FastPitch, FastPitchConfig
    from minivox.train import hifigan as script

    train, dev = _tone_corpus(tmp_path)
    data = [f"data.train_manifest={train}", f"data.dev_manifest={dev}"]

    def run(out, *extra):
        return script.main(["--config", "configs/hifigan_tiny.toml", "--out", str(tmp_path / out), *extra, *data])

    assert run("straight") == 0  # 1 mel-only step, 3 GAN steps
    assert run("split", "train.run_steps=2") == 0
    assert run("split", "--resume", str(tmp_path / "split" / "state.pt")) == 0
    a = torch.load(tmp_path / "straight" / "state.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "state.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for name in a["model"]:  # generator and discriminators
        assert torch.equal(a["model"][name], b["model"][name]), name
    for x, y in zip(a["extra"]["optimizer_d"]["state"].values(), b["extra"]["optimizer_d"]["state"].values()):
        assert torch.equal(x["exp_avg"], y["exp_avg"])
    assert list((tmp_path / "straight" / "samples").glob("*.wav"))
    generator = load_generator(tmp_path / "straight" / "last.pt")
    assert generator.meta["step"] == 4

    # fine-tuning: FastPitch's teacher-forced mels as input, weights from the finished run
    fastpitch = FastPitch(FastPitchConfig(d_model=16, n_heads=1, d_head=8, d_inner=16, encoder_layers=1,
                                          decoder_layers=1, predictor_filters=8, aligner_channels=8,
                                          pitch_mean=120.0, pitch_std=20.0))
    fastpitch.save(tmp_path / "fp.pt")
    assert run("ft", f"data.fastpitch={tmp_path / 'fp.pt'}", f"train.init_state={tmp_path / 'straight' / 'state.pt'}",
               "train.max_steps=2") == 0
    assert torch.load(tmp_path / "ft" / "state.pt", weights_only=False)["step"] == 2
