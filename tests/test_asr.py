"""Conformer encoder and transducer: fast paths vs readable references, padding invariance,
streaming == offline (encoder outputs and greedy text), the streaming transcriber's chunking
invariance and input validation, checkpoints and presets."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minivox.asr import EOB, EOU, SILENCE_RESET_S, StreamingTranscriber, Transducer, load_model_config
from minivox.conformer import (ConformerConfig, ConformerEncoder, ConformerLayer, RelPositionMultiHeadAttention,
                               causal_depthwise_conv, chunked_limited_mask, rel_shift, rel_shift_reference,
                               relative_positional_encoding, subsampled_length)
from minivox.decoding import greedy_batch
from minivox.text import Tokenizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SR = 16000


@pytest.fixture(autouse=True)
def one_thread():
    """Small streaming steps and frame-by-frame decoding are fastest on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_encoder(seed=0, **overrides) -> ConformerEncoder:
    cfg = dict(n_layers=2, d_model=32, n_heads=4, conv_kernel_size=5, att_context_size=(4, 1))
    cfg.update(overrides)
    torch.manual_seed(seed)
    encoder = ConformerEncoder(ConformerConfig(**cfg)).eval()
    set_random_feature_stats(encoder)
    randomize_residual_branches(encoder)
    return encoder


def randomize_residual_branches(module: torch.nn.Module) -> None:
    """Random weights in the residual-branch outputs that ConformerLayer zero-initialises, so that
    every equivalence check below runs through attention, convolution and feed-forwards too
    (drawn from the global generator: callers seed it)."""
    for layer in module.modules():
        if isinstance(layer, ConformerLayer):
            for out in (layer.feed_forward1.linear2, layer.feed_forward2.linear2, layer.self_attn.linear_out,
                        layer.conv.pointwise_conv2):
                out.reset_parameters()


def set_random_feature_stats(encoder: ConformerEncoder) -> None:
    """Non-trivial input normalisation (as train/asr.py sets it), so every streaming == offline
    check also covers it: the streaming caches hold normalised frames."""
    with torch.no_grad():
        encoder.feat_mean.copy_(torch.randn(encoder.cfg.feat_in) * 2 - 5)
        encoder.feat_std.copy_(torch.rand(encoder.cfg.feat_in) * 3 + 1)


# ---------------------------------------------------------------------------------------
# Encoder pieces against readable references.
# ---------------------------------------------------------------------------------------


def test_a_new_layer_is_its_output_norm():
    """SkipInit: before training, every residual branch adds exactly zero, so a layer is
    x -> norm_out(x) and the encoder passes its subsampled input through."""
    cfg = ConformerConfig(n_layers=1, d_model=32, n_heads=4, conv_kernel_size=5, att_context_size=(4, 1))
    torch.manual_seed(0)
    layer = ConformerLayer(cfg).eval()
    x = torch.randn(2, 9, 32) * 3 + 1
    T = x.shape[1]
    mask = chunked_limited_mask(torch.arange(T), torch.arange(T), cfg.att_context_size)[None].expand(2, T, T)
    y, _, _ = layer(x, relative_positional_encoding(T - 1, -(T - 1), 32), mask, torch.ones(2, T, dtype=torch.bool))
    torch.testing.assert_close(y, layer.norm_out(x), rtol=0, atol=1e-6)
    randomize_residual_branches(layer)
    y, _, _ = layer(x, relative_positional_encoding(T - 1, -(T - 1), 32), mask, torch.ones(2, T, dtype=torch.bool))
    assert (y - layer.norm_out(x)).abs().max() > 0.1  # the helper the other tests use makes the branches count


@settings(max_examples=30, deadline=None)
@given(tq=st.integers(1, 7), cached=st.integers(0, 6))
def test_rel_shift_view_equals_gather(tq, cached):
    tk = tq + cached
    scores = torch.randn(2, 3, tq, tk + tq - 1)
    torch.testing.assert_close(rel_shift(scores, tk), rel_shift_reference(scores, tk), rtol=0, atol=0)


@pytest.mark.parametrize("context", [(4, 1), (6, 2), (0, 0), (8, 3), (-1, 1), (3, -1), (-1, -1)])
def test_chunked_limited_mask_matches_nemo_rule(context):
    """NeMo's rule written per frame: chunk c = i // (right + 1) sees frames from
    (c - left // (right + 1)) * (right + 1) to the end of chunk c."""
    left, right = context
    T = 13
    got = chunked_limited_mask(torch.arange(T), torch.arange(T), context)
    for i in range(T):
        for j in range(T):
            if right >= 0:
                size = right + 1
                first_chunk = i // size - (left // size if left >= 0 else T)
                want = first_chunk * size <= j <= (i // size + 1) * size - 1
            else:
                want = left < 0 or j >= i - left
            assert bool(got[i, j]) == want, (i, j)


def attention_reference(attn: RelPositionMultiHeadAttention, x, memory, mask):
    """Transformer-XL attention (Dai et al. 2019 eq. in §3.3) one (query, key) pair at a time."""
    B, Tq, D = x.shape
    Tk = memory.shape[1]
    H, d_k = attn.h, attn.d_k
    q = attn.linear_q(x).view(B, Tq, H, d_k)
    k = attn.linear_k(memory).view(B, Tk, H, d_k)
    v = attn.linear_v(memory).view(B, Tk, H, d_k)
    out = torch.zeros(B, Tq, H, d_k)
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                scores = []
                for j in range(Tk):
                    distance = (Tk - Tq + i) - j
                    r = attn.linear_pos(relative_positional_encoding(distance, distance, D)[0]).view(H, d_k)[h]
                    s = (q[b, i, h] + attn.pos_bias_u[h]) @ k[b, j, h] + (q[b, i, h] + attn.pos_bias_v[h]) @ r
                    scores.append(s / math.sqrt(d_k) if mask[b, i, j] else torch.tensor(-1e4))
                weights = torch.stack(scores).softmax(0)
                out[b, i, h] = (weights[:, None] * v[b, :, h]).sum(0)
    return attn.linear_out(out.view(B, Tq, D))


def test_attention_equals_reference_values_and_gradients():
    torch.manual_seed(0)
    attn = RelPositionMultiHeadAttention(16, 2, 0.0)
    with torch.no_grad():
        attn.pos_bias_u.normal_()
        attn.pos_bias_v.normal_()
    x = torch.randn(2, 3, 16, requires_grad=True)
    memory = torch.cat([torch.randn(2, 4, 16), x], dim=1)  # 4 cached frames, then the queries
    mask = torch.rand(2, 3, 7) > 0.3
    mask[:, :, -1] = True
    pos = relative_positional_encoding(6, -2, 16)
    fast = attn(x, memory, pos, mask)
    slow = attention_reference(attn, x, memory, mask)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(fast.square().sum(), [x, attn.pos_bias_v, attn.linear_pos.weight])
    grads_ref = torch.autograd.grad(slow.square().sum(), [x, attn.pos_bias_v, attn.linear_pos.weight])
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def test_positional_encoding_is_nemo_sinusoid():
    pe = relative_positional_encoding(2, -1, 6)
    for row, distance in enumerate([2, 1, 0, -1]):
        for i in range(3):
            angle = distance / 10000 ** (2 * i / 6)
            assert pe[row, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[row, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_causal_depthwise_conv_equals_conv1d():
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, 5, groups=6)
    x = torch.randn(2, 11, 6, requires_grad=True)
    fast = causal_depthwise_conv(x, conv.weight, conv.bias)
    ref = conv(x.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(fast, ref)
    g_fast = torch.autograd.grad(fast.sin().sum(), [x, conv.weight])
    g_ref = torch.autograd.grad(ref.sin().sum(), [x, conv.weight])
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b)


def test_subsampling_shapes_follow_nemo():
    enc = tiny_encoder(d_model=32)
    assert enc.pre_encode.out.in_features == 32 * 11  # 80 mel bins -> 41 -> 21 -> 11, as NeMo
    names = {name for name, _ in enc.named_parameters()}
    for name in ["pre_encode.conv.0.weight", "pre_encode.conv.2.weight", "pre_encode.conv.3.weight",
                 "pre_encode.conv.5.weight", "pre_encode.conv.6.weight", "pre_encode.out.weight",
                 "layers.1.self_attn.pos_bias_u", "layers.1.self_attn.linear_pos.weight",
                 "layers.1.conv.depthwise_conv.weight", "layers.1.conv.batch_norm.weight",
                 "layers.1.norm_feed_forward1.weight", "layers.1.feed_forward2.linear1.weight", "layers.1.norm_out.bias"]:
        assert name in names, name
    assert subsampled_length(torch.tensor([1, 8, 9, 16, 17, 500]), 8).tolist() == [1, 1, 2, 2, 3, 63]


def test_encoder_has_no_look_ahead_beyond_its_chunk():
    """Changing feature frame f changes no encoder frame whose chunk ends before frame
    ceil(f / 8), the first subsampled frame that reads f."""
    enc = tiny_encoder(att_context_size=(4, 1))
    feats = torch.randn(1, 80, 96)
    with torch.no_grad():
        base, _ = enc(feats)
        for f in (17, 40, 63):
            changed = feats.clone()
            changed[:, :, f] += 5.0
            out, _ = enc(changed)
            first_reader = math.ceil(f / 8)
            chunk_end = (torch.arange(out.shape[1]) // 2 + 1) * 2 - 1  # last frame of each frame's chunk
            untouched = chunk_end < first_reader
            assert torch.equal(out[0, untouched], base[0, untouched])
            assert not torch.allclose(out[0, ~untouched], base[0, ~untouched])


# ---------------------------------------------------------------------------------------
# Padding invariance and streaming == offline.
# ---------------------------------------------------------------------------------------


def test_encoder_batch_equals_each_utterance_alone():
    enc = tiny_encoder(att_context_size=(6, 2), conv_norm_type="layer_norm")
    torch.manual_seed(1)
    lengths = torch.tensor([203, 150, 9, 61])
    feats = torch.randn(4, 80, 203)
    for b, n in enumerate(lengths.tolist()):
        feats[b, :, n:] = float("nan")  # padding may hold anything
    with torch.no_grad():
        batch, batch_lengths = enc(feats, lengths)
        for b, n in enumerate(lengths.tolist()):
            alone, alone_lengths = enc(feats[b:b + 1, :, :n])
            assert batch_lengths[b] == alone_lengths[0] == math.ceil(n / 8)
            torch.testing.assert_close(batch[b, :alone_lengths[0]], alone[0], atol=1e-5, rtol=1e-5)
            assert torch.all(batch[b, alone_lengths[0]:] == 0)


@settings(max_examples=25, deadline=None)
@given(
    context=st.sampled_from([(4, 1), (6, 2), (2, 0), (9, 2)]),
    kernel=st.sampled_from([3, 5]),
    frames=st.integers(1, 260),
    steps=st.lists(st.integers(1, 4), min_size=1, max_size=40),
    batch=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_streaming_encoder_equals_offline(context, kernel, frames, steps, batch, seed):
    """Random chunkings (any number of attention chunks per call, then the rest) give the
    offline encoder's frames."""
    enc = tiny_encoder(seed=seed % 3, att_context_size=context, conv_kernel_size=kernel)
    feats = torch.randn(batch, 80, frames, generator=torch.Generator().manual_seed(seed))
    chunk = enc.cfg.chunk_size
    with torch.no_grad():
        offline, _ = enc(feats)
        state, outs, fed = enc.initial_state(batch), [], 0
        for n in steps:
            target = enc.feature_frames_for(state.frames_out + n * chunk)
            if target > frames:
                break
            out, state = enc.stream_step(feats[:, :, fed:target], state)
            outs.append(out)
            fed = target
        out, state = enc.stream_step(feats[:, :, fed:], state, last=True)
        outs.append(out)
    streamed = torch.cat(outs, dim=1)
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max() <= 1e-4


def test_stream_step_rejects_a_step_inside_a_chunk():
    enc = tiny_encoder(att_context_size=(4, 1))
    state = enc.initial_state(1)
    with pytest.raises(ValueError, match="chunk boundary"):
        enc.stream_step(torch.zeros(1, 80, 8), state)  # 1 encoder frame; a chunk is 2
    with pytest.raises(ValueError, match=r"float features \[B, 80, T\]"):
        enc.stream_step(torch.zeros(1, 40, 9), state)
    with pytest.raises(ValueError, match="streaming needs a limited context"):
        tiny_encoder(att_context_size=(-1, 1)).initial_state(1)


# ---------------------------------------------------------------------------------------
# The transducer.
# ---------------------------------------------------------------------------------------

TRANSCRIPTS = ["hello world", "how are you today", "the quick brown fox jumps over the lazy dog",
               "yes please", "no thanks", "what time is it", "turn on the lights", "good morning"]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train([t + EOU for t in TRANSCRIPTS * 10], vocab_size=40)


def tiny_model(tokenizer, seed=0, blank_frac=None, eou_frac=None, eob_frac=None) -> Transducer:
    """A random tiny model (asr_tiny preset). A random model emits almost always or almost never;
    blank_frac / eou_frac / eob_frac shift the output biases so that, at the start symbol, blank
    wins on that fraction of the frames of a calibration clip and <EOU> (<EOB>) beats the other
    tokens on eou_frac (eob_frac) of them: the model then writes varied text and ends
    utterances now and then."""
    cfg = load_model_config(CONFIGS / "asr_tiny.toml", [f"tokenizer.vocab_size={tokenizer.vocab_size}"])
    torch.manual_seed(seed)
    model = Transducer(cfg, tokenizer).eval()
    randomize_residual_branches(model)
    if blank_frac is None:
        return model
    with torch.no_grad():
        model.joint.enc.weight.mul_(4.0)  # make the outputs follow the audio
        enc, _ = model.encode_audio(noise(6.0, seed=100))
        out, _ = model.decoder.step(torch.tensor([model.blank_id]), model.decoder.initial_state(1))
        logits = model.joint.joint_after_projection(model.joint.project_encoder(enc[0]),
                                                    model.joint.project_prednet(out))  # [T, V + 1]
        tokens = logits[:, :model.blank_id]
        bias = model.joint.joint_net[2].bias
        bias[model.blank_id] -= torch.quantile(logits[:, model.blank_id] - tokens.max(-1).values, 1 - blank_frac)
        for symbol, frac in ((EOU, eou_frac), (EOB, eob_frac)):
            if frac is not None:
                k = tokenizer.piece_to_id(symbol)
                others = torch.cat([tokens[:, :k], tokens[:, k + 1:]], dim=1).max(-1).values
                bias[k] -= torch.quantile(tokens[:, k] - others, 1 - frac)
    return model


def noise(seconds, seed=0):
    """Test audio: noise bursts with pauses, so that a random model's outputs vary over time."""
    rng = np.random.default_rng(seed)
    audio = rng.standard_normal(int(seconds * SR)).astype(np.float32) * 0.3
    envelope = (np.sin(np.arange(audio.size) / SR * 2 * np.pi * 0.7) > -0.2).astype(np.float32)
    return audio * envelope


def test_transducer_logits_equal_stepwise_prediction(tokenizer):
    """forward's teacher-forced logits == joint(encoder frame, prediction net stepped token by token)."""
    model = tiny_model(tokenizer)
    torch.manual_seed(3)
    feats = torch.randn(2, 80, 50)
    targets = torch.tensor([[5, 9, 11], [7, 3, 0]])
    target_lengths = torch.tensor([3, 2])
    with torch.no_grad():
        logits, enc_lengths = model(feats, torch.tensor([50, 30]), targets, target_lengths)
        assert logits.shape == (2, 7, 4, tokenizer.vocab_size + 1)
        enc, _ = model.encoder(feats, torch.tensor([50, 30]))
        for b in range(2):
            state = model.decoder.initial_state(1)
            out, state = model.decoder.step(torch.tensor([model.blank_id]), state)
            for u in range(target_lengths[b] + 1):
                expected = model.joint.joint_after_projection(model.joint.project_encoder(enc[b, :enc_lengths[b]]),
                                                              model.joint.project_prednet(out))
                torch.testing.assert_close(logits[b, :enc_lengths[b], u], expected, atol=1e-5, rtol=1e-5)
                if u < target_lengths[b]:
                    out, state = model.decoder.step(targets[b, u:u + 1], state)


def test_transcribe_batch_equals_each_alone(tokenizer):
    model = tiny_model(tokenizer, seed=1, blank_frac=0.7)
    clips = [noise(1.3, 1), noise(0.4, 2), noise(2.1, 3)]
    batch = model.transcribe(clips)
    for clip, hyp in zip(clips, batch):
        (alone,) = model.transcribe(clip)
        assert hyp.y_sequence == alone.y_sequence and hyp.text == alone.text
        assert hyp.score == pytest.approx(alone.score, abs=1e-3)
    assert any(h.text for h in batch)
    word = next(w for h in batch for w in h.words)
    assert 0 <= word.start < word.end
    empty = model.transcribe([np.zeros(0, np.float32), np.zeros(100, np.float32)])
    assert [h.y_sequence for h in empty] == [[], model.transcribe(np.zeros(100, np.float32))[0].y_sequence]


@pytest.fixture(scope="module")
def eou_model(tokenizer):
    """A random model that emits text and, now and then, <EOU> and <EOB> (checked: the tests below need them)."""
    model = tiny_model(tokenizer, seed=18, blank_frac=0.7, eou_frac=0.1, eob_frac=0.05)
    hyp = model.transcribe(noise(6.0))[0]
    eou, eob = tokenizer.piece_to_id(EOU), tokenizer.piece_to_id(EOB)
    assert hyp.y_sequence.count(eou) >= 2 and hyp.y_sequence.count(eob) >= 1 and len(hyp.text) > 5, hyp.y_sequence
    return model


def collect(transcriber, audio, sizes):
    """Feed audio in chunks of the given sizes (cycled); return the results without timings."""
    results, i, k = [], 0, 0
    while i < len(audio):
        n = sizes[k % len(sizes)]
        results += transcriber.step(audio[i:i + n])
        i, k = i + n, k + 1
    results += transcriber.flush()
    for r in results:
        assert r.processing_time >= 0
        r.processing_time = 0.0
    return results


def utterances(results):
    """Join deltas into utterances (a final result closes one)."""
    done, current = [], ""
    for r in results:
        current += r.text
        if r.is_final:
            done.append(current)
            current = ""
    return done + ([current] if current else [])


def offline_utterances(model, audio, silence_reset_s, emit_thresholds=None):
    """Offline greedy decoding (as `transcribe`), cut where the prediction net restarted.

    Returns (utterance texts, all tokens, token counts at the restarts)."""
    enc, lengths = model.encode_audio(audio)
    state = greedy_batch(model.decoder, model.joint, enc, lengths, reset_ids=list(model.special_ids().values()),
                         reset_after_blank_frames=model._silence_frames(silence_reset_s),
                         emit_thresholds=emit_thresholds)
    tokens = state.hyps[0].y_sequence
    if not emit_thresholds:
        assert tokens == model.transcribe(audio, silence_reset_s=silence_reset_s)[0].y_sequence
    cuts = [0] + [n for n, _ in state.restarts[0]] + [len(tokens)]
    special = set(model.special_ids().values())
    texts = [model.tokenizer.decode([t for t in tokens[a:b] if t not in special]) for a, b in zip(cuts, cuts[1:])]
    return texts[:-1] + ([texts[-1]] if texts[-1] else []), tokens, cuts[1:-1]


def test_streaming_transcriber_equals_offline_transcribe(eou_model, tokenizer):
    audio = noise(6.0)
    expected, tokens, cuts = offline_utterances(eou_model, audio, SILENCE_RESET_S)
    results = collect(StreamingTranscriber(eou_model), audio, [1280])
    assert utterances(results) == expected
    # One final per restart of the search (<EOU>, <EOB>, silence), and one at the stream's end
    # if an utterance is open. <EOB> ends utterances too (this random model emits it only at
    # the start symbol, so no word precedes it and its latency stays None).
    eou, eob = tokenizer.piece_to_id(EOU), tokenizer.piece_to_id(EOB)
    assert tokens.count(eob) >= 1
    open_at_end = len(tokens) > (cuts[-1] if cuts else 0)
    assert sum(r.is_final for r in results) == len(cuts) + open_at_end
    # eou_prob is the largest <EOU> probability over a result's frames: at least that of any
    # <EOU> the offline search emitted, and 0 < p < 1 where an <EOU> ended the utterance.
    offline = eou_model.transcribe(audio)[0]
    emitted = [c for y, c in zip(offline.y_sequence, offline.token_confidence) if y == eou]
    assert max(r.eou_prob for r in results) >= max(emitted) - 1e-5
    # <EOU> finals carry a latency when their utterance has a word (random models also emit bare <EOU>s).
    with_latency = [r for r in results if r.eou_latency is not None]
    assert all(r.is_final and 0 <= r.eou_latency <= r.audio_time for r in with_latency)
    assert 2 <= len(with_latency) <= tokens.count(eou)
    assert all(0 < r.eou_prob < 1 for r in with_latency)


def same_results(a, b):
    """Equal text and flags; equal numbers up to float error (the feature frames of different
    chunkings agree to ~1e-7)."""
    assert [(r.text, r.is_final) for r in a] == [(r.text, r.is_final) for r in b]
    for x, y in zip(a, b):
        for name in ("eou_prob", "eob_prob", "eou_latency", "eob_latency", "audio_time"):
            assert getattr(x, name) == pytest.approx(getattr(y, name), abs=1e-5), name


@settings(max_examples=12, deadline=None)
@given(sizes=st.lists(st.integers(0, 9000), min_size=1, max_size=6).filter(lambda s: sum(s) >= 300))
def test_streaming_results_do_not_depend_on_chunk_sizes(eou_model, sizes):
    audio = noise(4.0, seed=5)
    reference = collect(StreamingTranscriber(eou_model), audio, [1280])  # 80 ms chunks
    same_results(collect(StreamingTranscriber(eou_model), audio, sizes), reference)


def test_eou_threshold_ends_utterances_where_eou_reaches_it(eou_model, tokenizer):
    """StreamingTranscriber(eou_threshold=p) streams what offline greedy search with
    emit_thresholds={<EOU>: p} decodes, in any chunking, and ends more utterances with <EOU>."""
    audio = noise(6.0)
    eou = tokenizer.piece_to_id(EOU)
    plain = collect(StreamingTranscriber(eou_model), audio, [1280])
    expected, tokens, _ = offline_utterances(eou_model, audio, SILENCE_RESET_S, emit_thresholds={eou: 0.05})
    for sizes in ([1280], [500, 3000, 77]):
        results = collect(StreamingTranscriber(eou_model, eou_threshold=0.05), audio, sizes)
        assert utterances(results) == expected
    eou_finals = lambda rs: sum(r.is_final and r.eou_latency is not None for r in rs)  # noqa: E731
    assert eou_finals(results) > eou_finals(plain)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="eou_threshold"):
            StreamingTranscriber(eou_model, eou_threshold=bad)


def test_streaming_results_shape(eou_model):
    results = collect(StreamingTranscriber(eou_model), noise(3.0, seed=7), [1280])
    chunk_s = 2 * eou_model.cfg.frame_seconds  # context [.., 1]: 2 encoder frames per step
    times = [r.audio_time for r in results]
    assert times == sorted(times) and 3.0 - chunk_s <= times[-1] <= 3.0
    assert all(0 <= r.eou_prob <= 1 and 0 <= r.eob_prob <= 1 for r in results)
    frames = math.ceil(3.0 * 100 / 8)  # 10 ms features, 8x subsampling
    # Results for every 2-frame chunk (none for no frames), plus, when an utterance is still open
    # at the end, flush's final result at the stream's end (3.0 s, no chunk ends there).
    chunk_times = set(times) - {3.0}
    assert len(chunk_times) == math.ceil(frames / 2)
    assert all(r.is_final and r is results[-1] for r in results if r.audio_time == 3.0)


def test_streaming_silence_ends_the_utterance(tokenizer):
    model = tiny_model(tokenizer, seed=1, blank_frac=0.7)
    audio = np.concatenate([noise(1.0, 3), np.zeros(int(2.0 * SR), np.float32), noise(1.0, 4)])
    results = collect(StreamingTranscriber(model, silence_reset_s=0.5), audio, [1280])
    finals = [r for r in results if r.is_final]
    assert len(finals) >= 2 and all(r.eou_latency is None for r in finals)  # silence and end of stream
    expected, _, _ = offline_utterances(model, audio, 0.5)
    assert utterances(results) == expected and len(expected) >= 2


def test_transcriber_rejects_bad_input(eou_model):
    tr = StreamingTranscriber(eou_model)
    bad = [
        (np.zeros(160, np.int16), "dtype int16"),
        (np.zeros(160, np.float64), "dtype float64"),
        (np.zeros((2, 160), np.float32), r"shape \(2, 160\)"),
        (torch.zeros(160, dtype=torch.float16), "torch.float16"),
        ([0.0] * 160, "got list"),
        (np.full(160, np.nan, np.float32), "NaN"),
        (np.full(160, 3000.0, np.float32), "samples up to 3000"),
    ]
    for pcm, detail in bad:
        with pytest.raises(ValueError, match=r"expected mono float32 PCM.*" + detail):
            tr.step(pcm)
    with pytest.raises(ValueError, match="expected mono float32 PCM at 16000 Hz, got 8000 Hz"):
        tr.step(np.zeros(160, np.float32), sample_rate=8000)
    assert tr.step(np.zeros(0, np.float32)) == []  # an empty chunk is fine
    with pytest.raises(ValueError, match="multiple of the attention chunk"):
        StreamingTranscriber(eou_model, chunk_frames=3)


def test_beam_search_transcription(eou_model):
    """transcribe(beam_size=4) runs modified beam search per clip; on this clip its best score is
    not below greedy's (one token per frame, no restarts: the same search space)."""
    audio = noise(2.0, seed=9)
    beam = eou_model.transcribe(audio, beam_size=4)[0]
    greedy = eou_model.transcribe(audio, max_symbols_per_step=1, silence_reset_s=None)[0]
    assert beam.score >= greedy.score - 1e-4
    assert beam.text == eou_model.tokenizer.decode([y for y in beam.y_sequence if y not in (1, 2)])
    assert len(beam.timestamps) == len(beam.y_sequence)


# ---------------------------------------------------------------------------------------
# Checkpoints and presets.
# ---------------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path, eou_model, tokenizer):
    path = eou_model.save(tmp_path / "asr.pt", meta={"step": 3})
    loaded = Transducer.from_checkpoint(path)
    assert loaded.tokenizer == tokenizer and loaded.meta["step"] == 3 and loaded.cfg == eou_model.cfg
    audio = noise(1.5, seed=11)
    assert loaded.transcribe(audio)[0].y_sequence == eou_model.transcribe(audio)[0].y_sequence
    from minivox.checkpoint import save_checkpoint
    other = save_checkpoint(tmp_path / "llm.pt", "llm", {}, {})
    with pytest.raises(ValueError, match="'asr' checkpoint was expected"):
        Transducer.from_checkpoint(other)


def test_presets_load_and_are_sized_as_documented():
    sizes = {}
    for name in ("asr_tiny", "asr_demo", "asr_base"):
        cfg = load_model_config(CONFIGS / f"{name}.toml")
        sizes[name] = sum(p.numel() for p in Transducer(cfg).parameters())
    assert sizes["asr_tiny"] < 100_000
    assert 3e6 < sizes["asr_demo"] < 10e6  # "a few million parameters"
    assert 25e6 < sizes["asr_base"] < 45e6  # FastConformer-medium-like (NeMo's medium: 32M)
    assert load_model_config(CONFIGS / "asr_demo.toml").encoder.att_context_size == (70, 1)
    with pytest.raises(ValueError, match="unknown config key 'model.encoder.n_layer'"):
        load_model_config(CONFIGS / "asr_tiny.toml", ["encoder.n_layer=3"])
    with pytest.raises(ValueError, match="multiple of the chunk size"):
        load_model_config(CONFIGS / "asr_tiny.toml", ["encoder.att_context_size=[5, 1]"])


def test_tiny_preset_training_step_is_fast(tokenizer):
    """The tiny preset exists for tests: forward + backward of a small batch in milliseconds."""
    import time
    model = tiny_model(tokenizer).train()
    feats, lengths = torch.randn(4, 80, 200), torch.tensor([200, 180, 150, 120])
    targets, target_lengths = torch.randint(0, tokenizer.vocab_size, (4, 12)), torch.tensor([12, 10, 8, 5])
    times = []
    for _ in range(3):
        start = time.perf_counter()
        logits, _ = model(feats, lengths, targets, target_lengths)
        F.cross_entropy(logits.flatten(0, 2), torch.zeros(logits.shape[:3], dtype=torch.long).flatten()).backward()
        times.append(time.perf_counter() - start)
    assert min(times) < 0.25, times


def test_long_recordings_are_encoded_in_streaming_blocks(tokenizer, monkeypatch):
    """Above LONG_FORM_FRAMES, encode_audio streams each recording in blocks: same frames."""
    import minivox.asr as asr
    model = tiny_model(tokenizer)
    clips = [noise(3.0, 1), noise(1.9, 2)]
    offline, offline_lengths = model.encode_audio(clips)
    monkeypatch.setattr(asr, "LONG_FORM_FRAMES", 10)
    monkeypatch.setattr(asr, "LONG_FORM_BLOCK", 6)
    blocks, block_lengths = model.encode_audio(clips)
    assert torch.equal(block_lengths, offline_lengths)
    torch.testing.assert_close(blocks, offline, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_tiny_model_overfits_a_few_utterances():
    """Training end to end (logits layout, blank last, minivox.kernels.rnnt_loss) and greedy
    decoding agree: three random-feature 'utterances' are learnt to exact transcripts."""
    from minivox.kernels import rnnt_loss

    no_dropout = [f"{k}=0.0" for k in ("encoder.dropout", "encoder.dropout_att", "encoder.dropout_pre_encoder",
                                       "decoder.dropout", "joint.dropout")]
    cfg = load_model_config(CONFIGS / "asr_tiny.toml", ["tokenizer.vocab_size=12"] + no_dropout)
    torch.manual_seed(0)
    model = Transducer(cfg)
    feats, feat_lengths = torch.randn(3, 80, 120), torch.tensor([120, 100, 80])
    targets, target_lengths = torch.tensor([[3, 5, 7, 2], [4, 4, 9, 0], [8, 1, 0, 0]]), torch.tensor([4, 3, 2])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(1, 801):
        logits, enc_lengths = model(feats, feat_lengths, targets, target_lengths)
        loss = rnnt_loss(logits, targets, enc_lengths, target_lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            with torch.no_grad():
                enc, enc_lengths = model.eval().encoder(feats, feat_lengths)
                hyps = greedy_batch(model.decoder, model.joint, enc, enc_lengths).hyps
            model.train()
            if [h.y_sequence for h in hyps] == [t[:n].tolist() for t, n in zip(targets, target_lengths)]:
                break
    assert [h.y_sequence for h in hyps] == [t[:n].tolist() for t, n in zip(targets, target_lengths)], step
    assert float(loss) < 0.1


def test_bundled_demo_model_streams_what_it_transcribes_offline():
    """The bundled asr_demo.pt on speech (the bundled TTS voice, two sentences with a pause): the
    streaming transcriber in 80 ms chunks writes the offline greedy text, utterance by utterance, with
    the same <EOU>s as final results. Accuracy is measured in bench/asr.py, not here."""
    from minivox.audio import resample as resample_audio
    from minivox.pretrained import PRETRAINED_DIR
    from minivox.tts import TTS

    model = Transducer.from_checkpoint(PRETRAINED_DIR / "asr_demo.pt").eval()
    tts = TTS.from_checkpoints()
    clips = []
    for text in ("What time is it?", "Set a timer for ten minutes."):
        audio, rate = tts.synthesize(text)
        clips += [np.zeros(SR // 2, np.float32), np.asarray(resample_audio(audio, rate, SR), dtype=np.float32)]
    clips.append(np.zeros(SR, np.float32))
    audio = np.concatenate(clips)
    results = collect(StreamingTranscriber(model), audio, [1280])
    expected, tokens, _ = offline_utterances(model, audio, SILENCE_RESET_S)
    assert utterances(results) == expected and len(expected) == 2, (utterances(results), expected)
    assert all(text.strip() for text in expected)
    eou_finals = sum(r.is_final and r.eou_latency is not None for r in results)
    assert eou_finals == tokens.count(model.tokenizer.piece_to_id(EOU)) >= 1  # the same <EOU>s, at least one


def test_set_att_context_streams_with_the_new_look_ahead(eou_model):
    """A model switched from [4, 1] to [4, 0] streams what it transcribes offline under the new mask
    (one-frame chunks), and its encoder output differs (the look-ahead is gone); a context that
    cannot stream is refused with the reason."""
    audio = noise(4.0, seed=9)
    before, _ = eou_model.encode_audio(audio)
    try:
        eou_model.set_att_context((4, 0))
        assert eou_model.encoder.cfg.att_context_size == (4, 0) and eou_model.encoder.cfg.chunk_size == 1
        after, _ = eou_model.encode_audio(audio)
        assert not torch.allclose(before, after, atol=1e-3)
        expected, _, _ = offline_utterances(eou_model, audio, SILENCE_RESET_S)
        transcriber = StreamingTranscriber(eou_model)
        assert transcriber.chunk_frames == 1
        assert utterances(collect(transcriber, audio, [640, 1000])) == expected
        for bad in ((4, -1), (-1, 0), (5, 1)):
            with pytest.raises(ValueError):
                eou_model.set_att_context(bad)
        assert eou_model.cfg.encoder.att_context_size == (4, 0)  # a refused context changes nothing
    finally:
        eou_model.set_att_context((4, 1))
    again, _ = eou_model.encode_audio(audio)
    assert torch.equal(before, again)
