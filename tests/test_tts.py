"""TTS: symbol set, streaming chunks == whole-sentence synthesis, sentence order, empty and unspeakable
text, long sentences, the CLI. Small random models: these are properties, not voice quality."""

from __future__ import annotations

import argparse
import io
import math
import warnings

import numpy as np
import pytest
import torch

from minivox.audio import TTS_FEATURES, read_wav
from minivox.fastpitch import FastPitch, FastPitchConfig
from minivox.hifigan import Generator, HiFiGAN, hifigan_preset
from minivox.normalize import normalize_text
from minivox.text import TTS_CHARACTERS, TTS_SYMBOLS, tts_symbol_ids, unspeakable_characters
from minivox.tts import MAX_SYMBOLS, TTS, register

FRAMES_PER_SYMBOL = 5


def _models():
    torch.manual_seed(0)
    fastpitch = FastPitch(FastPitchConfig(d_model=32, n_heads=2, d_head=16, d_inner=64, encoder_layers=1,
                                          decoder_layers=1, predictor_filters=32, aligner_channels=16,
                                          pitch_mean=120.0, pitch_std=20.0)).eval()
    with torch.no_grad():  # about FRAMES_PER_SYMBOL frames per symbol from the untrained predictor
        fastpitch.duration_predictor.fc.weight.mul_(0.01)
        fastpitch.duration_predictor.fc.bias.fill_(math.log(1 + FRAMES_PER_SYMBOL))
    generator = Generator(hifigan_preset("v3", upsample_initial_channel=32, resblock_kernel_sizes=[3, 5],
                                         resblock_dilation_sizes=[[1, 2], [2, 6]])).eval()
    generator.remove_weight_norm()
    return fastpitch, generator


@pytest.fixture(scope="module")
def tts() -> TTS:
    fastpitch, generator = _models()
    return TTS(fastpitch, generator, first_chunk_frames=8, chunk_frames=20)


def _whole_sentence(tts: TTS, sentence: str) -> np.ndarray:
    """The reference: FastPitch then HiFi-GAN on the whole sentence in one call."""
    ids = torch.tensor([tts_symbol_ids(normalize_text(sentence))])
    with torch.inference_mode():
        mels = tts.fastpitch.infer(ids).mels
        return tts.generator(mels)[0, 0].numpy()


# ---------------------------------------------------------------------------
# Symbol set (minivox.text section 3)
# ---------------------------------------------------------------------------

def test_symbol_set_covers_normalised_text():
    assert TTS_SYMBOLS[0] == "<pad>" and len(TTS_SYMBOLS) == 1 + len(TTS_CHARACTERS) == 29
    text = normalize_text("Dr. Smith's 2 cats cost $3.50 at 10:30 — café! 日本")
    ids = tts_symbol_ids(text)
    assert ids[0] == ids[-1] == TTS_SYMBOLS.index(" ")  # a space at both ends
    assert "".join(TTS_SYMBOLS[i] for i in ids) == f" {text} "
    with pytest.raises(ValueError, match="expected normalised text"):
        tts_symbol_ids("Not normalised!")


def test_unspeakable_characters_lists_scripts_and_emoji_not_punctuation():
    assert unspeakable_characters("Hi 😀 there, 日本 — ok! café ½ €5") == ["😀", "日", "本"]
    assert unspeakable_characters("plain text, with punctuation.") == []


# ---------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------

def test_stream_joins_to_the_whole_sentence_output(tts):
    sentence = "this sentence is long enough to need several vocoder chunks of speech"
    chunks = list(tts.stream(sentence))
    hop = TTS_FEATURES.hop_length
    assert len(chunks) > 3
    assert chunks[0].audio.size == tts.first_chunk_frames * hop  # a short first chunk
    assert all(c.audio.size == tts.chunk_frames * hop for c in chunks[1:-1])
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    joined = np.concatenate([c.audio for c in chunks])
    np.testing.assert_allclose(joined, _whole_sentence(tts, sentence), atol=2e-5)


def test_stream_goes_sentence_by_sentence(tts):
    text = "First one here. Then a second sentence! And a third?"
    chunks = list(tts.stream(text))
    assert [c.sentence_index for c in chunks] == sorted(c.sentence_index for c in chunks)
    sentences = ["First one here.", "Then a second sentence!", "And a third?"]
    for index, sentence in enumerate(sentences):
        own = [c for c in chunks if c.sentence_index == index]
        assert own and own[0].sentence == sentence and own[-1].last and not any(c.last for c in own[:-1])
        np.testing.assert_allclose(np.concatenate([c.audio for c in own]), _whole_sentence(tts, sentence), atol=2e-5)
    audio, rate = tts.synthesize(text)
    assert rate == 22050
    np.testing.assert_array_equal(audio, np.concatenate([c.audio for c in chunks]))


def test_pace_changes_the_length(tts):
    normal, _ = tts.synthesize("how fast do i speak")
    fast, _ = tts.synthesize("how fast do i speak", pace=2.0)
    assert 0.4 < fast.size / normal.size < 0.6


@pytest.mark.parametrize("text", ["", "   ", "...!?", "\n\n"])
def test_empty_text_gives_empty_audio(tts, text):
    audio, rate = tts.synthesize(text)
    assert audio.shape == (0,) and audio.dtype == np.float32 and rate == 22050
    assert list(tts.stream(text)) == []


def test_unspeakable_characters_are_dropped_with_a_warning(tts):
    with pytest.warns(UserWarning, match="dropping characters"):
        with_emoji, _ = tts.synthesize("hello 😀 world 日本")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for plain text
        plain, _ = tts.synthesize("hello world")
    np.testing.assert_array_equal(with_emoji, plain)
    with pytest.warns(UserWarning):
        only_emoji, _ = tts.synthesize("😀😀")
    assert only_emoji.size == 0


def test_long_sentences_are_cut_at_word_boundaries(tts):
    words = " ".join(["word"] * 200)  # 999 characters, no punctuation
    pieces = tts.pieces(words)
    assert len(pieces) == 4 and all(index == 0 for index, _, _ in pieces)
    assert all(len(ids) - 2 <= MAX_SYMBOLS for _, _, ids in pieces)
    spoken = " ".join("".join(TTS_SYMBOLS[i] for i in ids).strip() for _, _, ids in pieces)
    assert spoken == words
    chunks = list(tts.stream(words))
    assert sum(c.last for c in chunks) == 1 and chunks[-1].last


def test_bad_arguments(tts):
    with pytest.raises(ValueError, match="pace must be > 0"):
        tts.synthesize("hi", pace=0)
    with pytest.raises(ValueError, match="expected text as str"):
        tts.synthesize(b"bytes")
    with pytest.raises(ValueError, match="does not exist"):
        TTS.from_checkpoints("/nonexistent/fp.pt", "/nonexistent/hg.pt")


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tts_ckpt")
    fastpitch, _ = _models()
    fastpitch.save(folder / "fp.pt")
    torch.manual_seed(0)
    HiFiGAN(hifigan_preset("v3", upsample_initial_channel=32, resblock_kernel_sizes=[3],
                           resblock_dilation_sizes=[[1, 2]], discriminator_width=0.125)).save(folder / "hg.pt")
    return folder / "fp.pt", folder / "hg.pt"


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="minivox")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_a_wav(tmp_path, checkpoints, capsys):
    out = tmp_path / "hello.wav"
    fp, hg = checkpoints
    assert _cli(["synthesize", "Hello there. It is 3:30 pm.", "-o", str(out), "--checkpoint", str(fp),
                 "--vocoder", str(hg), "--pace", "1.2"]) == 0
    audio, rate = read_wav(out)
    assert rate == 22050 and audio.size > 0
    assert "RTF" in capsys.readouterr().err


def test_cli_reads_stdin_and_handles_empty_text(tmp_path, checkpoints, monkeypatch, capsys):
    fp, hg = checkpoints
    monkeypatch.setattr("sys.stdin", io.StringIO("Longer text.\nOn two lines."))
    assert _cli(["synthesize", "--stdin", "-o", str(tmp_path / "a.wav"), "--checkpoint", str(fp), "--vocoder", str(hg)]) == 0
    assert read_wav(tmp_path / "a.wav")[0].size > 0
    assert _cli(["synthesize", "", "-o", str(tmp_path / "b.wav"), "--checkpoint", str(fp), "--vocoder", str(hg)]) == 0
    assert read_wav(tmp_path / "b.wav")[0].size == 0
    assert _cli(["synthesize", "-o", str(tmp_path / "c.wav")]) == 2  # neither text nor --stdin
    assert _cli(["synthesize", "x", "-o", str(tmp_path / "c.wav"), "--checkpoint", "/no/such.pt"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_consumer_code_between_chunks_is_not_in_inference_mode(tts):
    for _ in tts.stream("one sentence. and another one"):
        assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()


def test_importing_the_module_is_cheap():
    """`minivox synthesize` is registered by the `minivox` command: torch loads only when it runs."""
    import subprocess
    import sys

    code = "import sys, minivox.tts; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
