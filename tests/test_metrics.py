"""Tests for minivox.metrics: WER/CER, RTTM, Hungarian assignment, DER/JER, EOU, CLI.

Oracles: hand-computed cases; a memoised recursive Levenshtein distance; jiwer (exact S/D/I
split) and pyannote.metrics (DER parts) as peers when installed; brute force over all speaker
mappings on a frame grid for DER and JER (segment times on a 0.25 s grid, so the frames are
exact); brute force and scipy for the assignment solver; numpy for percentiles; and properties
(hypothesis).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
from collections import Counter
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivox.metrics import (
    DERResult, EOUResult, ErrorCounts, JERResult, Segment, char_error_rate, diarization_error_rate,
    edit_counts, eou_metrics, jaccard_error_rate, min_cost_assignment, percentile, read_rttm, register,
    word_error_rate, write_rttm,
)

# ----------------------------------------------------------------------------------------------
# WER / CER


def _slow_distance(a, b) -> int:
    """Levenshtein distance by the textbook recursion (memoised)."""

    @lru_cache(maxsize=None)
    def d(i, j):
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


def _sdih(c: ErrorCounts):
    return c.substitutions, c.deletions, c.insertions, c.hits


def test_wer_hand_cases():
    c = word_error_rate("the cat sat on the mat", "the cat sit on mat")
    assert _sdih(c) == (1, 1, 0, 4) and c.reference_length == 6 and c.rate == pytest.approx(2 / 6)
    assert _sdih(word_error_rate("a b c", "a b c")) == (0, 0, 0, 3)
    assert _sdih(word_error_rate("a b c", "")) == (0, 3, 0, 0)
    assert word_error_rate("a b c", "").rate == 1.0
    assert _sdih(word_error_rate("", "x y")) == (0, 0, 2, 0)
    # corpus: counts add up before dividing, whitespace runs and ends do not matter
    c = word_error_rate(["a b", "  c  d\te "], ["a x", "c e"])
    assert _sdih(c) == (1, 1, 0, 3) and c.reference_length == 5 and c.rate == pytest.approx(2 / 5)


def test_empty_reference_rate_is_the_insertion_count():
    # jiwer's convention: errors / max(N, 1); no division by zero
    assert word_error_rate("", "x y z").rate == 3.0
    assert word_error_rate("", "").rate == 0.0
    assert word_error_rate(["", "a"], ["x", "a"]).rate == 1.0  # 1 insertion / 1 reference word
    assert ErrorCounts().rate == 0.0


@pytest.mark.parametrize(
    "ref, hyp, sdih",
    [  # ties between optimal alignments, split as jiwer 4.0 / rapidfuzz 3.14 report them
        ("a b", "b c", (2, 0, 0, 0)),
        ("a b", "b a", (0, 1, 1, 1)),
        ("a b c", "b c d", (0, 1, 1, 2)),
        ("a a b", "b a a", (0, 1, 1, 2)),
        ("x y z", "x z y w", (1, 0, 1, 2)),
        ("a b c d", "d c b a", (2, 1, 1, 1)),
        ("a", "b b b", (1, 0, 2, 0)),
        ("a b a b", "b a b a", (0, 1, 1, 3)),
        ("a a a", "a a", (0, 1, 0, 2)),
    ],
)
def test_tie_breaking_matches_jiwer_golden(ref, hyp, sdih):
    assert _sdih(edit_counts(ref.split(), hyp.split())) == sdih


def test_cer_hand_cases():
    c = char_error_rate("abc", "abd")
    assert _sdih(c) == (1, 0, 0, 2) and c.rate == pytest.approx(1 / 3)
    c = char_error_rate("a b", "ab")  # the space is a character
    assert _sdih(c) == (0, 1, 0, 2)
    assert _sdih(char_error_rate("  a   b ", "a b")) == (0, 0, 0, 3)  # whitespace runs collapsed


def test_error_counts_validation_and_sum():
    with pytest.raises(ValueError, match="reference_length"):
        ErrorCounts(1, 0, 0, 1, 3)
    with pytest.raises(ValueError, match="ints >= 0"):
        ErrorCounts(-1, 0, 0, 1, 0)
    parts = [edit_counts("ab", "ac"), edit_counts("", "x"), edit_counts("abc", "c")]
    total = sum(parts, ErrorCounts())
    assert _sdih(total) == (1, 2, 1, 2) and total.reference_length == 5 and total.hypothesis_length == 4
    with pytest.raises(ValueError, match="2 references and 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])


tokens = st.lists(st.integers(0, 3), max_size=9)


@given(tokens, tokens)
def test_edit_counts_against_slow_reference(ref, hyp):
    c = edit_counts(ref, hyp)
    assert c.errors == _slow_distance(tuple(ref), tuple(hyp))
    assert c.reference_length == len(ref) and c.hypothesis_length == len(hyp)


@given(tokens, tokens)
def test_wer_properties(ref, hyp):
    assert edit_counts(ref, ref).errors == 0 and edit_counts(ref, ref).hits == len(ref)
    forward, backward = edit_counts(ref, hyp), edit_counts(hyp, ref)
    assert forward.errors == backward.errors  # edit distance is symmetric
    assert forward.rate * max(len(ref), 1) == pytest.approx(backward.rate * max(len(hyp), 1))
    assert forward.deletions - forward.insertions == len(ref) - len(hyp)


@settings(max_examples=200)
@given(tokens, tokens)
def test_edit_counts_match_jiwer_exactly(ref, hyp):
    jiwer = importlib.import_module("jiwer")
    ref_words, hyp_words = " ".join(f"w{t}" for t in ref), " ".join(f"w{t}" for t in hyp)
    out = jiwer.process_words(ref_words, hyp_words)
    assert _sdih(word_error_rate(ref_words, hyp_words)) == (out.substitutions, out.deletions, out.insertions, out.hits)


sentences = st.text("ab c", max_size=12)


@given(st.lists(st.tuples(sentences, sentences), min_size=1, max_size=4))
def test_corpus_wer_and_cer_match_jiwer(pairs):
    jiwer = importlib.import_module("jiwer")
    refs = [" ".join(r.split()) for r, _ in pairs]
    hyps = [" ".join(h.split()) for _, h in pairs]
    words = jiwer.process_words(refs, hyps)
    assert _sdih(word_error_rate(refs, hyps)) == (words.substitutions, words.deletions, words.insertions, words.hits)
    assert word_error_rate(refs, hyps).rate == pytest.approx(words.wer)
    chars = jiwer.process_characters(refs, hyps)
    assert _sdih(char_error_rate(refs, hyps)) == (chars.substitutions, chars.deletions, chars.insertions, chars.hits)
    assert char_error_rate(refs, hyps).rate == pytest.approx(chars.cer)  # also with empty references


# ----------------------------------------------------------------------------------------------
# RTTM

RTTM_SAMPLE = """;; a comment
SPKR-INFO meeting1 1 <NA> <NA> <NA> unknown alice <NA> <NA>
SPEAKER meeting1 1 0.500 2.250 <NA> <NA> alice <NA> <NA>

SPEAKER meeting1 1 2.000 1.000 <NA> <NA> bob <NA> <NA>
SPEAKER call_2 1 10 0.5 <NA> <NA> spk0 <NA>
"""


def test_read_rttm_sample(tmp_path):
    path = tmp_path / "ref.rttm"
    path.write_text(RTTM_SAMPLE)
    assert read_rttm(path) == {
        "meeting1": [Segment(0.5, 2.75, "alice"), Segment(2.0, 3.0, "bob")],
        "call_2": [Segment(10.0, 10.5, "spk0")],
    }


@pytest.mark.parametrize(
    "line, message",
    [
        ("SPEAKER f 1 0.0 1.0 <NA> <NA>", "at least 8 fields"),
        ("SPEAKER f 1 zero 1.0 <NA> <NA> a <NA> <NA>", "numeric onset"),
        ("SPEAKER f 1 0.0 -1.0 <NA> <NA> a <NA> <NA>", "duration >= 0"),
        ("SPEAKER f 1 nan 1.0 <NA> <NA> a <NA> <NA>", "finite"),
    ],
)
def test_read_rttm_malformed_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.rttm"
    path.write_text("SPEAKER f 1 0.0 1.0 <NA> <NA> a <NA> <NA>\n\n" + line + "\n")
    with pytest.raises(ValueError, match=message) as info:
        read_rttm(path)
    assert f"{path}:3:" in str(info.value)


def test_write_rttm_rejects_whitespace_names(tmp_path):
    with pytest.raises(ValueError, match="speaker label"):
        write_rttm(tmp_path / "x.rttm", {"f": [Segment(0, 1, "two words")]})
    with pytest.raises(ValueError, match="file id"):
        write_rttm(tmp_path / "x.rttm", {"": [Segment(0, 1, "a")]})


names = st.text("abcXYZ019_-.", min_size=1, max_size=8)


ms_turns = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**5), names), max_size=5)  # (onset, dur) ms


@settings(max_examples=50)
@given(st.dictionaries(names, ms_turns, max_size=3))
def test_rttm_round_trip(tmp_path_factory, corpus):
    segments = {f: [Segment(a / 1000, (a + d) / 1000, spk) for a, d, spk in segs] for f, segs in corpus.items()}
    path = tmp_path_factory.mktemp("rttm") / "x.rttm"
    write_rttm(path, segments)
    back = read_rttm(path)
    assert back == {f: back[f] for f, segs in segments.items() if segs}  # files without turns vanish
    for f, segs in back.items():
        for got, want in zip(segs, segments[f], strict=True):
            assert (got.speaker, got.start) == (want.speaker, want.start)
            assert got.end == pytest.approx(want.end, abs=1e-9)


# ----------------------------------------------------------------------------------------------
# Assignment


def _brute_force_min_cost(cost):
    rows, cols = len(cost), len(cost[0])
    if rows <= cols:
        return min(sum(cost[i][p[i]] for i in range(rows)) for p in itertools.permutations(range(cols), rows))
    return min(sum(cost[p[j]][j] for j in range(cols)) for p in itertools.permutations(range(rows), cols))


@given(st.integers(1, 5), st.integers(1, 5), st.data())
def test_assignment_is_optimal(rows, cols, data):
    cost = [[data.draw(st.floats(-10, 10)) for _ in range(cols)] for _ in range(rows)]
    pairs = min_cost_assignment(cost)
    assert len(pairs) == min(rows, cols)
    assert len({r for r, _ in pairs}) == len(pairs) == len({c for _, c in pairs})
    assert sum(cost[r][c] for r, c in pairs) == pytest.approx(_brute_force_min_cost(cost), abs=1e-9)


def test_assignment_matches_scipy_on_larger_matrices():
    scipy_optimize = importlib.import_module("scipy.optimize")
    rng = np.random.default_rng(0)
    for shape in [(12, 12), (9, 15), (15, 9), (1, 7)]:
        cost = rng.uniform(0, 100, size=shape)
        rows, cols = scipy_optimize.linear_sum_assignment(cost)
        ours = min_cost_assignment(cost.tolist())
        assert sum(cost[r, c] for r, c in ours) == pytest.approx(cost[rows, cols].sum())
    assert min_cost_assignment([]) == [] and min_cost_assignment([[]]) == []


# ----------------------------------------------------------------------------------------------
# DER / JER

TICK = 0.25  # segment times on a 0.25 s grid: binary fractions, so the frame reference is exact


def _frame_patterns(ref, hyp, collar, skip_overlap):
    """Counter of (ref speakers, hyp speakers) over scored frames of one TICK."""
    times = [t for s in [*ref, *hyp] for t in (s.start, s.end)]
    boundaries = [t for s in ref if s.end > s.start for t in (s.start, s.end)]
    patterns = Counter()
    if not times:
        return patterns
    for k in range(round(min(times) / TICK) - 1, round(max(times) / TICK) + 1):
        t = (k + 0.5) * TICK
        R = frozenset(s.speaker for s in ref if s.start <= t < s.end)
        H = frozenset(s.speaker for s in hyp if s.start <= t < s.end)
        if any(abs(t - b) < collar for b in boundaries) or (skip_overlap and len(R) >= 2):
            continue
        patterns[R, H] += 1
    return patterns


def _mappings(refs, hyps):
    """Every one-to-one partial mapping ref -> hyp (None = unmapped)."""
    for choice in itertools.permutations([*hyps, *[None] * len(refs)], len(refs)):
        yield dict(zip(refs, choice))


def _frame_der(ref, hyp, collar=0.0, skip_overlap=False):
    """(miss, false alarm, confusion, total) seconds, minimum error over all mappings, on frames."""
    patterns = _frame_patterns(ref, hyp, collar, skip_overlap)
    refs = sorted({s for R, _ in patterns for s in R})
    hyps = sorted({s for _, H in patterns for s in H})
    best = None
    for mapping in _mappings(refs, hyps):
        miss = fa = conf = total = 0
        for (R, H), n in patterns.items():
            correct = sum(1 for r in R if mapping[r] in H)
            total += n * len(R)
            miss += n * max(len(R) - len(H), 0)
            fa += n * max(len(H) - len(R), 0)
            conf += n * (min(len(R), len(H)) - correct)
        if best is None or miss + fa + conf < sum(best[:3]):
            best = (miss, fa, conf, total)
    return tuple(TICK * x for x in best) if best else (0.0, 0.0, 0.0, 0.0)


def _frame_jer(ref, hyp, collar=0.0):
    patterns = _frame_patterns(ref, hyp, collar, False)
    ref_time, hyp_time, both = Counter(), Counter(), Counter()
    for (R, H), n in patterns.items():
        for r in R:
            ref_time[r] += n
        for h in H:
            hyp_time[h] += n
        for r, h in itertools.product(R, H):
            both[r, h] += n
    refs, hyps = sorted(ref_time), sorted(hyp_time)
    if not refs:
        return 1.0 if hyps else 0.0

    def error(r, h):
        return 1.0 if h is None else 1 - both[r, h] / (ref_time[r] + hyp_time[h] - both[r, h])

    return min(sum(error(r, m[r]) for r in refs) / len(refs) for m in _mappings(refs, hyps))


@st.composite
def turns(draw, speakers, max_turns=6):
    """Speaker turns on the TICK grid within 15 s, possibly empty, overlapping or self-overlapping."""
    out = []
    for _ in range(draw(st.integers(0, max_turns))):
        start, length = draw(st.integers(0, 60)), draw(st.integers(0, 16))
        out.append(Segment(start * TICK, (start + length) * TICK, draw(st.sampled_from(speakers))))
    return out


REF_SPEAKERS, HYP_SPEAKERS = ["A", "B", "C"], ["s1", "s2", "s3", "s4"]
collars = st.sampled_from([0.0, TICK, 2 * TICK, 4 * TICK])


def _parts(res: DERResult):
    return res.miss, res.false_alarm, res.confusion, res.total_speech


def test_der_hand_cases():
    ref = [Segment(0, 10, "A"), Segment(10, 20, "B")]
    hyp = [Segment(0, 12, "x"), Segment(12, 20, "y")]
    res = diarization_error_rate(ref, hyp, collar=0.0)
    assert _parts(res) == pytest.approx((0, 0, 2, 20)) and res.der == pytest.approx(0.1)
    assert res.speaker_mapping == {"A": "x", "B": "y"}
    # collar 0.5: [0, 0.5], [9.5, 10.5] and [19.5, 20] unscored, confusion left on [10.5, 12]
    res = diarization_error_rate(ref, hyp, collar=0.5)
    assert _parts(res) == pytest.approx((0, 0, 1.5, 18)) and res.der == pytest.approx(1.5 / 18)
    # miss + false alarm: hypothesis shifted by 1 s, one speaker
    res = diarization_error_rate([Segment(0, 4, "A")], [Segment(1, 5, "z")], collar=0.0)
    assert _parts(res) == pytest.approx((1, 1, 0, 4)) and res.der == pytest.approx(0.5)
    # overlap: A and B both talk on [2, 4]; the hypothesis has one speaker throughout
    ref = [Segment(0, 4, "A"), Segment(2, 6, "B")]
    res = diarization_error_rate(ref, [Segment(0, 6, "h")], collar=0.0)
    assert _parts(res) == pytest.approx((2, 0, 2, 8))  # 2 s missed in the overlap, B's 2 s solo confused
    res = diarization_error_rate(ref, [Segment(0, 6, "h")], collar=0.0, skip_overlap=True)
    assert _parts(res) == pytest.approx((0, 0, 2, 4))


def test_der_edge_cases():
    assert diarization_error_rate([], [], collar=0.0).der == 0.0
    res = diarization_error_rate([], [Segment(0, 1, "h")], collar=0.0)
    assert _parts(res) == (0.0, 1.0, 0.0, 0.0) and res.der == 1.0  # nothing to score, but speech claimed
    res = diarization_error_rate([Segment(0, 3, "A")], [], collar=0.0)
    assert _parts(res) == (3.0, 0.0, 0.0, 3.0) and res.der == 1.0
    with pytest.raises(ValueError, match="collar"):
        diarization_error_rate([], [], collar=-1)
    with pytest.raises(ValueError, match="both lists of Segment"):
        diarization_error_rate({"f": []}, [])
    with pytest.raises(ValueError, match="expected Segment items"):
        diarization_error_rate([(0, 1, "A")], [])
    with pytest.raises(ValueError, match="start <= end"):
        Segment(2.0, 1.0, "A")


@settings(max_examples=150, deadline=None)
@given(turns(REF_SPEAKERS), turns(HYP_SPEAKERS), collars, st.booleans())
def test_der_matches_frame_grid_brute_force(ref, hyp, collar, skip_overlap):
    res = diarization_error_rate(ref, hyp, collar=collar, skip_overlap=skip_overlap)
    assert _parts(res) == pytest.approx(_frame_der(ref, hyp, collar, skip_overlap), abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(turns(REF_SPEAKERS), turns(HYP_SPEAKERS), collars)
def test_jer_matches_frame_grid_brute_force(ref, hyp, collar):
    assert jaccard_error_rate(ref, hyp, collar=collar).jer == pytest.approx(_frame_jer(ref, hyp, collar), abs=1e-9)


@settings(deadline=None)
@given(turns(REF_SPEAKERS), collars, st.booleans())
def test_der_of_reference_against_itself_is_zero(ref, collar, skip_overlap):
    res = diarization_error_rate(ref, ref, collar=collar, skip_overlap=skip_overlap)
    assert res.der == 0.0 and res.miss == res.false_alarm == res.confusion == 0.0
    assert jaccard_error_rate(ref, ref, collar=collar).jer == 0.0


@settings(deadline=None)
@given(turns(REF_SPEAKERS), turns(HYP_SPEAKERS), st.permutations(["p", "q", "r", "s"]))
def test_der_invariant_to_hypothesis_relabelling(ref, hyp, new_names):
    rename = dict(zip(HYP_SPEAKERS, new_names))
    relabelled = [Segment(s.start, s.end, rename[s.speaker]) for s in hyp]
    a, b = diarization_error_rate(ref, hyp), diarization_error_rate(ref, relabelled)
    assert _parts(a) == pytest.approx(_parts(b), abs=1e-9)
    assert jaccard_error_rate(ref, hyp).jer == pytest.approx(jaccard_error_rate(ref, relabelled).jer, abs=1e-12)


@settings(deadline=None)
@given(turns(REF_SPEAKERS), turns(HYP_SPEAKERS), collars, collars)
def test_collar_and_skip_overlap_never_increase_error_seconds(ref, hyp, c1, c2):
    small, large = sorted([c1, c2])

    def errors(res):
        return res.miss + res.false_alarm + res.confusion

    base = errors(diarization_error_rate(ref, hyp, collar=small))
    assert errors(diarization_error_rate(ref, hyp, collar=large)) <= base + 1e-9
    assert errors(diarization_error_rate(ref, hyp, collar=small, skip_overlap=True)) <= base + 1e-9


def test_collar_can_raise_the_rate():
    # the documented caveat: the collar removes reference speech, not the far false alarm
    ref, hyp = [Segment(0, 1, "A")], [Segment(0, 1, "h"), Segment(5, 6, "h2")]
    assert diarization_error_rate(ref, hyp, collar=0.0).der == pytest.approx(1.0)
    assert diarization_error_rate(ref, hyp, collar=0.25).der == pytest.approx(2.0)


def test_corpus_der_and_jer_aggregate_over_files():
    ref = {"f1": [Segment(0, 10, "A"), Segment(10, 20, "B")], "f2": [Segment(0, 4, "A")], "f3": [Segment(0, 2, "C")]}
    hyp = {"f1": [Segment(0, 12, "x"), Segment(12, 20, "y")], "f2": [Segment(1, 5, "x")], "f4": [Segment(0, 1, "q")]}
    res = diarization_error_rate(ref, hyp, collar=0.0)
    assert list(res.per_file) == ["f1", "f2", "f3", "f4"]
    assert _parts(res.per_file["f3"]) == (2.0, 0.0, 0.0, 2.0)  # missing hypothesis: all missed
    assert _parts(res.per_file["f4"]) == (0.0, 1.0, 0.0, 0.0)  # missing reference: all false alarm
    assert _parts(res) == pytest.approx((1 + 2, 1 + 1, 2, 20 + 4 + 2))
    assert res.der == pytest.approx((3 + 2 + 2) / 26)
    for name in ref:
        alone = diarization_error_rate(ref[name], hyp.get(name, []), collar=0.0)
        assert _parts(res.per_file[name]) == pytest.approx(_parts(alone))
    jer = jaccard_error_rate(ref, hyp)
    assert jer.per_file["f3"].jer == 1.0 and jer.per_file["f4"].jer == 1.0
    speaker_errors = [*jer.per_file["f1"].speaker_errors.values(), *jer.per_file["f2"].speaker_errors.values(), 1.0]
    assert jer.jer == pytest.approx(sum(speaker_errors) / 4)  # f4 has no reference speaker: not in the mean


def test_jer_hand_cases():
    ref = [Segment(0, 10, "A"), Segment(10, 20, "B")]
    res = jaccard_error_rate(ref, [Segment(0, 12, "x"), Segment(12, 20, "y")])
    assert res.speaker_errors == pytest.approx({"A": 1 - 10 / 12, "B": 1 - 8 / 10})
    assert res.jer == pytest.approx((2 / 12 + 2 / 10) / 2)
    res = jaccard_error_rate(ref, [Segment(0, 5, "x")])  # B unmapped: 1.0
    assert res.speaker_errors == pytest.approx({"A": 0.5, "B": 1.0}) and res.speaker_mapping == {"A": "x"}
    assert jaccard_error_rate([], []).jer == 0.0 and jaccard_error_rate([], [Segment(0, 1, "x")]).jer == 1.0
    assert isinstance(res, JERResult)


def _annotation(segments, uri="f"):
    from pyannote.core import Annotation
    from pyannote.core import Segment as PSegment

    ann = Annotation(uri=uri)
    for k, s in enumerate(segments):
        ann[PSegment(s.start, s.end), k] = s.speaker
    return ann


def _merged(segments):
    """One segment per stretch of a speaker's talk (pyannote keeps self-overlapping tracks apart)."""
    by_speaker = {}
    for s in sorted(segments, key=lambda s: (s.speaker, s.start)):
        if s.end <= s.start:
            continue
        last = by_speaker.setdefault(s.speaker, [])
        if last and s.start <= last[-1].end:
            last[-1] = Segment(last[-1].start, max(last[-1].end, s.end), s.speaker)
        else:
            last.append(s)
    return [s for segs in by_speaker.values() for s in segs]


@settings(max_examples=60, deadline=None)
@given(turns(REF_SPEAKERS), turns(HYP_SPEAKERS), collars, st.booleans())
def test_der_matches_pyannote_metrics(ref, hyp, collar, skip_overlap):
    importlib.import_module("pyannote.metrics")
    from pyannote.core import Segment as PSegment
    from pyannote.core import Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate, JaccardErrorRate

    ref, hyp = _merged(ref), _merged(hyp)
    uem = Timeline([PSegment(-10, 100)])
    # pyannote's collar is the full width around a boundary, ours is each side
    metric = DiarizationErrorRate(collar=2 * collar, skip_overlap=skip_overlap)
    theirs = metric(_annotation(ref), _annotation(hyp), uem=uem, detailed=True)
    ours = diarization_error_rate(ref, hyp, collar=collar, skip_overlap=skip_overlap)
    their_parts = (theirs["missed detection"], theirs["false alarm"], theirs["confusion"], theirs["total"])
    assert _parts(ours) == pytest.approx(their_parts, abs=1e-9)
    assert ours.der == pytest.approx(theirs["diarization error rate"], abs=1e-9)
    # pyannote maps JER speakers by overlap time, dscore (and we) by least Jaccard error: never worse
    their_jer = JaccardErrorRate(collar=2 * collar)(_annotation(ref), _annotation(hyp), uem=uem)
    if ref:  # pyannote returns 1.0 for no reference speaker even when the hypothesis is silent too
        assert jaccard_error_rate(ref, hyp, collar=collar).jer <= their_jer + 1e-9


# ----------------------------------------------------------------------------------------------
# EOU


def test_eou_hand_case():
    res = eou_metrics([1.0, 2.0, 3.0, 4.0], [[1.2], [1.5, 2.1, 2.2], None, 7.5], max_latency=2.0)
    assert isinstance(res, EOUResult)
    assert (res.num_utterances, res.num_detections, res.true_positives) == (4, 5, 2)
    assert (res.false_early, res.late, res.duplicates) == (1, 1, 1)
    assert res.precision == pytest.approx(2 / 5) and res.recall == pytest.approx(2 / 4)
    assert res.early_rate == pytest.approx(1 / 4)
    assert res.latencies == pytest.approx((0.2, 0.1))
    assert res.latency_p50 == pytest.approx(0.15) and res.latency_p90 == pytest.approx(0.19)
    assert res.f1 == pytest.approx(2 * 0.4 * 0.5 / 0.9)


def test_eou_early_tolerance_and_edges():
    res = eou_metrics([5.0], [[4.9]], early_tolerance=0.2)
    assert res.true_positives == 1 and res.latencies == pytest.approx((-0.1,))
    assert eou_metrics([5.0], [[4.9]]).false_early == 1
    assert eou_metrics([5.0], [[7.0]], max_latency=2.0).true_positives == 1  # window is closed
    res = eou_metrics([], [])
    assert (res.precision, res.recall, res.early_rate) == (1.0, 1.0, 0.0) and math.isnan(res.latency_p50)
    with pytest.raises(ValueError, match="2 reference ends and 1 detection lists"):
        eou_metrics([1.0, 2.0], [[1.0]])
    with pytest.raises(ValueError, match="max_latency"):
        eou_metrics([1.0], [[1.0]], max_latency=-1)
    with pytest.raises(ValueError, match=r"detections\[0\]"):
        eou_metrics([1.0], [[math.nan]])


utterances = st.lists(st.tuples(st.integers(0, 50), st.lists(st.integers(-10, 60), max_size=4)), max_size=8)


@given(utterances, st.integers(-100, 100))
def test_eou_properties(items, shift):
    ends = [float(e) for e, _ in items]
    dets = [[float(t) for t in ts] for _, ts in items]
    res = eou_metrics(ends, dets, max_latency=3.0, early_tolerance=1.0)
    # every detection is exactly one of: the utterance's first in-window one, early, late, duplicate
    assert res.true_positives + res.false_early + res.late + res.duplicates == res.num_detections
    assert all(-1.0 <= lat <= 3.0 for lat in res.latencies) and len(res.latencies) == res.true_positives
    moved_ends, moved_dets = [e + shift for e in ends], [[t + shift for t in ts] for ts in dets]
    shifted = eou_metrics(moved_ends, moved_dets, max_latency=3.0, early_tolerance=1.0)
    assert shifted == res  # integer times: the shift is exact


@given(st.lists(st.floats(-100, 100), max_size=20), st.sampled_from([0, 10, 50, 90, 95, 100]))
def test_percentile_matches_numpy(values, q):
    got = percentile(values, q)
    assert (math.isnan(got) and not values) or got == pytest.approx(float(np.percentile(values, q)), abs=1e-9)


# ----------------------------------------------------------------------------------------------
# CLI


def _run(argv, capsys):
    parser = argparse.ArgumentParser(prog="minivox")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code = args.func(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_wer_text_and_manifests(tmp_path, capsys):
    (tmp_path / "ref.txt").write_text("the cat sat on the mat\nhello world\n")
    (tmp_path / "hyp.txt").write_text("the cat sit on mat\nhello world\n")
    code, out, err = _run(["wer", str(tmp_path / "ref.txt"), str(tmp_path / "hyp.txt")], capsys)
    assert code == 0 and err == ""
    assert "utterances 2" in out and "WER  25.00%  2 errors / 8 words  (S 1, D 1, I 0, hits 6)" in out
    both = tmp_path / "pred.jsonl"
    both.write_text("".join(json.dumps({"audio_filepath": f"{k}.wav", "text": r, "pred_text": h}) + "\n"
                            for k, (r, h) in enumerate([("a b c", "a b"), ("d", "d e")])))
    code, out, _ = _run(["wer", str(both)], capsys)
    assert code == 0 and "WER  50.00%  2 errors / 4 words  (S 0, D 1, I 1, hits 3)" in out
    code, out2, _ = _run(["wer", str(both), str(both)], capsys)  # ref 'text' against hyp 'pred_text'
    assert code == 0 and out2 == out


@pytest.mark.parametrize(
    "files, argv, message",
    [
        ({"r.txt": "a\nb\n", "h.txt": "a\n"}, ["r.txt", "h.txt"], "r.txt has 2 utterances but"),
        ({"r.txt": "a\n"}, ["r.txt", "missing.txt"], "missing.txt: no such file"),
        ({"r.txt": "a\n"}, ["r.txt"], "REF must be a JSONL manifest"),
        ({"m.jsonl": '{"text": "a"}\n'}, ["m.jsonl"], "m.jsonl:1: expected a string field 'pred_text'"),
        ({"m.jsonl": '{"text": "a"}\n{oops\n', "h.txt": "a\nb\n"}, ["m.jsonl", "h.txt"], "m.jsonl:2: not a JSON line"),
    ],
)
def test_cli_wer_user_errors_exit_2(tmp_path, capsys, monkeypatch, files, argv, message):
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    code, out, err = _run(["wer", *argv], capsys)
    assert code == 2 and out == "" and message in err and "Traceback" not in err


def test_cli_der(tmp_path, capsys):
    ref, hyp = tmp_path / "ref.rttm", tmp_path / "hyp.rttm"
    write_rttm(ref, {"f1": [Segment(0, 10, "A"), Segment(10, 20, "B")], "f2": [Segment(0, 4, "A")]})
    write_rttm(hyp, {"f1": [Segment(0, 12, "x"), Segment(12, 20, "y")], "f2": [Segment(1, 5, "x")]})
    code, out, err = _run(["der", str(ref), str(hyp), "--collar", "0"], capsys)
    assert code == 0 and err == ""
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert lines["f1"][1:] == ["20.00", "0.00", "0.00", "2.00", "10.00%", "18.33%"]
    assert lines["f2"][1:] == ["4.00", "1.00", "1.00", "0.00", "50.00%", "40.00%"]
    assert lines["OVERALL"][5] == "16.67%"  # (2 + 1 + 1) / 24
    code, out, _ = _run(["der", str(ref), str(hyp), "--skip-overlap"], capsys)
    assert code == 0 and "collar +-0.25 s, overlap not scored" in out


def test_cli_der_user_errors_exit_2(tmp_path, capsys):
    good, bad = tmp_path / "good.rttm", tmp_path / "bad.rttm"
    write_rttm(good, {"f": [Segment(0, 1, "A")]})
    bad.write_text("SPEAKER f 1 0.0 oops <NA> <NA> a <NA> <NA>\n")
    for argv, message in [
        ([str(good), str(tmp_path / "nope.rttm")], "nope.rttm: no such file"),
        ([str(bad), str(good)], "bad.rttm:1:"),
        ([str(good), str(good), "--collar", "-1"], "--collar"),
        ([str(tmp_path), str(good)], "no such file"),
    ]:
        code, out, err = _run(["der", *argv], capsys)
        assert code == 2 and message in err and "Traceback" not in err
