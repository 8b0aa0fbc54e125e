"""Importers for real corpora, on small fixtures written here in each corpus's layout."""

import argparse
import importlib.util
import struct
import sys
import types

import numpy as np
import pytest

from minivox.audio import read_wav, write_wav
from minivox.data import loaders
from minivox.data.manifest import read_manifest, write_manifest
from minivox.metrics import Segment, read_rttm, write_rttm
from minivox.normalize import normalize_text


def tone(seconds, sample_rate, freq=440.0):
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return 0.2 * np.sin(2 * np.pi * freq * t)


def flac_header(sample_rate, channels, bits, num_samples):
    """"fLaC" + a last-block STREAMINFO (34 bytes) as the FLAC format specification lays it out."""
    packed = (sample_rate << 44) | ((channels - 1) << 41) | ((bits - 1) << 36) | num_samples
    streaminfo = struct.pack(">HH", 4096, 4096) + (0).to_bytes(3, "big") * 2 + struct.pack(">Q", packed) + bytes(16)
    return b"fLaC" + bytes([0x80]) + len(streaminfo).to_bytes(3, "big") + streaminfo


def run_cli(*argv):
    parser = argparse.ArgumentParser()
    loaders.register(parser.add_subparsers())
    args = parser.parse_args(["import", *map(str, argv)])
    return args.func(args)


# ----------------------------------------------------------------------------------------------
# headers


@pytest.mark.parametrize("rate, channels, bits, samples", [(16000, 1, 16, 12345), (44100, 2, 24, 2**35 + 7), (8000, 8, 32, 0)])
def test_flac_streaminfo_fields(tmp_path, rate, channels, bits, samples):
    path = tmp_path / "x.flac"
    path.write_bytes(flac_header(rate, channels, bits, samples) + b"\xff\xf8 frames follow")
    assert loaders.flac_streaminfo(path) == {"sample_rate": rate, "channels": channels, "bits": bits, "num_samples": samples}
    assert loaders.audio_duration(path) == pytest.approx(samples / rate)


def test_flac_streaminfo_rejects_other_files(tmp_path):
    path = tmp_path / "x.flac"
    path.write_bytes(b"RIFF....WAVEfmt " + bytes(40))
    with pytest.raises(ValueError, match="not a FLAC file"):
        loaders.flac_streaminfo(path)


@pytest.mark.parametrize("encoding", ["pcm16", "pcm24", "float32"])
def test_wav_duration_from_header_matches_samples(tmp_path, encoding):
    write_wav(tmp_path / "a.wav", tone(1.2345, 22050), 22050, encoding=encoding)
    assert loaders.audio_duration(tmp_path / "a.wav") == pytest.approx(int(round(1.2345 * 22050)) / 22050)


# ----------------------------------------------------------------------------------------------
# LJSpeech


def test_ljspeech(tmp_path):
    root = tmp_path / "LJSpeech-1.1"
    (root / "wavs").mkdir(parents=True)
    lines = ['LJ001-0001|Printing, in the only sense with which we are at present concerned, differs from most arts.|'
             'Printing, in the only sense with which we are at present concerned, differs from most arts.',
             'LJ001-0002|Dr. Smith paid $3 in 1850 "quoted"|Doctor Smith paid three dollars in eighteen fifty "quoted"',
             "LJ001-0003|No normalized column here",
             "LJ001-0004|Its WAV is missing|Its WAV is missing"]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for i, seconds in ((1, 1.5), (2, 0.75), (3, 2.0)):
        write_wav(root / "wavs" / f"LJ001-000{i}.wav", tone(seconds, 22050), 22050)
    messages = []
    rows = loaders.load_ljspeech(root, log=messages.append)
    assert [r["duration"] for r in rows] == [1.5, 0.75, 2.0]
    assert rows[1]["text"] == normalize_text("Doctor Smith paid three dollars in eighteen fifty \"quoted\"")
    assert rows[1]["text_raw"] == 'Dr. Smith paid $3 in 1850 "quoted"'
    assert rows[2]["text"] == normalize_text("No normalized column here")
    assert {r["speaker"] for r in rows} == {"ljspeech"} and any("1 metadata entries" in m for m in messages)
    assert run_cli("ljspeech", root, tmp_path / "lj.jsonl") == 0
    assert read_manifest(tmp_path / "lj.jsonl") == rows


def test_ljspeech_errors(tmp_path):
    with pytest.raises(ValueError, match="metadata.csv"):
        loaders.load_ljspeech(tmp_path)
    (tmp_path / "metadata.csv").write_text("just-an-id\n")
    with pytest.raises(ValueError, match=r"metadata.csv:1: expected 'id\|text"):
        loaders.load_ljspeech(tmp_path)


# ----------------------------------------------------------------------------------------------
# LibriSpeech


def librispeech_tree(root, ext):
    """Two speakers, one chapter each; audio as `ext` ("wav": real WAVs, "flac": headers + a fake body)."""
    durations = {}
    for speaker, chapter, n in (("19", "198", 2), ("2412", "153948", 1)):
        folder = root / speaker / chapter
        folder.mkdir(parents=True)
        lines = []
        for k in range(n):
            utt = f"{speaker}-{chapter}-{k:04d}"
            lines.append(f"{utt} THE {k + 1}ST CHAPTER OF MISTER BROWN'S BOOK")
            seconds = 0.5 + 0.25 * k + len(speaker) * 0.1
            durations[utt] = seconds
            if ext == "wav":
                write_wav(folder / f"{utt}.wav", tone(seconds, 16000), 16000)
            else:
                (folder / f"{utt}.flac").write_bytes(flac_header(16000, 1, 16, int(seconds * 16000)) + b"\xff\xf8")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return durations


def test_librispeech_with_wavs(tmp_path):
    durations = librispeech_tree(tmp_path / "dev-clean", "wav")
    rows = loaders.load_librispeech(tmp_path / "dev-clean")
    assert {r["audio_filepath"].rsplit("/", 1)[1][:-4]: r["duration"] for r in rows} == pytest.approx(durations)
    assert rows[0]["text"] == normalize_text("THE 1ST CHAPTER OF MISTER BROWN'S BOOK")
    assert rows[0]["text"] == rows[0]["text"].lower()
    assert sorted({r["speaker"] for r in rows}) == ["librispeech-19", "librispeech-2412"]


def test_librispeech_flac_without_decoder_is_a_clear_error(tmp_path, monkeypatch):
    librispeech_tree(tmp_path / "src", "flac")
    monkeypatch.setitem(sys.modules, "soundfile", None)  # makes `import soundfile` raise ImportError
    with pytest.raises(ValueError, match="pip install soundfile"):
        loaders.load_librispeech(tmp_path / "src", wav_dir=tmp_path / "wavs")
    with pytest.raises(ValueError, match="pip install soundfile"):
        run_cli("librispeech", tmp_path / "src", tmp_path / "out.jsonl")
    rows = loaders.load_librispeech(tmp_path / "src", keep_flac=True)  # header durations, no decoder needed
    assert all(r["audio_filepath"].endswith(".flac") for r in rows) and rows[0]["duration"] == pytest.approx(0.7)


def test_librispeech_flac_decoded_to_wav(tmp_path, monkeypatch):
    durations = librispeech_tree(tmp_path / "src", "flac")
    decoded = []

    def fake_read(path, dtype, always_2d):  # a stand-in decoder: stereo 8 kHz audio of the header's length
        info = loaders.flac_streaminfo(path)
        decoded.append(path)
        seconds = info["num_samples"] / info["sample_rate"]
        return np.stack([tone(seconds, 8000), tone(seconds, 8000)], axis=1).astype(dtype), 8000

    monkeypatch.setitem(sys.modules, "soundfile", types.SimpleNamespace(read=fake_read))
    assert run_cli("librispeech", tmp_path / "src", tmp_path / "ls.jsonl", "--wav-dir", tmp_path / "wavs") == 0
    rows = read_manifest(tmp_path / "ls.jsonl")
    assert len(decoded) == 3
    for row in rows:
        audio, sr = read_wav(row["audio_filepath"])
        utt = row["audio_filepath"].rsplit("/", 1)[1][:-4]
        assert sr == 16000 and audio.ndim == 1 and row["audio_filepath"].startswith(str(tmp_path / "wavs"))
        assert row["duration"] == pytest.approx(durations[utt], abs=1e-3) == pytest.approx(len(audio) / sr, abs=1e-3)
    # a second import reuses the decoded WAVs
    loaders.load_librispeech(tmp_path / "src", wav_dir=tmp_path / "wavs")
    assert len(decoded) == 3


@pytest.mark.skipif(importlib.util.find_spec("soundfile") is None, reason="optional soundfile not installed (pip install soundfile)")
def test_librispeech_real_flac_round_trip(tmp_path):
    import soundfile

    folder = tmp_path / "src" / "7" / "8"
    folder.mkdir(parents=True)
    soundfile.write(folder / "7-8-0000.flac", tone(1.25, 16000), 16000, subtype="PCM_16")
    (folder / "7-8.trans.txt").write_text("7-8-0000 HELLO WORLD\n")
    assert loaders.flac_streaminfo(folder / "7-8-0000.flac")["num_samples"] == 20000
    rows = loaders.load_librispeech(tmp_path / "src", wav_dir=tmp_path / "wavs")
    audio, _ = read_wav(rows[0]["audio_filepath"])
    assert np.max(np.abs(audio - tone(1.25, 16000))) < 1e-3


def test_librispeech_layout_errors(tmp_path):
    with pytest.raises(ValueError, match="LibriSpeech layout"):
        loaders.load_librispeech(tmp_path)
    (tmp_path / "1" / "2").mkdir(parents=True)
    (tmp_path / "1" / "2" / "1-2.trans.txt").write_text("badid SOME TEXT\n")
    with pytest.raises(ValueError, match="1-2.trans.txt:1"):
        loaders.load_librispeech(tmp_path)


# ----------------------------------------------------------------------------------------------
# NeMo manifests and RTTM folders


def test_nemo_manifest_paths_resolved_and_missing_dropped(tmp_path):
    (tmp_path / "audio").mkdir()
    write_wav(tmp_path / "audio" / "a.wav", tone(1.0, 16000), 16000)
    write_manifest(tmp_path / "m.jsonl", [
        {"audio_filepath": "audio/a.wav", "duration": 1.0, "text": "hello", "speaker": 3, "lang": "en"},
        {"audio_filepath": "audio/missing.wav", "duration": 2.0, "text": "gone"}])
    messages = []
    rows = loaders.load_nemo(tmp_path / "m.jsonl", log=messages.append)
    assert rows == [{"audio_filepath": str(tmp_path / "audio" / "a.wav"), "duration": 1.0, "text": "hello",
                     "speaker": 3, "lang": "en"}]
    assert "1 rows" in messages[0]
    assert run_cli("nemo", tmp_path / "m.jsonl", tmp_path / "out" / "copy.jsonl") == 0
    assert read_manifest(tmp_path / "out" / "copy.jsonl") == rows


def test_rttm_dir_pairs_audio_and_splits_multi_recording_files(tmp_path):
    audio, rttms = tmp_path / "wav", tmp_path / "rttm"
    audio.mkdir()
    rttms.mkdir()
    for name, seconds in (("rec1", 3.0), ("rec2", 2.0), ("solo", 1.5)):
        write_wav(audio / f"{name}.wav", tone(seconds, 16000), 16000)
    both = {"rec1": [Segment(0.0, 1.0, "A"), Segment(0.5, 2.0, "B"), Segment(2.0, 2.5, "A")],
            "rec2": [Segment(0.1, 1.9, "C")], "norec": [Segment(0.0, 1.0, "Z")]}
    write_rttm(rttms / "all.rttm", both)
    write_rttm(rttms / "solo.rttm", {"solo": [Segment(0.2, 1.2, "X"), Segment(1.2, 1.4, "Y")]})
    messages = []
    assert run_cli("rttm", audio, rttms, tmp_path / "diar.jsonl") == 0
    rows = read_manifest(tmp_path / "diar.jsonl", required=loaders.DIAR_FIELDS)
    by_id = {r["audio_filepath"].rsplit("/", 1)[1][:-4]: r for r in rows}
    assert sorted(by_id) == ["rec1", "rec2", "solo"]
    assert [by_id[k]["num_speakers"] for k in ("rec1", "rec2", "solo")] == [2, 1, 2]
    assert [by_id[k]["duration"] for k in ("rec1", "rec2", "solo")] == [3.0, 2.0, 1.5]
    assert read_rttm(by_id["rec1"]["rttm_filepath"]) == {"rec1": both["rec1"]}  # its own RTTM, same turns
    assert by_id["solo"]["rttm_filepath"] == str((rttms / "solo.rttm").resolve())
    loaders.load_rttm_dir(audio, rttms, tmp_path / "split", log=messages.append)
    assert any("1 recordings without audio" in m for m in messages)
