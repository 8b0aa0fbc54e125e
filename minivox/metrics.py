"""Evaluation metrics: WER/CER, RTTM files, DER/JER, end-of-utterance detection.

Pure Python (no torch, no numpy), so the `minivox wer` / `minivox der` commands start at once.

1. Word and character error rate (WER, CER)
   Levenshtein alignment of reference and hypothesis tokens with unit costs. The total number
   of errors S + D + I is the edit distance and is unambiguous; how it splits into
   substitutions (S), deletions (D) and insertions (I) depends on which of several optimal
   alignments is picked. We pick the one jiwer (>= 3) reports, so our S/D/I/hits are
   jiwer's to the count (tested against jiwer): jiwer takes rapidfuzz's
   `Levenshtein.opcodes`, which (a) matches the common prefix and suffix first, then
   (b) walks back from the end of the distance matrix D (rows: reference, columns:
   hypothesis) and at cell (i, j) takes
       a deletion     if D[i-1][j] + 1 == D[i][j],            else
       an insertion   if D[i][j-1] + 1 == D[i-1][j-1],         else
       the diagonal   (a hit if the tokens are equal, a substitution otherwise).
   (That is Hyyro's bit-parallel backtrace written on the plain matrix.) For example
   ref "a b" / hyp "b c" is reported as 2 substitutions, not 1 deletion + 1 insertion.
   NIST sclite aligns with its own weighted DP, so its S/D/I split can differ from jiwer's
   and ours on such ties, and in rare cases its total too; the Levenshtein total is ours.
   WER = (S + D + I) / N with N the number of reference words, summed over a corpus
   before dividing (not a mean of per-utterance rates).

2. RTTM: `SPEAKER <file> <chan> <onset s> <duration s> <NA> <NA> <speaker> <NA> <NA>`.

3. Diarization error rate (DER) and Jaccard error rate (JER), computed exactly on the event
   timeline (every segment and collar boundary), not on a frame grid.
   DER = (missed + false alarm + confusion) / total, all in seconds of speaker time, as in
   NIST md-eval and pyannote.metrics: in each stretch of the scored region with R reference and
   H hypothesis speakers, total += R, miss += max(R - H, 0), false alarm += max(H - R, 0),
   confusion += min(R, H) - (reference speakers whose mapped hypothesis speaker is active).
   The one-to-one speaker mapping maximises the total overlap time (Hungarian algorithm).
   `collar` is md-eval's `-c`: +-collar seconds around every reference segment boundary are not
   scored (pyannote.metrics' `collar` is the full width, i.e. pyannote `collar=0.5` == ours
   0.25). `skip_overlap` (md-eval `-1`) drops the stretches where the reference has 2+ speakers.
   Like pyannote.metrics, the mapping is computed on the scored region (md-eval computes it
   before removing collars; the two rarely differ). The scored region is all time (md-eval's
   `uem` defaulted to the extent of reference and hypothesis, as dscore and pyannote do).
   JER (DIHARD II, dscore): for each reference speaker, 1 - |ref & hyp| / |ref | hyp| with its
   mapped hypothesis speaker (1 if unmapped), averaged over reference speakers; the mapping
   minimises the sum of those errors (dscore's Hungarian on the JER matrix; pyannote.metrics
   instead reuses the DER mapping, so its JER is >= ours).

4. End-of-utterance (EOU) detection: precision/recall of detections in a window around the end
   of speech, early (cut-in) detections, and latency percentiles. See `eou_metrics`.

Units: times and durations are seconds (float); rates are fractions (0.25 == 25 %).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import numbers
import sys
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def _is_seconds(x) -> bool:
    """A finite real number (not a bool): a valid time or duration in seconds."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


# ----------------------------------------------------------------------------------------------
# 1. Word and character error rate


@dataclass(frozen=True)
class ErrorCounts:
    """Alignment counts of hypothesis tokens against reference tokens (words or characters).

    `reference_length` == hits + substitutions + deletions (checked). Counts add up over
    utterances with `+` (and `sum(..., ErrorCounts())`), which is how a corpus WER is formed.
    """

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0
    reference_length: int = 0

    def __post_init__(self):
        counts = (self.substitutions, self.deletions, self.insertions, self.hits, self.reference_length)
        if any(not isinstance(c, int) or c < 0 for c in counts):
            raise ValueError(f"ErrorCounts: expected counts that are ints >= 0, got {counts}")
        if self.hits + self.substitutions + self.deletions != self.reference_length:
            raise ValueError(
                f"ErrorCounts: expected hits + substitutions + deletions == reference_length, got "
                f"{self.hits} + {self.substitutions} + {self.deletions} != {self.reference_length}"
            )

    @property
    def errors(self) -> int:
        """S + D + I, the Levenshtein distance (tokens)."""
        return self.substitutions + self.deletions + self.insertions

    @property
    def hypothesis_length(self) -> int:
        """Number of hypothesis tokens: hits + substitutions + insertions."""
        return self.hits + self.substitutions + self.insertions

    @property
    def rate(self) -> float:
        """errors / reference_length (a fraction; above 1 when insertions pile up).

        An empty reference gives errors / 1, i.e. the number of inserted tokens (0.0 when the
        hypothesis is empty too): the convention of jiwer, which keeps the rate finite.
        """
        return self.errors / max(self.reference_length, 1)

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        if not isinstance(other, ErrorCounts):
            return NotImplemented
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.hits + other.hits,
            self.reference_length + other.reference_length,
        )


def _common_prefix_length(a: Sequence, b: Sequence) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _distance_matrix(ref: Sequence, hyp: Sequence) -> list[list[int]]:
    """D[i][j] = edit distance of ref[:i] and hyp[:j]; (len(ref)+1) x (len(hyp)+1) ints."""
    previous = list(range(len(hyp) + 1))  # row 0: j insertions
    rows = [previous]
    for i, r in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)  # column 0: i deletions
        for j, h in enumerate(hyp, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h))
        rows.append(current)
        previous = current
    return rows


def edit_counts(ref_tokens: Sequence[Hashable], hyp_tokens: Sequence[Hashable]) -> ErrorCounts:
    """Substitutions, deletions, insertions and hits of one optimal alignment (counts of tokens).

    Tokens are compared with `==` (words, characters, ids). The alignment is the one jiwer /
    rapidfuzz report (common prefix and suffix matched, then the backtrace preferring deletion,
    then insertion when D[i][j-1] < D[i-1][j-1], then the diagonal; see the module docstring),
    so the S/D/I split equals jiwer's; S + D + I is the Levenshtein distance.
    Time O(len(ref) * len(hyp)) after trimming the common prefix/suffix.
    """
    ref, hyp = list(ref_tokens), list(hyp_tokens)
    prefix = _common_prefix_length(ref, hyp)
    suffix = _common_prefix_length(ref[prefix:][::-1], hyp[prefix:][::-1])
    ref_core = ref[prefix : len(ref) - suffix]
    hyp_core = hyp[prefix : len(hyp) - suffix]
    dist = _distance_matrix(ref_core, hyp_core)

    substitutions = deletions = insertions = 0
    i, j = len(ref_core), len(hyp_core)
    while i > 0 and j > 0:
        if dist[i - 1][j] + 1 == dist[i][j]:  # reference token i-1 deleted
            deletions += 1
            i -= 1
        elif dist[i][j - 1] + 1 == dist[i - 1][j - 1]:  # hypothesis token j-1 inserted
            insertions += 1
            j -= 1
        else:  # diagonal: hit or substitution
            substitutions += ref_core[i - 1] != hyp_core[j - 1]
            i -= 1
            j -= 1
    deletions += i  # what is left of the reference ...
    insertions += j  # ... or of the hypothesis
    hits = len(ref) - substitutions - deletions
    return ErrorCounts(substitutions, deletions, insertions, hits, len(ref))


def _as_list(texts: str | Sequence[str], name: str) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for k, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{name}[{k}]: expected a str, got {type(t).__name__}: {t!r}")
    return texts


def _corpus_counts(refs, hyps, tokenize) -> ErrorCounts:
    refs, hyps = _as_list(refs, "refs"), _as_list(hyps, "hyps")
    if len(refs) != len(hyps):
        raise ValueError(
            f"expected as many hypotheses as references, got {len(refs)} references and {len(hyps)} hypotheses"
        )
    total = ErrorCounts()
    for ref, hyp in zip(refs, hyps):
        total = total + edit_counts(tokenize(ref), tokenize(hyp))
    return total


def _characters(text: str) -> list[str]:
    return list(" ".join(text.split()))


def word_error_rate(refs: str | Sequence[str], hyps: str | Sequence[str]) -> ErrorCounts:
    """Corpus word error counts; `.rate` is the WER (a fraction) and `.errors` S + D + I (words).

    refs, hyps: one utterance (str) or a list of utterances, paired by position. Words are the
    whitespace-separated tokens, compared exactly (normalise case/punctuation beforehand).
    Counts are summed over utterances, so `.rate` weights utterances by their word count.
    An empty reference is allowed: its hypothesis words are all insertions (see `.rate`).
    Raises ValueError if the two lists differ in length.
    """
    return _corpus_counts(refs, hyps, str.split)


def char_error_rate(refs: str | Sequence[str], hyps: str | Sequence[str]) -> ErrorCounts:
    """Corpus character error counts; `.rate` is the CER (a fraction).

    Each utterance is stripped and its whitespace runs collapsed to one space, then compared
    character by character (the space counts as a character, as in jiwer and NeMo; jiwer does not
    collapse repeated spaces, the only difference). Otherwise as `word_error_rate`.
    """
    return _corpus_counts(refs, hyps, _characters)


# ----------------------------------------------------------------------------------------------
# 2. RTTM files


@dataclass(frozen=True)
class Segment:
    """One speaker turn: [start, end) in seconds, `speaker` a label without whitespace."""

    start: float
    end: float
    speaker: str

    def __post_init__(self):
        if not (math.isfinite(self.start) and math.isfinite(self.end)) or self.end < self.start:
            raise ValueError(
                f"Segment: expected finite start <= end (seconds), got start={self.start!r} end={self.end!r}"
            )

    @property
    def duration(self) -> float:
        """end - start, seconds."""
        return self.end - self.start


RTTM_MIN_FIELDS = 8  # type, file, channel, onset, duration, ortho, subtype, speaker (+ 2 optional <NA>)


def read_rttm(path: str | Path) -> dict[str, list[Segment]]:
    """Read SPEAKER lines of an RTTM file into {file_id: [Segment, ...]} (seconds, file order).

    Blank lines and `;;` comments are skipped, as are other RTTM line types (SPKR-INFO, LEXEME,
    ...). Channels are not distinguished. Zero-duration turns are kept (scoring ignores them).
    Raises ValueError naming the file and the line number for a malformed SPEAKER line (too few
    fields, non-numeric or non-finite onset/duration, negative duration).
    """
    path = Path(path)
    segments: dict[str, list[Segment]] = {}
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or fields[0].startswith(";;") or fields[0] != "SPEAKER":
                continue
            where = f"{path}:{number}"
            if len(fields) < RTTM_MIN_FIELDS:
                raise ValueError(
                    f"{where}: expected at least {RTTM_MIN_FIELDS} fields "
                    f"'SPEAKER file chan onset dur <NA> <NA> speaker ...', got {len(fields)}: {line.strip()!r}"
                )
            try:
                onset, duration = float(fields[3]), float(fields[4])
            except ValueError:
                raise ValueError(
                    f"{where}: expected numeric onset and duration (seconds), got {fields[3]!r} {fields[4]!r}"
                ) from None
            if not (math.isfinite(onset) and math.isfinite(duration)) or duration < 0:
                raise ValueError(
                    f"{where}: expected finite onset and duration >= 0 (seconds), got {onset!r} {duration!r}"
                )
            segments.setdefault(fields[1], []).append(Segment(onset, onset + duration, fields[7]))
    return segments


def write_rttm(path: str | Path, segments_by_file: Mapping[str, Iterable[Segment]], decimals: int = 3) -> None:
    """Write {file_id: [Segment, ...]} as RTTM SPEAKER lines (channel 1, times rounded to `decimals`).

    Raises ValueError for a file id or speaker label that is empty or contains whitespace
    (RTTM fields are whitespace-separated).
    """
    lines = []
    for file_id, segments in segments_by_file.items():
        _check_rttm_name(file_id, "file id")
        for seg in segments:
            _check_rttm_name(seg.speaker, f"speaker label in file {file_id!r}")
            onset, duration = f"{seg.start:.{decimals}f}", f"{seg.duration:.{decimals}f}"
            lines.append(f"SPEAKER {file_id} 1 {onset} {duration} <NA> <NA> {seg.speaker} <NA> <NA>\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


def _check_rttm_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name or name.split() != [name]:
        raise ValueError(f"RTTM {what}: expected a non-empty string without whitespace, got {name!r}")


# ----------------------------------------------------------------------------------------------
# 3. Optimal assignment (Hungarian algorithm)


def min_cost_assignment(cost: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    """Rows-to-columns one-to-one matching of minimum total cost (Hungarian algorithm, O(n^2 m)).

    cost: rows x columns (any shape, floats). Returns min(rows, columns) pairs (row, column),
    sorted by row. This is the shortest-augmenting-path form with row/column potentials
    (Kuhn-Munkres as in Jonker & Volgenant): rows are added one at a time; a Dijkstra-like scan
    over columns with reduced costs cost[i][j] - u[i] - v[j] >= 0 finds the cheapest way to free
    a column for the new row, and the potentials are shifted so reduced costs stay >= 0.
    """
    n_rows = len(cost)
    n_cols = len(cost[0]) if n_rows else 0
    if n_rows == 0 or n_cols == 0:
        return []
    if any(len(row) != n_cols for row in cost):
        lengths = [len(row) for row in cost]
        raise ValueError(f"min_cost_assignment: expected a rectangular matrix, got row lengths {lengths}")
    if not all(math.isfinite(x) for row in cost for x in row):
        raise ValueError(f"min_cost_assignment: expected finite costs, got {cost!r}")
    if n_rows > n_cols:  # the loop below needs rows <= columns
        flipped = min_cost_assignment([list(col) for col in zip(*cost)])
        return sorted((r, c) for c, r in flipped)

    # 1-based rows/columns; column 0 is a virtual start column holding the row being added.
    inf = math.inf
    u = [0.0] * (n_rows + 1)  # row potentials
    v = [0.0] * (n_cols + 1)  # column potentials
    row_of_col = [0] * (n_cols + 1)  # row matched to each column, 0 = free
    for row in range(1, n_rows + 1):
        row_of_col[0] = row
        col = 0  # column whose row we extend from
        best = [inf] * (n_cols + 1)  # cheapest reduced cost reaching each column so far
        came_from = [0] * (n_cols + 1)  # previous column on that cheapest path
        visited = [False] * (n_cols + 1)
        while True:
            visited[col] = True
            i = row_of_col[col]
            step, next_col = inf, 0
            for j in range(1, n_cols + 1):
                if visited[j]:
                    continue
                reduced = cost[i - 1][j - 1] - u[i] - v[j]
                if reduced < best[j]:
                    best[j], came_from[j] = reduced, col
                if best[j] < step:
                    step, next_col = best[j], j
            for j in range(n_cols + 1):  # shift potentials by the step
                if visited[j]:
                    u[row_of_col[j]] += step
                    v[j] -= step
                else:
                    best[j] -= step
            col = next_col
            if row_of_col[col] == 0:  # reached a free column: augment along the path
                break
        while col != 0:
            prev = came_from[col]
            row_of_col[col] = row_of_col[prev]
            col = prev
    return sorted((row_of_col[j] - 1, j - 1) for j in range(1, n_cols + 1) if row_of_col[j] != 0)


# ----------------------------------------------------------------------------------------------
# 4. Diarization error rate and Jaccard error rate

Interval = tuple[float, float]  # [start, end) seconds


def _union(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, merged, non-empty intervals covering the same time as `intervals`."""
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _speaker_turns(segments: Iterable[Segment]) -> dict[str, list[Interval]]:
    """{speaker: merged intervals}; a speaker overlapping themself speaks once."""
    by_speaker: dict[str, list[Interval]] = {}
    for seg in segments:
        by_speaker.setdefault(seg.speaker, []).append((seg.start, seg.end))
    turns = {spk: _union(iv) for spk, iv in by_speaker.items()}
    return {spk: iv for spk, iv in turns.items() if iv}


class _Track:
    """Sorted, disjoint [start, end) intervals of one speaker, with O(log n) membership tests."""

    def __init__(self, intervals: list[Interval]):
        self.intervals = intervals
        self.starts = [start for start, _ in intervals]

    def __contains__(self, t: float) -> bool:
        k = bisect.bisect_right(self.starts, t) - 1
        return k >= 0 and t < self.intervals[k][1]


def _no_score_zones(
    ref: Sequence[Segment], ref_turns: dict[str, list[Interval]], collar: float, skip_overlap: bool
) -> list[Interval]:
    """Merged stretches left out of scoring: +-collar around reference boundaries, reference overlap."""
    zones: list[Interval] = []
    if collar > 0:
        for seg in ref:
            if seg.end > seg.start:
                zones += [(seg.start - collar, seg.start + collar), (seg.end - collar, seg.end + collar)]
    if skip_overlap:
        intervals = [interval for track in ref_turns.values() for interval in track]
        events = sorted([(start, +1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
        active, opened = 0, 0.0
        for t, step in events:  # at equal times ends (-1) sort first: touching turns do not overlap
            if step > 0 and active == 1:
                opened = t
            elif step < 0 and active == 2:
                zones.append((opened, t))
            active += step
    return _union(zones)


@dataclass
class _FileStats:
    """Speaker-time totals of one file over its scored region (seconds)."""

    total: float = 0.0  # reference speaker time
    miss: float = 0.0
    false_alarm: float = 0.0
    paired: float = 0.0  # sum of min(R, H) x duration: the speaker time a mapping could get right
    overlap: dict[tuple[str, str], float] = field(default_factory=dict)  # (ref, hyp) speaker -> co-speaking time
    ref_time: dict[str, float] = field(default_factory=dict)  # reference speaker -> speaking time
    hyp_time: dict[str, float] = field(default_factory=dict)


def _file_stats(ref: Sequence[Segment], hyp: Sequence[Segment], collar: float, skip_overlap: bool) -> _FileStats:
    """Accumulate speaker time over the stretches between consecutive boundaries of one file."""
    ref_turns, hyp_turns = _speaker_turns(ref), _speaker_turns(hyp)
    no_score = _Track(_no_score_zones(ref, ref_turns, collar, skip_overlap))
    ref_tracks = {spk: _Track(iv) for spk, iv in ref_turns.items()}
    hyp_tracks = {spk: _Track(iv) for spk, iv in hyp_turns.items()}
    every_interval = [*ref_turns.values(), *hyp_turns.values(), no_score.intervals]
    times = sorted({t for intervals in every_interval for interval in intervals for t in interval})

    stats = _FileStats(ref_time=dict.fromkeys(ref_tracks, 0.0), hyp_time=dict.fromkeys(hyp_tracks, 0.0))
    for t0, t1 in zip(times, times[1:]):
        mid, dur = 0.5 * (t0 + t1), t1 - t0  # no boundary inside (t0, t1): its middle speaks for it
        if mid in no_score:
            continue
        R = [spk for spk, track in ref_tracks.items() if mid in track]
        H = [spk for spk, track in hyp_tracks.items() if mid in track]
        stats.total += dur * len(R)
        stats.miss += dur * max(len(R) - len(H), 0)
        stats.false_alarm += dur * max(len(H) - len(R), 0)
        stats.paired += dur * min(len(R), len(H))
        for r in R:
            stats.ref_time[r] += dur
        for h in H:
            stats.hyp_time[h] += dur
        for r, h in itertools.product(R, H):
            stats.overlap[r, h] = stats.overlap.get((r, h), 0.0) + dur
    return stats


def _error_rate(errors: float, total: float) -> float:
    """errors / total; with nothing to score: 0.0 if no error else 1.0 (pyannote.metrics, dscore)."""
    if total > 0:
        return errors / total
    return 0.0 if errors <= 0 else 1.0


SegmentsOrCorpus = Sequence[Segment] | Mapping[str, Sequence[Segment]]


def _paired_files(
    ref: SegmentsOrCorpus, hyp: SegmentsOrCorpus, collar: float
) -> dict[str | None, tuple[list[Segment], list[Segment]]]:
    """{file_id: (ref segments, hyp segments)}, file ids of ref first; a single file has id None."""
    if not _is_seconds(collar) or collar < 0:
        raise ValueError(f"collar: expected a finite number of seconds >= 0, got {collar!r}")
    if isinstance(ref, Mapping) != isinstance(hyp, Mapping):
        raise ValueError(
            f"expected ref and hyp both lists of Segment (one file) or both {{file_id: segments}} (a corpus), "
            f"got {type(ref).__name__} and {type(hyp).__name__}"
        )
    ref_files = dict(ref) if isinstance(ref, Mapping) else {None: ref}
    hyp_files = dict(hyp) if isinstance(hyp, Mapping) else {None: hyp}
    files = {}
    for name in [*ref_files, *(k for k in hyp_files if k not in ref_files)]:
        files[name] = (list(ref_files.get(name, [])), list(hyp_files.get(name, [])))
        for side, segments in zip(("ref", "hyp"), files[name]):
            bad = next((s for s in segments if not isinstance(s, Segment)), None)
            if bad is not None:
                where = "" if name is None else f" of file {name!r}"
                raise ValueError(f"{side}{where}: expected Segment items, got {type(bad).__name__}: {bad!r}")
    return files


@dataclass(frozen=True)
class DERResult:
    """Diarization error rate and its parts (seconds of speaker time in the scored region).

    der = (miss + false_alarm + confusion) / total_speech; when total_speech is 0 it is 0.0 if the
    hypothesis is silent there too and 1.0 otherwise. total_speech counts overlapped speech once per
    reference speaker. speaker_mapping: reference -> hypothesis speaker (pairs that co-speak); for
    a corpus it is empty and `per_file` holds each file's result.
    """

    der: float
    miss: float
    false_alarm: float
    confusion: float
    total_speech: float
    speaker_mapping: dict[str, str]
    per_file: dict[str, DERResult] = field(default_factory=dict)


def _der_of(stats: _FileStats) -> DERResult:
    refs, hyps = sorted(stats.ref_time), sorted(stats.hyp_time)
    gain = [[stats.overlap.get((r, h), 0.0) for h in hyps] for r in refs]  # refs x hyps, seconds
    pairs = min_cost_assignment([[-g for g in row] for row in gain])
    correct = sum(gain[i][j] for i, j in pairs)
    mapping = {refs[i]: hyps[j] for i, j in pairs if gain[i][j] > 0}
    confusion = max(stats.paired - correct, 0.0)
    errors = stats.miss + stats.false_alarm + confusion
    return DERResult(_error_rate(errors, stats.total), stats.miss, stats.false_alarm, confusion, stats.total, mapping)


def diarization_error_rate(
    ref: SegmentsOrCorpus, hyp: SegmentsOrCorpus, collar: float = 0.25, skip_overlap: bool = False
) -> DERResult:
    """DER of hypothesis speaker turns against reference turns (NIST md-eval / pyannote.metrics).

    ref, hyp: a list of `Segment` for one file, or {file_id: [Segment, ...]} for a corpus (a file
    missing on one side counts as silence there). collar: seconds left unscored on each side of
    every reference segment boundary (md-eval `-c`; pyannote.metrics' collar is twice this).
    skip_overlap: leave out the stretches where 2+ reference speakers talk (md-eval `-1`).
    Speakers are mapped one-to-one to maximise co-speaking time (Hungarian, per file). A corpus
    DER sums seconds over files before dividing. Exact on segment boundaries (no frame grid).
    Error seconds never grow with the collar; the rate can, as the collar also shrinks the total.
    """
    files = _paired_files(ref, hyp, collar)
    per_file = {name: _der_of(_file_stats(r, h, collar, skip_overlap)) for name, (r, h) in files.items()}
    if not isinstance(ref, Mapping):
        return per_file[None]
    miss, false_alarm, confusion, total = (
        sum(getattr(res, name) for res in per_file.values())
        for name in ("miss", "false_alarm", "confusion", "total_speech")
    )
    der = _error_rate(miss + false_alarm + confusion, total)
    return DERResult(der, miss, false_alarm, confusion, total, speaker_mapping={}, per_file=per_file)


@dataclass(frozen=True)
class JERResult:
    """Jaccard error rate (a fraction in [0, 1]).

    jer: mean of `speaker_errors` (per reference speaker, 1 - |ref & hyp| / |ref | hyp| with the
    mapped hypothesis speaker, 1.0 if unmapped); with no reference speech it is 1.0 if the
    hypothesis speaks and 0.0 otherwise. For a corpus: the mean over the reference speakers of
    all files (dscore's overall JER); speaker_errors/speaker_mapping are then empty and
    `per_file` holds each file's result.
    """

    jer: float
    speaker_errors: dict[str, float]
    speaker_mapping: dict[str, str]
    per_file: dict[str, JERResult] = field(default_factory=dict)


def _jer_of(stats: _FileStats) -> JERResult:
    refs = sorted(r for r, t in stats.ref_time.items() if t > 0)
    hyps = sorted(h for h, t in stats.hyp_time.items() if t > 0)
    if not refs:
        return JERResult(1.0 if hyps else 0.0, {}, {})
    errors = [[0.0] * len(hyps) for _ in refs]  # refs x hyps: 1 - intersection / union
    for i, r in enumerate(refs):
        for j, h in enumerate(hyps):
            both = stats.overlap.get((r, h), 0.0)
            errors[i][j] = 1.0 - both / (stats.ref_time[r] + stats.hyp_time[h] - both)
    speaker_errors = dict.fromkeys(refs, 1.0)
    mapping = {}
    for i, j in min_cost_assignment(errors):
        speaker_errors[refs[i]] = errors[i][j]
        if errors[i][j] < 1.0:
            mapping[refs[i]] = hyps[j]
    return JERResult(sum(speaker_errors.values()) / len(refs), speaker_errors, mapping)


def jaccard_error_rate(ref: SegmentsOrCorpus, hyp: SegmentsOrCorpus, collar: float = 0.0) -> JERResult:
    """JER of hypothesis speaker turns against reference turns (DIHARD II definition, dscore).

    ref, hyp, collar: as in `diarization_error_rate` (DIHARD scores JER with no collar). The
    mapping minimises the summed per-speaker Jaccard errors (dscore); a reference speaker counts
    only if it speaks in the scored region. Each speaker weighs the same, however long it talks.
    """
    files = _paired_files(ref, hyp, collar)
    per_file = {name: _jer_of(_file_stats(r, h, collar, False)) for name, (r, h) in files.items()}
    if not isinstance(ref, Mapping):
        return per_file[None]
    pooled = [e for res in per_file.values() for e in res.speaker_errors.values()]
    if pooled:
        jer = sum(pooled) / len(pooled)
    else:  # no reference speech in any file
        jer = 1.0 if any(res.jer > 0 for res in per_file.values()) else 0.0
    return JERResult(jer, {}, {}, per_file)


# ----------------------------------------------------------------------------------------------
# 5. End-of-utterance detection


@dataclass(frozen=True)
class EOUResult:
    """End-of-utterance detection scores; see `eou_metrics` for the definitions. Times in seconds."""

    num_utterances: int
    num_detections: int
    true_positives: int  # utterances with a detection in [end - early_tolerance, end + max_latency]
    false_early: int  # detections before end - early_tolerance: the agent would cut the user off
    late: int  # detections after end + max_latency
    duplicates: int  # detections in the window after the utterance's first one
    precision: float  # true_positives / num_detections (1.0 with no detections)
    recall: float  # true_positives / num_utterances (1.0 with no utterances)
    early_rate: float  # fraction of utterances with at least one early detection
    latencies: tuple[float, ...]  # per detected utterance: first in-window detection - end (s)
    latency_mean: float  # nan when nothing was detected
    latency_p50: float
    latency_p90: float
    latency_p95: float

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall (0.0 when both are 0)."""
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total > 0 else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """q-th percentile (0 <= q <= 100) with linear interpolation between order statistics
    (numpy's default method); nan for an empty sequence. Same unit as `values`."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile: expected 0 <= q <= 100, got {q!r}")
    xs = sorted(values)
    if not xs:
        return math.nan
    position = q / 100 * (len(xs) - 1)
    lo = math.floor(position)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (position - lo)


def _detection_times(item, k: int) -> list[float]:
    if item is None:
        return []
    times = [item] if isinstance(item, numbers.Real) else list(item)
    for t in times:
        if not _is_seconds(t):
            raise ValueError(f"detections[{k}]: expected finite times in seconds, got {t!r}")
    return sorted(float(t) for t in times)


def eou_metrics(
    reference_ends: Sequence[float],
    detections: Sequence[Sequence[float] | float | None],
    max_latency: float = 2.0,
    early_tolerance: float = 0.0,
) -> EOUResult:
    """Score end-of-utterance detections against the true ends of speech (seconds).

    reference_ends[k]: when utterance k's speech ends. detections[k]: the times the detector
    declared end-of-utterance for utterance k (a list, a single time, or None/[] for none), on
    the same clock. Utterance k's window is [end - early_tolerance, end + max_latency].
    - A detection in the window is correct; an utterance is detected (a true positive) if its
      window holds at least one detection, and its latency is (first such detection - end),
      which lies in [-early_tolerance, max_latency].
    - A detection before the window is a false early detection (the agent would reply while the
      user still speaks); one after the window is late; further detections in the window after
      the first are duplicates. Early, late and duplicate detections are all false positives.
    precision = true positives / detections, recall = true positives / utterances, and
    latency_p50/p90/p95 are percentiles of the latencies of detected utterances.
    """
    if len(reference_ends) != len(detections):
        raise ValueError(
            f"expected one detection list per utterance, got {len(reference_ends)} reference ends "
            f"and {len(detections)} detection lists"
        )
    for name, value in (("max_latency", max_latency), ("early_tolerance", early_tolerance)):
        if not _is_seconds(value) or value < 0:
            raise ValueError(f"{name}: expected a finite number of seconds >= 0, got {value!r}")
    num_detections = true_positives = false_early = late = duplicates = cut_in = 0
    latencies = []
    for k, (end, item) in enumerate(zip(reference_ends, detections)):
        if not _is_seconds(end):
            raise ValueError(f"reference_ends[{k}]: expected a finite time in seconds, got {end!r}")
        times = _detection_times(item, k)
        opens, closes = end - early_tolerance, end + max_latency
        early = [t for t in times if t < opens]
        inside = [t for t in times if opens <= t <= closes]
        num_detections += len(times)
        false_early += len(early)
        late += len(times) - len(early) - len(inside)
        cut_in += bool(early)
        if inside:
            true_positives += 1
            duplicates += len(inside) - 1
            latencies.append(inside[0] - end)
    n = len(reference_ends)
    return EOUResult(
        num_utterances=n,
        num_detections=num_detections,
        true_positives=true_positives,
        false_early=false_early,
        late=late,
        duplicates=duplicates,
        precision=true_positives / num_detections if num_detections else 1.0,
        recall=true_positives / n if n else 1.0,
        early_rate=cut_in / n if n else 0.0,
        latencies=tuple(latencies),
        latency_mean=sum(latencies) / len(latencies) if latencies else math.nan,
        latency_p50=percentile(latencies, 50),
        latency_p90=percentile(latencies, 90),
        latency_p95=percentile(latencies, 95),
    )


# ----------------------------------------------------------------------------------------------
# 6. Command line: `minivox wer`, `minivox der`


class _UserError(Exception):
    """A mistake in the command's input: printed as one line, exit status 2."""


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")  # a BOM is not part of the first word
    except FileNotFoundError:
        raise _UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _UserError(f"{path}: cannot read: {exc}") from None


def _is_manifest(path: str, text: str) -> bool:
    first = next((line for line in text.splitlines() if line.strip()), "")
    return Path(path).suffix in (".json", ".jsonl") or first.lstrip().startswith("{")


def _manifest_rows(path: str, text: str) -> list[dict]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _UserError(f"{path}:{number}: not a JSON line: {exc}") from None
        if not isinstance(row, dict):
            raise _UserError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def _manifest_field(path: str, rows, names: Sequence[str]) -> list[str]:
    values = []
    for number, row in rows:
        name = next((n for n in names if n in row), None)
        if name is None or not isinstance(row[name], str):
            wanted = " or ".join(map(repr, names))
            raise _UserError(f"{path}:{number}: expected a string field {wanted}, got fields {sorted(row)}")
        values.append(row[name])
    return values


def _load_transcripts(ref_path: str, hyp_path: str | None) -> tuple[list[str], list[str]]:
    """Reference and hypothesis utterances from text files (one per line) or JSONL manifests."""
    ref_text = _read_text(ref_path)
    ref_is_manifest = _is_manifest(ref_path, ref_text)
    if hyp_path is None:
        if not ref_is_manifest:
            raise _UserError(
                f"{ref_path}: without HYP, REF must be a JSONL manifest with 'text' and 'pred_text' fields"
            )
        rows = _manifest_rows(ref_path, ref_text)
        return _manifest_field(ref_path, rows, ["text"]), _manifest_field(ref_path, rows, ["pred_text"])
    hyp_text = _read_text(hyp_path)
    if ref_is_manifest:
        refs = _manifest_field(ref_path, _manifest_rows(ref_path, ref_text), ["text"])
    else:
        refs = ref_text.splitlines()
    if _is_manifest(hyp_path, hyp_text):
        hyps = _manifest_field(hyp_path, _manifest_rows(hyp_path, hyp_text), ["pred_text", "text"])
    else:
        hyps = hyp_text.splitlines()
    if len(refs) != len(hyps):
        raise _UserError(
            f"{ref_path} has {len(refs)} utterances but {hyp_path} has {len(hyps)}; they are paired line by line"
        )
    return refs, hyps


def _format_counts(name: str, counts: ErrorCounts, unit: str) -> str:
    return (
        f"{name} {100 * counts.rate:6.2f}%  {counts.errors} errors / {counts.reference_length} {unit}  "
        f"(S {counts.substitutions}, D {counts.deletions}, I {counts.insertions}, hits {counts.hits})"
    )


def _wer_command(args: argparse.Namespace) -> int:
    """`minivox wer`: print corpus WER and CER with their S/D/I counts."""
    try:
        refs, hyps = _load_transcripts(args.ref, args.hyp)
    except _UserError as exc:
        print(f"minivox wer: error: {exc}", file=sys.stderr)
        return 2
    print(f"utterances {len(refs)}")
    print(_format_counts("WER", word_error_rate(refs, hyps), "words"))
    print(_format_counts("CER", char_error_rate(refs, hyps), "chars"))
    return 0


def _read_rttm_for_cli(path: str) -> dict[str, list[Segment]]:
    if not Path(path).is_file():
        raise _UserError(f"{path}: no such file")
    try:
        return read_rttm(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _UserError(str(exc)) from None


def _der_command(args: argparse.Namespace) -> int:
    """`minivox der`: print DER parts and JER per file and overall."""
    try:
        if not (math.isfinite(args.collar) and args.collar >= 0):
            raise _UserError(f"--collar: expected seconds >= 0, got {args.collar}")
        ref, hyp = _read_rttm_for_cli(args.ref), _read_rttm_for_cli(args.hyp)
        if not ref:
            raise _UserError(f"{args.ref}: no SPEAKER lines")
    except _UserError as exc:
        print(f"minivox der: error: {exc}", file=sys.stderr)
        return 2
    der = diarization_error_rate(ref, hyp, collar=args.collar, skip_overlap=args.skip_overlap)
    jer = jaccard_error_rate(ref, hyp, collar=0.0)
    overlap = "overlap not scored" if args.skip_overlap else "overlap scored"
    print(f"DER with collar +-{args.collar:g} s, {overlap}; JER (DIHARD) with no collar. Seconds of speaker time.")
    width = max(len("OVERALL"), *(len(name) for name in der.per_file))
    header = f"{'speech':>9}  {'miss':>8}  {'false_alarm':>11}  {'confusion':>9}  {'DER':>7}  {'JER':>7}"
    print(f"{'file':<{width}}  {header}")
    rows = [(name, res, jer.per_file[name].jer) for name, res in der.per_file.items()] + [("OVERALL", der, jer.jer)]
    for name, res, jer_value in rows:
        print(
            f"{name:<{width}}  {res.total_speech:9.2f}  {res.miss:8.2f}  {res.false_alarm:11.2f}  "
            f"{res.confusion:9.2f}  {100 * res.der:6.2f}%  {100 * jer_value:6.2f}%"
        )
    return 0


def register(subparsers) -> None:
    """Add the `wer` and `der` subcommands to the `minivox` argument parser's subparsers."""
    wer = subparsers.add_parser(
        "wer",
        help="word and character error rate (S/D/I) of hypothesis transcripts",
        description="Corpus WER and CER with substitution/deletion/insertion counts. Words are whitespace "
        "tokens compared exactly (no case or punctuation normalisation).",
    )
    wer.add_argument("ref", help="reference: text file (one utterance per line) or JSONL manifest ('text' field)")
    wer.add_argument(
        "hyp",
        nargs="?",
        help="hypothesis: text file or JSONL manifest ('pred_text', else 'text'); leave out when REF is a "
        "manifest holding both 'text' and 'pred_text'",
    )
    wer.set_defaults(func=_wer_command)

    der = subparsers.add_parser(
        "der",
        help="diarization error rate (miss, false alarm, confusion) and JER of RTTM files",
        description="DER as NIST md-eval / pyannote.metrics (optimal speaker mapping, exact timeline) and "
        "JER as DIHARD (no collar), per file and overall.",
    )
    der.add_argument("ref", help="reference RTTM")
    der.add_argument("hyp", help="hypothesis RTTM")
    der.add_argument(
        "--collar",
        type=float,
        default=0.25,
        help="seconds not scored on each side of reference boundaries (default 0.25, md-eval -c)",
    )
    der.add_argument(
        "--skip-overlap", action="store_true", help="do not score where 2+ reference speakers talk (md-eval -1)"
    )
    der.set_defaults(func=_der_command)
