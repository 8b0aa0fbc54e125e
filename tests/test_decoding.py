"""RNN-T decoding: batched greedy vs a readable reference, chunked == whole, prediction-net
restarts, modified beam search vs brute force and vs greedy, word timestamps."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minivox.asr import Joint, JointConfig, PredictionConfig, PredictionNet
from minivox.decoding import (Word, greedy_batch, greedy_reference, initial_greedy_state, modified_beam_search,
                              words_from_tokens)

D = 8  # encoder width of the random encoder frames


@pytest.fixture(autouse=True)
def one_thread():
    """Decoding runs tiny ops one frame at a time: one thread is faster (and immune to a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_transducer(V: int, seed: int, blank_bias: float = 0.0):
    """A random prediction net + joint over V tokens; blank_bias makes blank more likely."""
    torch.manual_seed(seed)
    decoder = PredictionNet(V, PredictionConfig(pred_hidden=12, dropout=0.0)).eval()
    joint = Joint(D, 12, V, JointConfig(joint_hidden=16, dropout=0.0)).eval()
    with torch.no_grad():
        joint.joint_net[2].weight.mul_(4.0)  # peaky distributions, like a trained model
        joint.joint_net[2].bias[V] += blank_bias
    return decoder, joint


def same_hyp(a, b, tol=1e-4):
    assert a.y_sequence == b.y_sequence
    assert a.timestamps == b.timestamps
    assert a.score == pytest.approx(b.score, abs=tol)
    assert a.token_confidence == pytest.approx(b.token_confidence, abs=tol)


@pytest.mark.parametrize("max_symbols", [1, 2, 5])
def test_greedy_batch_equals_reference_per_utterance(max_symbols):
    decoder, joint = random_transducer(V=6, seed=1, blank_bias=0.5)
    torch.manual_seed(2)
    enc = torch.randn(4, 15, D)
    lengths = torch.tensor([15, 9, 1, 12])
    hyps = greedy_batch(decoder, joint, enc, lengths, max_symbols).hyps
    emitted = 0
    for b in range(4):
        ref = greedy_reference(decoder, joint, enc[b, :lengths[b]], max_symbols)
        same_hyp(hyps[b], ref)
        emitted += len(ref.y_sequence)
    assert emitted > 5, "the random model should emit tokens for this test to mean something"


@pytest.mark.parametrize("threshold", [0.05, 0.2])
def test_emit_thresholds_replace_blank_as_the_reference_does(threshold):
    """A thresholded token is emitted wherever blank wins but the token reaches its threshold:
    the batched search agrees with the readable reference, and the token comes more often."""
    decoder, joint = random_transducer(V=6, seed=5, blank_bias=1.0)
    torch.manual_seed(6)
    enc = torch.randn(3, 25, D)
    lengths = torch.tensor([25, 17, 8])
    eou = 1
    plain = greedy_batch(decoder, joint, enc, lengths, 2).hyps
    forced = greedy_batch(decoder, joint, enc, lengths, 2, emit_thresholds={eou: threshold}).hyps
    for b in range(3):
        same_hyp(forced[b], greedy_reference(decoder, joint, enc[b, :lengths[b]], 2, emit_thresholds={eou: threshold}))
    count = lambda hyps: sum(h.y_sequence.count(eou) for h in hyps)  # noqa: E731
    assert count(forced) > count(plain)
    assert greedy_batch(decoder, joint, enc, lengths, 2, emit_thresholds={eou: 1.0}).hyps[0].y_sequence == \
        plain[0].y_sequence  # probability 1 is never reached
    with pytest.raises(ValueError, match="emit_thresholds"):
        greedy_batch(decoder, joint, enc, lengths, 2, emit_thresholds={eou: 0.0})


@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(0, 20), min_size=0, max_size=4), seed=st.integers(0, 3))
def test_greedy_in_pieces_equals_greedy_at_once(cuts, seed):
    decoder, joint = random_transducer(V=5, seed=seed, blank_bias=1.0)
    torch.manual_seed(100 + seed)
    enc = torch.randn(2, 20, D)
    eou = 2  # a restart token, and a silence rule, so that the carried state includes both
    kwargs = dict(max_symbols_per_step=3, reset_ids=[eou], reset_after_blank_frames=3, track_ids=[eou, 0])
    whole = greedy_batch(decoder, joint, enc, torch.tensor([20, 20]), **kwargs)
    state, probs = None, []
    bounds = [0] + sorted(cuts) + [20]
    for lo, hi in zip(bounds, bounds[1:]):
        state = greedy_batch(decoder, joint, enc[:, lo:hi], torch.tensor([hi - lo] * 2), state=state, **kwargs)
        probs.append(state.token_probs)
    for a, b in zip(state.hyps, whole.hyps):
        same_hyp(a, b)
    assert state.restarts == whole.restarts
    torch.testing.assert_close(torch.cat(probs, dim=1), whole.token_probs)


def test_restart_token_and_silence_restart_the_prediction_net():
    """After a reset token (max 1 symbol per frame) the rest decodes as if from the start;
    likewise after `reset_after_blank_frames` frames without a token."""
    decoder, joint = random_transducer(V=4, seed=3, blank_bias=0.8)
    torch.manual_seed(4)
    enc = torch.randn(1, 40, D)
    plain = greedy_batch(decoder, joint, enc, torch.tensor([40]), 1).hyps[0]
    assert len(plain.y_sequence) >= 4
    reset = plain.y_sequence[1]  # a token the model emits early
    state = greedy_batch(decoder, joint, enc, torch.tensor([40]), 1, reset_ids=[reset])
    tokens, frame = state.restarts[0][0]
    hyp = state.hyps[0]
    assert hyp.y_sequence[tokens - 1] == reset and hyp.timestamps[tokens - 1] == frame
    fresh = greedy_batch(decoder, joint, enc[:, frame + 1:], torch.tensor([40 - frame - 1]), 1,
                         reset_ids=[reset]).hyps[0]
    assert hyp.y_sequence[tokens:tokens + len(fresh.y_sequence)][:3] == fresh.y_sequence[:3]
    assert [t - frame - 1 for t in hyp.timestamps[tokens:tokens + 3]] == fresh.timestamps[:3]

    decoder, joint = random_transducer(V=4, seed=3, blank_bias=2.0)  # pauses: tokens at 2, 6, 10, 23, ...
    silence = 3
    state = greedy_batch(decoder, joint, enc, torch.tensor([40]), 1, reset_after_blank_frames=silence)
    hyp = state.hyps[0]
    assert state.restarts[0], "the random model should pause long enough somewhere"
    for tokens, frame in state.restarts[0]:
        assert frame - hyp.timestamps[tokens - 1] == silence  # `silence` empty frames after the last token
        rest = greedy_batch(decoder, joint, enc[:, frame + 1:], torch.tensor([40 - frame - 1]), 1,
                            reset_after_blank_frames=silence).hyps[0]
        assert hyp.y_sequence[tokens:tokens + 2] == rest.y_sequence[:2]


def test_beam_size_one_is_greedy_with_one_symbol_per_frame():
    for seed in range(5):
        decoder, joint = random_transducer(V=7, seed=seed, blank_bias=0.3)
        enc = torch.randn(18, D, generator=torch.Generator().manual_seed(seed))
        greedy = greedy_batch(decoder, joint, enc[None], torch.tensor([18]), 1).hyps[0]
        (beam,) = modified_beam_search(decoder, joint, enc, beam_size=1)
        same_hyp(beam, greedy)


def brute_force_sequences(decoder, joint, enc):
    """Every one-output-per-frame alignment, scored exactly; log-sum-exp per token sequence."""
    V1 = joint.blank_id + 1
    totals: dict[tuple, list[float]] = {}
    with torch.no_grad():
        f = joint.project_encoder(enc)
        for path in itertools.product(range(V1), repeat=enc.shape[0]):
            state = decoder.initial_state(1)
            out, state = decoder.step(torch.tensor([joint.blank_id]), state)
            score, tokens = 0.0, []
            for t, k in enumerate(path):
                log_probs = joint.joint_after_projection(f[t], joint.project_prednet(out[0])).log_softmax(-1)
                score += float(log_probs[k])
                if k != joint.blank_id:
                    tokens.append(k)
                    out, state = decoder.step(torch.tensor([k]), state)
            totals.setdefault(tuple(tokens), []).append(score)
    return {seq: float(torch.logsumexp(torch.tensor(s), 0)) for seq, s in totals.items()}


def test_unpruned_beam_search_is_exact():
    decoder, joint = random_transducer(V=2, seed=7)
    enc = torch.randn(4, D, generator=torch.Generator().manual_seed(7))
    exact = brute_force_sequences(decoder, joint, enc)  # 3^4 = 81 alignments
    hyps = modified_beam_search(decoder, joint, enc, beam_size=3 ** 4)
    assert {tuple(h.y_sequence): h.score for h in hyps} == pytest.approx(exact, abs=1e-4)
    assert math.isclose(sum(math.exp(s) for s in exact.values()), 1.0, abs_tol=1e-4)  # a distribution
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


def test_best_beam_score_is_not_below_greedy():
    """Not a theorem for a pruned beam (greedy's path can be pruned), so this checks fixed
    seeds; it is one when nothing is pruned (see test_unpruned_beam_search_is_exact)."""
    for seed in range(6):
        decoder, joint = random_transducer(V=6, seed=seed, blank_bias=0.5)
        enc = torch.randn(25, D, generator=torch.Generator().manual_seed(50 + seed))
        greedy = greedy_batch(decoder, joint, enc[None], torch.tensor([25]), 1).hyps[0]
        for beam_size in (2, 4, 8):
            hyps = modified_beam_search(decoder, joint, enc, beam_size)
            assert len(hyps) <= beam_size
            assert hyps[0].score >= greedy.score - 1e-5
            assert all(len(h.timestamps) == len(h.y_sequence) == len(h.token_confidence) for h in hyps)
            assert all(h.timestamps == sorted(set(h.timestamps)) for h in hyps)  # at most one token per frame


def test_beam_hypothesis_state_is_its_tokens_state():
    """A beam hypothesis' prediction-net state equals running the net over its tokens."""
    decoder, joint = random_transducer(V=5, seed=11, blank_bias=0.2)
    enc = torch.randn(12, D, generator=torch.Generator().manual_seed(11))
    for hyp in modified_beam_search(decoder, joint, enc, beam_size=4):
        tokens = torch.tensor([[joint.blank_id] + hyp.y_sequence])
        _, (h, c) = decoder(tokens)
        torch.testing.assert_close(hyp.dec_state[0], h)
        torch.testing.assert_close(hyp.dec_state[1], c)


def test_words_from_tokens():
    pieces = ["\u2581hel", "lo", "\u2581wor", "ld", "\u2581", "x", "\u2581a"]
    frames = [0, 1, 3, 5, 6, 6, 9]
    assert words_from_tokens(pieces, frames, 0.08) == pytest.approx([
        Word("hello", 0.0, 0.16), Word("world", 0.24, 0.48), Word("x", 0.48, 0.56), Word("a", 0.72, 0.8)])
    assert words_from_tokens(["ab", "\u2581c"], [2, 4], 1.0) == [Word("ab", 2.0, 3.0), Word("c", 4.0, 5.0)]
    with pytest.raises(ValueError, match="2 pieces but 1 frames"):
        words_from_tokens(["a", "b"], [0], 0.08)


def test_decoding_input_errors():
    decoder, joint = random_transducer(V=3, seed=0)
    with pytest.raises(ValueError, match=r"enc \[B, T, D\]"):
        greedy_batch(decoder, joint, torch.zeros(5, D), torch.tensor([5]))
    with pytest.raises(ValueError, match="max_symbols_per_step"):
        greedy_batch(decoder, joint, torch.zeros(1, 5, D), torch.tensor([5]), 0)
    with pytest.raises(ValueError, match=r"enc \[T, D\]"):
        modified_beam_search(decoder, joint, torch.zeros(1, 5, D))
    with pytest.raises(ValueError, match="beam_size"):
        modified_beam_search(decoder, joint, torch.zeros(5, D), beam_size=0)
    assert initial_greedy_state(decoder, joint, 3).pred_proj.shape == (3, 16)
