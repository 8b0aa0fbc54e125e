"""Conversation mixing: RTTM segments sit where each speaker's audio has energy, overlaps appear when
configured (and not otherwise), held-out voices never reach train/dev, runs are deterministic and resume.

Fixture voices are sine tones with exact digital silence around and between bursts, so where each
speaker has energy is known without any detector; one test uses espeak-ng speech when it is installed."""

import math
import shutil
import subprocess

import numpy as np
import pytest

from minivox.audio import read_wav, write_wav
from minivox.data import mix
from minivox.data.manifest import read_manifest, write_manifest
from minivox.metrics import Segment, read_rttm

SR = 16000
FRAME = 0.01  # seconds per frame of the energy check
COLLAR = 0.04  # frames this close to an RTTM boundary are not judged (a 25 ms detector frame + fades)


def tone_corpus(folder, num_speakers=5, per_speaker=4, seed=0):
    """Utterances of tone 'voices': leading silence, 1-2 bursts (0.5 s apart), trailing silence."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(num_speakers):
        for j in range(per_speaker):
            parts = [np.zeros(int(rng.uniform(0.1, 0.4) * SR))]
            for burst in range(1 + j % 2):
                if burst:
                    parts.append(np.zeros(int(0.5 * SR)))
                t = np.arange(int(rng.uniform(0.4, 1.2) * SR)) / SR
                parts.append(0.3 * np.sin(2 * np.pi * (200 + 90 * k) * t))
            parts.append(np.zeros(int(rng.uniform(0.2, 0.5) * SR)))
            audio = np.concatenate(parts)
            path = folder / f"s{k}_{j}.wav"
            write_wav(path, audio, SR)
            rows.append({"audio_filepath": path.name, "duration": len(audio) / SR, "text": "tone", "speaker": f"s{k}"})
    write_manifest(folder / "utts.jsonl", rows)
    return folder / "utts.jsonl"


def config(out_dir, manifest, **mix_overrides):
    cfg = mix.DiarDataConfig(out_dir=str(out_dir), seed=3, num_workers=1)
    settings = dict(manifests=[str(manifest)], test_speakers=["s3", "s4"], num_train=6, num_dev=2, num_test=3,
                    duration=[4.0, 8.0], overlap_prob=0.5, interjection_prob=0.5, dev_fraction=0.25, noise_prob=0.0,
                    min_speaker_utterances=1)
    settings.update(mix_overrides)
    cfg.mix = mix.MixConfig(**settings)
    return cfg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tone_corpus(tmp_path_factory.mktemp("tones"))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, corpus):
    cfg = config(tmp_path_factory.mktemp("mixed"), corpus)
    return cfg, mix.run_mix(cfg, log=lambda m: None)


def frame_activity(audio: np.ndarray, threshold: float) -> np.ndarray:
    """[T] bool: 10 ms frames whose RMS exceeds threshold (the fixture's silence is exactly zero)."""
    n = len(audio) // int(FRAME * SR)
    frames = audio[: n * int(FRAME * SR)].reshape(n, -1)
    return np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) > threshold


def rttm_activity(segments, speaker, num_frames):
    """[T] bool from RTTM, plus [T] bool of frames near a boundary of that speaker (not judged)."""
    centres = (np.arange(num_frames) + 0.5) * FRAME
    active = np.zeros(num_frames, bool)
    near = np.zeros(num_frames, bool)
    for seg in segments:
        if seg.speaker == speaker:
            active |= (centres >= seg.start) & (centres < seg.end)
            near |= (np.abs(centres - seg.start) < COLLAR) | (np.abs(centres - seg.end) < COLLAR)
    return active, near


def regenerate(cfg, split, index, pool):
    rng = mix.conversation_rng(cfg.seed, split, index)
    load = mix.SourceAudio(cfg.mix.sample_rate, cfg.mix.vad)
    conv = mix.plan_conversation(rng, pool, cfg.mix, load)
    return conv, *mix.render(conv, load, rng)


def test_rttm_segments_line_up_with_each_speakers_energy(mixed, corpus):
    cfg, out = mixed
    rows = read_manifest(corpus)
    pools, _ = mix.split_pools(rows, cfg.mix, cfg.seed)
    judged = 0
    for split, manifest_rows in out.items():
        for row in manifest_rows:
            name = f"{split}_{row['index']:06d}"
            segments = read_rttm(f"{cfg.out_dir}/{row['rttm_filepath']}")[name]
            written, sr = read_wav(f"{cfg.out_dir}/{row['audio_filepath']}")
            conv, mixture, tracks = regenerate(cfg, split, row["index"], pools[split])
            assert sr == SR and len(written) == len(mixture) and row["duration"] == pytest.approx(len(written) / SR, abs=1e-4)
            # the file is the regenerated mix (PCM16), which is the sum of the speaker tracks (no noise here)
            assert np.max(np.abs(written - mixture)) < 1.5 / 32768
            assert np.allclose(mixture, tracks.sum(axis=0), atol=1e-6)
            assert sorted({s.speaker for s in segments}) == sorted(conv.speakers) == sorted(row["speakers"])
            for speaker, track in zip(conv.speakers, tracks):
                energy = frame_activity(track, threshold=0.01)
                active, near = rttm_activity(segments, speaker, len(energy))
                disagree = (energy != active) & ~near
                assert not disagree.any(), (name, speaker, np.flatnonzero(disagree)[:10] * FRAME)
                judged += int((~near).sum())
    assert judged > 5000


def test_internal_pauses_split_segments_and_edges_are_trimmed(tmp_path):
    audio = np.concatenate([np.zeros(4000), 0.3 * np.sin(np.arange(8000) * 0.1), np.zeros(8000),
                            0.2 * np.sin(np.arange(4800) * 0.2), np.zeros(3200)])
    intervals = mix.speech_intervals(audio, SR)
    assert len(intervals) == 2
    (a0, a1), (b0, b1) = intervals
    assert a0 == pytest.approx(0.25, abs=0.025) and a1 == pytest.approx(0.75, abs=0.025)
    assert b0 == pytest.approx(1.25, abs=0.025) and b1 == pytest.approx(1.55, abs=0.025)
    short_gap = np.concatenate([0.3 * np.ones(3200), np.zeros(1600), 0.3 * np.ones(3200)])  # 0.1 s pause < min_pause
    assert len(mix.speech_intervals(short_gap, SR)) == 1


def test_overlaps_present_when_configured_and_absent_otherwise(tmp_path, corpus, mixed):
    _, out = mixed
    assert max(row["overlap"] for rows in out.values() for row in rows) > 0.02
    cfg = config(tmp_path / "none", corpus, overlap_prob=0.0, interjection_prob=0.0, num_dev=0, num_test=0)
    rows = mix.run_mix(cfg, log=lambda m: None)["train"]
    for row in rows:
        segments = read_rttm(f"{cfg.out_dir}/{row['rttm_filepath']}")[f"train_{row['index']:06d}"]
        assert mix.overlap_fraction(segments) == 0.0


def test_overlap_fraction_reference():
    segs = [Segment(0.0, 2.0, "a"), Segment(1.5, 3.0, "b"), Segment(2.5, 4.0, "c"), Segment(5.0, 6.0, "a")]
    # speech union: [0, 4] + [5, 6] = 5 s; two or more active: [1.5, 2] + [2.5, 3] = 1 s
    assert mix.overlap_fraction(segs) == pytest.approx(1.0 / 5.0)


def test_heldout_voices_only_in_test(mixed):
    cfg, out = mixed
    heldout = set(cfg.mix.test_speakers)
    for split, rows in out.items():
        for row in rows:
            segments = [s for segs in read_rttm(f"{cfg.out_dir}/{row['rttm_filepath']}").values() for s in segs]
            labels = {s.speaker for s in segments}
            first = {label: min(s.start for s in segments if s.speaker == label) for label in labels}
            assert sorted(labels, key=first.get) == row["speakers"]  # listed in order of arrival
            assert (labels <= heldout) if split == "test" else not (labels & heldout), (split, labels)
    assert all(2 <= row["num_speakers"] <= 4 for rows in out.values() for row in rows)


def test_dev_and_train_utterances_are_disjoint(corpus):
    cfg = config("unused", corpus)
    pools, heldout = mix.split_pools(read_manifest(corpus), cfg.mix, cfg.seed)
    files = {split: {path for paths in pool.utterances.values() for path, _ in paths} for split, pool in pools.items()}
    assert not files["train"] & files["dev"] and files["dev"] and heldout == ["s3", "s4"]


def test_deterministic_and_resumes_after_interruption(tmp_path, corpus, mixed):
    cfg_a, out_a = mixed
    cfg = config(tmp_path / "b", corpus, num_train=3, num_dev=0, num_test=0)
    mix.run_mix(cfg, log=lambda m: None)
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "b" / "train").iterdir()}
    # an interrupted run: a progress line cut short, the final manifest not yet written
    (tmp_path / "b" / "train.jsonl").rename(tmp_path / "b" / ".train.progress.jsonl")
    with open(tmp_path / "b" / ".train.progress.jsonl", "a") as f:
        f.write('{"audio_filepath": "train/train_0000')
    cfg = config(tmp_path / "b", corpus)
    out_b = mix.run_mix(cfg, log=lambda m: None)
    for p in (tmp_path / "b" / "train").iterdir():
        if p.name in first:
            assert p.stat().st_mtime_ns == first[p.name], f"{p.name} was rewritten"
    assert not (tmp_path / "b" / ".train.progress.jsonl").exists()
    for split in mix.SPLITS:
        assert [r["index"] for r in out_b[split]] == list(range(len(out_a[split])))
        for row_a, row_b in zip(out_a[split], out_b[split]):
            for key in ("audio_filepath", "rttm_filepath"):
                assert (tmp_path / "b" / row_b[key]).read_bytes() == open(f"{cfg_a.out_dir}/{row_a[key]}", "rb").read()


def test_noise_is_added_at_the_configured_snr(tmp_path, corpus):
    cfg = config(tmp_path, corpus, noise_prob=1.0, snr_db=[20.0, 20.0])
    pools, _ = mix.split_pools(read_manifest(corpus), cfg.mix, cfg.seed)
    conv, mixture, tracks = regenerate(cfg, "train", 0, pools["train"])
    speech = tracks.sum(axis=0).astype(np.float64)
    noise = mixture - speech
    snr = 10 * math.log10(np.mean(speech[np.abs(speech) > 0] ** 2) / np.mean(noise**2))
    assert conv.noise_snr_db == 20.0 and snr == pytest.approx(20.0, abs=0.2)


def test_manifest_and_config_errors(tmp_path, corpus):
    with pytest.raises(ValueError, match="not in the manifests"):
        mix.split_pools(read_manifest(corpus), config(tmp_path, corpus, test_speakers=["nobody"]).mix, 0)
    only_two = [r for r in read_manifest(corpus) if r["speaker"] in ("s0", "s3")]
    write_manifest(tmp_path / "two.jsonl", only_two)
    with pytest.raises(ValueError, match="at least 2 voices"):
        mix.run_mix(config(tmp_path / "out", tmp_path / "two.jsonl", test_speakers=["s3"]), log=lambda m: None)


def test_recipe_config_loads():
    from minivox.config import load_config

    cfg = load_config(mix.DiarDataConfig, "configs/data_diar.toml")
    assert cfg.mix.num_train >= 2000 and cfg.num_workers >= 1 and len(cfg.mix.test_speakers) >= 4


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (apt-get install espeak-ng)")
def test_speech_voices_segments_have_energy_and_silence_outside(tmp_path):
    """Real synthetic speech (espeak-ng at 22.05 kHz, resampled to 16 kHz on load): every RTTM segment
    of a speaker has that speaker's energy in it, and outside the segments the track is quiet."""
    rows = []
    for voice in ("en-us", "en-gb", "en-us+f3"):
        for i, text in enumerate(["Turn the lights off in the kitchen.", "What time is it?", "Yes."]):
            path = tmp_path / f"{voice.replace('+', '_')}_{i}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
            audio, sr = read_wav(path)
            rows.append({"audio_filepath": str(path), "duration": len(audio) / sr, "text": text, "speaker": voice})
    write_manifest(tmp_path / "speech.jsonl", rows)
    cfg = config(tmp_path / "out", tmp_path / "speech.jsonl", test_speakers=["en-gb"], num_train=2, num_dev=0,
                 num_test=0, duration=[5.0, 6.0], dev_fraction=0.0)
    pools, _ = mix.split_pools(rows, cfg.mix, cfg.seed)
    for index in range(2):
        conv, _, tracks = regenerate(cfg, "train", index, pools["train"])
        segments = conv.segments()
        for speaker, track in zip(conv.speakers, tracks):
            n = len(track) // int(FRAME * SR)
            rms = np.sqrt(np.mean(track[: n * int(FRAME * SR)].reshape(n, -1).astype(np.float64) ** 2, axis=1))
            active, near = rttm_activity(segments, speaker, n)
            peak_db = 20 * np.log10(rms.max())
            outside_db = 20 * np.log10(rms[~active & ~near].max() + 1e-9)
            assert outside_db < peak_db - 30, (speaker, outside_db, peak_db)  # silence outside the segments
            for seg in segments:
                if seg.speaker == speaker:  # each segment holds speech of that speaker
                    inside = rms[int(seg.start / FRAME):int(math.ceil(seg.end / FRAME))]
                    assert 20 * np.log10(inside.max()) > peak_db - 20, (speaker, seg)


def test_process_pool_gives_the_same_files(tmp_path, corpus, mixed):
    """Two worker processes (spawned) produce byte-identical conversations to the in-process run."""
    cfg_a, out_a = mixed
    cfg = config(tmp_path, corpus, num_dev=0, num_test=0)
    cfg.num_workers = 2
    out = mix.run_mix(cfg, log=lambda m: None)
    assert [r["index"] for r in out["train"]] == list(range(cfg.mix.num_train))
    for row_a, row in zip(out_a["train"], out["train"]):
        assert row == row_a
        assert (tmp_path / row["audio_filepath"]).read_bytes() == open(f"{cfg_a.out_dir}/{row_a['audio_filepath']}", "rb").read()


def test_mix_command(tmp_path, corpus):
    import argparse

    parser = argparse.ArgumentParser()
    mix.register(parser.add_subparsers())
    args = parser.parse_args(["mix", "--config", "configs/data_diar.toml", f"out_dir={tmp_path}", "num_workers=1",
                              f'mix.manifests=["{corpus}"]', 'mix.test_speakers=["s4"]', "mix.heldout_field=speaker", "mix.min_speaker_utterances=1", "mix.num_train=2",
                              "mix.num_dev=1", "mix.num_test=0", "mix.duration=[3.0, 4.0]", "mix.dev_fraction=0.25"])
    assert args.func(args) == 0
    rows = read_manifest(tmp_path / "train.jsonl", required=mix.MANIFEST_FIELDS)
    assert len(rows) == 2 and all(r["audio_filepath"].startswith(str(tmp_path)) for r in rows)
    assert read_manifest(tmp_path / "test.jsonl", required=mix.MANIFEST_FIELDS) == []


def test_perturbed_copies_of_a_voice_never_share_a_conversation(tmp_path, corpus):
    """Rows as `minivox data synth` writes them: pseudo-speakers `s0~sp1.1` of voice `s0`, some noisy."""
    rows = []
    for r in read_manifest(corpus):
        rows.append({**r, "base_speaker": r["speaker"], "noise": "none"})
        rows.append({**r, "speaker": r["speaker"] + "~sp1.1", "base_speaker": r["speaker"], "noise": "none"})
        rows.append({**r, "speaker": r["speaker"] + "~noisy", "base_speaker": r["speaker"], "noise": "pink"})
    write_manifest(tmp_path / "synth.jsonl", rows)
    cfg = config(tmp_path / "out", tmp_path / "synth.jsonl", heldout_field="base_speaker", exclude_if=["noise", "rt60"],
                 num_train=8, num_dev=0, num_test=2)
    pools, _ = mix.split_pools(read_manifest(tmp_path / "synth.jsonl"), cfg.mix, cfg.seed)
    assert not any(s.endswith("~noisy") for pool in pools.values() for s in pool.utterances)
    assert set(pools["test"].groups.values()) == {"s3", "s4"} and "s3~sp1.1" in pools["test"].utterances
    out = mix.run_mix(cfg, log=lambda m: None)
    used = set()
    for split, manifest_rows in out.items():
        for row in manifest_rows:
            voices = [s.split("~")[0] for s in row["speakers"]]
            assert len(set(voices)) == len(voices), row["speakers"]
            used |= set(row["speakers"])
    assert any("~sp1.1" in s for s in used)


def test_diarization_holds_out_the_asr_recipes_test_voices():
    from minivox.config import tomllib  # tomllib, or tomli on Python 3.10

    asr = tomllib.loads(open("configs/data_asr.toml", encoding="utf-8").read())
    diar = tomllib.loads(open("configs/data_diar.toml", encoding="utf-8").read())
    assert sorted(diar["mix"]["test_speakers"]) == sorted(asr["test_speakers"])


def test_resuming_with_another_config_or_corpus_is_refused(tmp_path, corpus):
    mix.run_mix(config(tmp_path, corpus, num_train=1, num_dev=0, num_test=0), log=lambda m: None)
    mix.run_mix(config(tmp_path, corpus, num_train=2, num_dev=0, num_test=0), log=lambda m: None)  # counts may grow
    with pytest.raises(ValueError, match="another config or other source utterances"):
        mix.run_mix(config(tmp_path, corpus, num_train=2, num_dev=0, num_test=0, pause_mean=0.9), log=lambda m: None)
    rows = read_manifest(corpus)[:-1]  # one source utterance fewer
    write_manifest(tmp_path / "fewer.jsonl", rows)
    with pytest.raises(ValueError, match="another config or other source utterances"):
        mix.run_mix(config(tmp_path, tmp_path / "fewer.jsonl", num_train=2, num_dev=0, num_test=0), log=lambda m: None)


def test_rare_speakers_dropped_and_no_utterance_repeats_while_others_are_left(tmp_path, corpus):
    cfg = config(tmp_path, corpus, min_speaker_utterances=3, dev_fraction=0.25)
    pools, _ = mix.split_pools(read_manifest(corpus), cfg.mix, cfg.seed)
    assert pools["dev"].utterances == {}  # 1 of 4 utterances per speaker went to dev: too few
    assert all(len(u) >= 3 for u in pools["train"].utterances.values())
    for index in range(6):
        conv, _, _ = regenerate(cfg, "train", index, pools["train"])
        for speaker in conv.speakers:
            paths = [p.audio_filepath for p in conv.placements if p.speaker == speaker]
            assert len(set(paths)) == min(len(paths), len(pools["train"].utterances[speaker])), (speaker, paths)
