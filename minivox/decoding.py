"""RNN-T decoding: hypotheses, batched greedy search, modified beam search, word timestamps.

The functions take the two small networks of a transducer (`minivox.asr`), by duck typing:

    decoder.initial_state(batch_size, device) -> (h, c), each [layers, B, H]
    decoder.step(tokens [B] long, state) -> (out [B, H], state)   # blank (= SOS) embeds to zeros
    joint.project_encoder(enc [..., D]) -> [..., J]
    joint.project_prednet(out [..., H]) -> [..., J]
    joint.joint_after_projection(f [..., J], g [..., J]) -> logits [..., V + 1]

Token ids are 0..V-1 and the blank is V, the last joint output (NeMo's convention). Every
score is a natural-log probability: the sum, over the frames of an alignment, of the joint's
log-softmax at the chosen output (blank or token).

Shape letters: B batch, T encoder frames, D encoder width, H prediction-net width,
J joint width, V vocabulary (without blank), A active hypotheses of a beam.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

# The decoder state of a hypothesis: the prediction net's LSTM (h, c), each [layers, 1, H].
DecoderState = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Word:
    """One word with times in seconds, from the encoder frames of its tokens."""

    word: str
    start: float  # seconds: the frame of its first token
    end: float  # seconds: the end of the frame of its last token


@dataclass
class Hypothesis:
    """One decoding result (NeMo's Hypothesis fields, plus `words`).

    `timestamps[i]` is the encoder frame at which token `y_sequence[i]` was emitted and
    `token_confidence[i]` the joint's softmax probability of that token there.
    """

    score: float = 0.0  # log-probability of the best alignment (greedy) or of the merged alignments (beam)
    y_sequence: list[int] = field(default_factory=list)  # token ids, no blanks
    text: str | None = None  # filled in by the caller that holds the tokenizer
    timestamps: list[int] = field(default_factory=list)  # encoder frame of each token
    dec_state: DecoderState | None = None  # prediction-net state after the last token
    last_token: int | None = None  # the last token fed to the prediction net (None: none yet)
    token_confidence: list[float] = field(default_factory=list)  # softmax probability of each token
    words: list[Word] = field(default_factory=list)  # filled in by the caller (see `words_from_tokens`)


# ---------------------------------------------------------------------------------------
# Greedy search, batched.
# ---------------------------------------------------------------------------------------


@dataclass
class GreedyState:
    """Where a batch of greedy searches stands; pass it back to continue on the next frames.

    Decoding a sequence in pieces with this state gives exactly the hypotheses of decoding
    it at once (greedy search is frame-synchronous).
    """

    hyps: list[Hypothesis]  # one per batch row, growing
    dec_state: DecoderState  # (h, c) of every row, each [layers, B, H]
    pred_proj: torch.Tensor  # [B, J] joint projection of the prediction-net output for the last token
    blank_frames: torch.Tensor  # [B] long, frames since the row's last token
    since_reset: torch.Tensor  # [B] bool, a token was emitted since the prediction net last restarted
    restarts: list[list[tuple[int, int]]]  # per row, (tokens so far, frame) of every restart of the
    #   prediction net: after a `reset_ids` token (it is the last of those tokens) or a silence
    frame_offset: int = 0  # absolute index of the next frame (token timestamps count from 0)
    token_probs: torch.Tensor | None = None  # [B, T, n] of the last call: per frame, the largest
    #   softmax probability of each `track_ids` token over the frame's joint evaluations


def initial_greedy_state(decoder, joint, batch_size: int, device=None) -> GreedyState:
    """The state before any frame: every row at the start symbol (blank)."""
    dec_state = decoder.initial_state(batch_size, device)
    blank = torch.full((batch_size,), joint.blank_id, dtype=torch.long, device=device)
    out, dec_state = decoder.step(blank, dec_state)
    return GreedyState(
        hyps=[Hypothesis() for _ in range(batch_size)],
        dec_state=dec_state,
        pred_proj=joint.project_prednet(out),
        blank_frames=torch.zeros(batch_size, dtype=torch.long, device=device),
        since_reset=torch.zeros(batch_size, dtype=torch.bool, device=device),
        restarts=[[] for _ in range(batch_size)],
    )


def _restart_rows(decoder, joint, state: GreedyState, rows: torch.Tensor, frame: int) -> None:
    """Put the prediction net of `rows` ([B] bool) back at the start symbol (in place)."""
    fresh = initial_greedy_state(decoder, joint, len(rows), rows.device)
    state.dec_state = tuple(torch.where(rows[None, :, None], f, s) for f, s in zip(fresh.dec_state, state.dec_state))
    state.pred_proj = torch.where(rows[:, None], fresh.pred_proj, state.pred_proj)
    state.since_reset = state.since_reset & ~rows
    for b in rows.nonzero().flatten().tolist():
        state.hyps[b].last_token = None
        state.hyps[b].dec_state = None
        state.restarts[b].append((len(state.hyps[b].y_sequence), frame))


@torch.no_grad()
def greedy_batch(
    decoder,
    joint,
    enc: torch.Tensor,
    enc_lengths: torch.Tensor,
    max_symbols_per_step: int = 10,
    state: GreedyState | None = None,
    reset_ids: Sequence[int] = (),
    reset_after_blank_frames: int | None = None,
    track_ids: Sequence[int] = (),
    emit_thresholds: Mapping[int, float] | None = None,
) -> GreedyState:
    """Greedy RNN-T search over a batch: at each frame emit the most likely output until it is
    blank or `max_symbols_per_step` tokens were emitted there (NeMo's greedy_batch).

    Args:
        enc: [B, T, D] encoder frames (a whole utterance, or the next chunk of a stream).
        enc_lengths: [B] valid frames of this call per row.
        max_symbols_per_step: tokens allowed per frame (then the search moves on, as NeMo).
        state: from a previous call on the frames before (None: start); updated in place.
        reset_ids: tokens after which the prediction net restarts from the start symbol
            instead of reading the token (`<EOU>`: the next utterance starts fresh).
        reset_after_blank_frames: also restart a row once this many frames passed without a
            token after its last one (a silence; None: never). Restarts are listed in `state.restarts`.
        track_ids: tokens whose softmax probability is recorded in `state.token_probs`.
        emit_thresholds: {token: p}: where blank is the most likely output but `token` has
            probability >= p, emit `token` instead (e.g. {<EOU>: 0.1}: end utterances as soon as
            the model begins to expect the end, rather than when it is sure).
    Returns:
        The state after these frames (the same object when one was passed); `state.hyps[b]`
        is row b's hypothesis so far.
    """
    if enc.ndim != 3 or enc_lengths.shape != (enc.shape[0],):
        raise ValueError(f"greedy_batch expects enc [B, T, D] and enc_lengths [B], got "
                         f"{tuple(enc.shape)} and {tuple(enc_lengths.shape)}")
    if max_symbols_per_step < 1:
        raise ValueError(f"max_symbols_per_step must be >= 1, got {max_symbols_per_step}")
    if any(not 0 < p <= 1 for p in (emit_thresholds or {}).values()):
        raise ValueError(f"emit_thresholds: probabilities must be in (0, 1], got {dict(emit_thresholds)}")
    B, T, _ = enc.shape
    device = enc.device
    if state is None:
        state = initial_greedy_state(decoder, joint, B, device)
    blank = joint.blank_id
    reset_table = torch.zeros(blank + 1, dtype=torch.bool, device=device)  # [V + 1], True for reset tokens
    reset_table[list(reset_ids)] = True
    track = torch.tensor(list(track_ids), dtype=torch.long, device=device)  # [n]
    token_probs = torch.zeros(B, T, len(track), device=device)
    thresholds = sorted((emit_thresholds or {}).items())
    forced = torch.tensor([tok for tok, _ in thresholds], dtype=torch.long, device=device)  # [m]
    min_log_probs = torch.tensor([math.log(p) for _, p in thresholds], device=device)  # [m]
    score = torch.zeros(B, device=device)  # [B] log-probability added by this call
    f = joint.project_encoder(enc)  # [B, T, J]
    for t in range(T):
        searching = t < enc_lengths  # [B] rows still looking for outputs at this frame
        emitted_here = torch.zeros(B, dtype=torch.bool, device=device)
        for _ in range(max_symbols_per_step):
            log_probs = joint.joint_after_projection(f[:, t], state.pred_proj).log_softmax(-1)  # [B, V + 1]
            if len(track):
                probs = log_probs[:, track].exp()  # [B, n]
                token_probs[:, t] = torch.where(searching[:, None], torch.maximum(token_probs[:, t], probs),
                                                token_probs[:, t])
            best_lp, best = log_probs.max(-1)  # [B], [B]
            if len(forced):  # a thresholded token that passes its threshold replaces blank (the likeliest passing one)
                lp = torch.where(log_probs[:, forced] >= min_log_probs, log_probs[:, forced], -math.inf)  # [B, m]
                alt_lp, alt = lp.max(-1)
                take = (best == blank) & (alt_lp > -math.inf)
                best_lp, best = torch.where(take, alt_lp, best_lp), torch.where(take, forced[alt], best)
            score = score + torch.where(searching, best_lp, 0.0)
            emit = searching & (best != blank)  # [B]
            if not bool(emit.any()):
                break
            for b in emit.nonzero().flatten().tolist():
                hyp = state.hyps[b]
                hyp.y_sequence.append(int(best[b]))
                hyp.timestamps.append(state.frame_offset + t)
                hyp.token_confidence.append(float(best_lp[b].exp()))
            out, new_dec = decoder.step(best, state.dec_state)  # run every row; keep the emitting ones
            state.dec_state = tuple(torch.where(emit[None, :, None], n, o) for n, o in zip(new_dec, state.dec_state))
            state.pred_proj = torch.where(emit[:, None], joint.project_prednet(out), state.pred_proj)
            for b in emit.nonzero().flatten().tolist():
                state.hyps[b].last_token = int(best[b])
            state.since_reset = state.since_reset | emit
            emitted_here |= emit
            restart = emit & reset_table[best]
            if bool(restart.any()):
                _restart_rows(decoder, joint, state, restart, state.frame_offset + t)
            searching = emit  # rows that emitted blank are done with this frame
        frame_valid = t < enc_lengths
        state.blank_frames = torch.where(emitted_here, 0, state.blank_frames + frame_valid.long())
        if reset_after_blank_frames is not None:
            silent = state.since_reset & (state.blank_frames >= reset_after_blank_frames)
            if bool(silent.any()):
                _restart_rows(decoder, joint, state, silent, state.frame_offset + t)
    for b, hyp in enumerate(state.hyps):
        hyp.score += float(score[b])
        if hyp.last_token is not None:
            hyp.dec_state = tuple(s[:, b:b + 1] for s in state.dec_state)
    state.frame_offset += T
    state.token_probs = token_probs
    return state


def greedy_reference(decoder, joint, enc: torch.Tensor, max_symbols_per_step: int = 10,
                     emit_thresholds: Mapping[int, float] | None = None) -> Hypothesis:
    """Readable single-utterance greedy search (enc [T, D]), the test reference for `greedy_batch`."""
    blank = joint.blank_id
    hyp = Hypothesis()
    state = decoder.initial_state(1, enc.device)
    out, state = decoder.step(torch.tensor([blank], device=enc.device), state)  # start symbol
    with torch.no_grad():
        for t in range(enc.shape[0]):
            for _ in range(max_symbols_per_step):
                logits = joint.joint_after_projection(joint.project_encoder(enc[t]), joint.project_prednet(out[0]))
                log_probs = logits.log_softmax(-1)  # [V + 1]
                k = int(log_probs.argmax())
                if k == blank:  # a token at or above its threshold replaces blank: the likeliest such
                    passing = [(float(log_probs[tok]), tok) for tok, p in (emit_thresholds or {}).items()
                               if float(log_probs[tok]) >= math.log(p)]
                    k = max(passing)[1] if passing else k
                hyp.score += float(log_probs[k])
                if k == blank:
                    break
                hyp.y_sequence.append(k)
                hyp.timestamps.append(t)
                hyp.token_confidence.append(float(log_probs[k].exp()))
                out, state = decoder.step(torch.tensor([k], device=enc.device), state)
    hyp.last_token = hyp.y_sequence[-1] if hyp.y_sequence else None
    hyp.dec_state = state if hyp.y_sequence else None
    return hyp


# ---------------------------------------------------------------------------------------
# Modified beam search: at most one token per frame.
# ---------------------------------------------------------------------------------------


@dataclass
class _BeamEntry:
    """A beam hypothesis while searching: the public fields plus the prediction net's output."""

    hyp: Hypothesis
    pred_proj: torch.Tensor  # [J] joint projection of the prediction-net output for the last token read
    stale: bool = False  # the prediction net has not read hyp.last_token yet (pred_proj, dec_state are older)


def _extend(parent: _BeamEntry, k: int, score: float, prob: float, t: int, blank: int) -> _BeamEntry:
    """`parent` followed by output k at frame t (blank: same tokens), with the new total score."""
    old = parent.hyp
    if k == blank:
        hyp = Hypothesis(score=score, y_sequence=list(old.y_sequence), timestamps=list(old.timestamps),
                         dec_state=old.dec_state, last_token=old.last_token,
                         token_confidence=list(old.token_confidence))
        return _BeamEntry(hyp, parent.pred_proj, parent.stale)
    hyp = Hypothesis(score=score, y_sequence=old.y_sequence + [k], timestamps=old.timestamps + [t],
                     dec_state=old.dec_state, last_token=k, token_confidence=old.token_confidence + [prob])
    return _BeamEntry(hyp, parent.pred_proj, stale=True)


@torch.no_grad()
def modified_beam_search(decoder, joint, enc: torch.Tensor, beam_size: int = 4) -> list[Hypothesis]:
    """Beam search with at most one token per frame, for one utterance.

    This is icefall/k2's `modified_beam_search` (after the one-symbol-per-frame decoding of
    Tripathi et al. 2019, "Monotonic recurrent neural network transducer and decoding
    strategies", ASRU): at each frame every hypothesis is extended by each of the V + 1
    outputs (blank keeps its tokens, a token is appended), the `beam_size` best extensions
    over all hypotheses are kept, and extensions with the same tokens are merged by adding
    their probabilities (log-sum-exp). Each frame evaluates the joint of all hypotheses at
    once and steps the prediction net once for all hypotheses that gained a token.

    With beam_size 1 this is greedy search with max_symbols_per_step = 1. With a beam that
    holds every extension (beam_size >= (V + 1) ** T) nothing is pruned and each hypothesis
    score is the exact log-probability of its tokens summed over all one-token-per-frame
    alignments (tests check both).

    Args:
        enc: [T, D] encoder frames of one utterance.
        beam_size: hypotheses kept per frame.
    Returns:
        The final hypotheses (at most beam_size), best score first; timestamps and
        confidences are those of the best-scoring alignment among the merged ones.
    """
    if enc.ndim != 2:
        raise ValueError(f"modified_beam_search expects enc [T, D] of one utterance, got {tuple(enc.shape)}")
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    blank = joint.blank_id
    device = enc.device
    dec_state = decoder.initial_state(1, device)
    out, dec_state = decoder.step(torch.tensor([blank], device=device), dec_state)  # the start symbol
    beam = [_BeamEntry(Hypothesis(dec_state=dec_state), joint.project_prednet(out[0]))]
    f = joint.project_encoder(enc)  # [T, J]
    for t in range(enc.shape[0]):
        g = torch.stack([entry.pred_proj for entry in beam])  # [A, J]
        log_probs = joint.joint_after_projection(f[t][None, :], g).log_softmax(-1)  # [A, V + 1]
        scores = torch.tensor([entry.hyp.score for entry in beam], device=device)  # [A]
        candidates = (scores[:, None] + log_probs).flatten()  # [A * (V + 1)], index = a * (V + 1) + k
        top_scores, top_index = candidates.topk(min(beam_size, len(candidates)))
        merged: dict[tuple[int, ...], _BeamEntry] = {}
        for score, index in zip(top_scores.tolist(), top_index.tolist()):
            a, k = divmod(index, blank + 1)
            entry = _extend(beam[a], k, score, float(log_probs[a, k].exp()), t, blank)
            key = tuple(entry.hyp.y_sequence)
            kept = merged.get(key)
            if kept is not None:  # the same tokens by another alignment: add the probabilities
                total = float(torch.logaddexp(torch.tensor(kept.hyp.score), torch.tensor(score)))
                better, other = (entry, kept) if score > kept.hyp.score else (kept, entry)
                if better.stale and not other.stale:  # same tokens, same network state: reuse it
                    better.hyp.dec_state, better.pred_proj, better.stale = other.hyp.dec_state, other.pred_proj, False
                better.hyp.score = total
                entry = better
            merged[key] = entry
        beam = list(merged.values())
        stale = [entry for entry in beam if entry.stale]
        if stale:  # one prediction-net step for every hypothesis that gained a token
            tokens = torch.tensor([e.hyp.last_token for e in stale], device=device)  # [A']
            h = torch.cat([e.hyp.dec_state[0] for e in stale], dim=1)  # [layers, A', H]
            c = torch.cat([e.hyp.dec_state[1] for e in stale], dim=1)  # [layers, A', H]
            out, (h, c) = decoder.step(tokens, (h, c))  # out [A', H]
            g_new = joint.project_prednet(out)  # [A', J]
            for i, e in enumerate(stale):
                e.hyp.dec_state, e.pred_proj, e.stale = (h[:, i:i + 1], c[:, i:i + 1]), g_new[i], False
    return sorted((entry.hyp for entry in beam), key=lambda h: h.score, reverse=True)


# ---------------------------------------------------------------------------------------
# Word timestamps.
# ---------------------------------------------------------------------------------------

WORD_START = "\u2581"  # sentencepiece's "▁": the piece begins a new word


def words_from_tokens(pieces: Sequence[str], frames: Sequence[int], frame_seconds: float) -> list[Word]:
    """Group sentencepiece pieces into words and time them from their encoder frames.

    A piece starting with "▁" begins a word; the others continue the current one. A word
    starts at its first token's frame and ends at the end of its last token's frame. Pass
    only text pieces (leave out `<EOU>`, `<EOB>`).

    Args:
        pieces: [N] piece strings, as `Tokenizer.id_to_piece` gives them.
        frames: [N] encoder frame of each piece.
        frame_seconds: duration of an encoder frame (0.08 s for 10 ms features and 8x subsampling).
    Returns:
        The words in order.
    """
    if len(pieces) != len(frames):
        raise ValueError(f"words_from_tokens: {len(pieces)} pieces but {len(frames)} frames")
    words: list[Word] = []
    for piece, frame in zip(pieces, frames):
        if piece.startswith(WORD_START) or not words:
            words.append(Word("", frame * frame_seconds, 0.0))
        words[-1].word += piece.lstrip(WORD_START)
        words[-1].end = (frame + 1) * frame_seconds
    return [w for w in words if w.word]  # a lone "▁" before another "▁..." leaves an empty word
