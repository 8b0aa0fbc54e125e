"""minivox.llm: cached == uncached, SDPA == written-out attention, sampling sets, generation, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minivox.llm import (GPT, GPTConfig, KVCache, RMSNorm, SamplingConfig, apply_repetition_penalty, apply_rope,
                         attention_reference, causal_mask, continuation_logprobs, generate, load_model_config, apply_rope_reference,
                         rope_tables, sample_token, top_k_filter, top_p_filter)

CFG = GPTConfig(vocab_size=97, n_layer=2, n_head=2, d_model=32, max_seq_len=64)


def make_model(cfg: GPTConfig = CFG, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg).eval()


MODEL = make_model()
SWIGLU_AND_GELU = [MODEL, make_model(GPTConfig(vocab_size=97, n_layer=2, n_head=4, d_model=32, max_seq_len=64, mlp="gelu"))]


# ---- leaves ----------------------------------------------------------------------------


def test_rms_norm_matches_torch():
    x = torch.randn(3, 5, 32)
    norm = RMSNorm(32, 1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    torch.testing.assert_close(norm(x), torch.nn.functional.rms_norm(x, (32,), norm.weight, 1e-5))


@given(positions=st.lists(st.integers(0, 63), min_size=1, max_size=8))
@settings(max_examples=20, deadline=None)
def test_rope_matches_complex_rotation(positions):
    cos, sin = rope_tables(64, 16, 10000.0)
    pos = torch.tensor(positions)
    x = torch.randn(2, 3, len(positions), 16)  # [B, H, T, K]
    torch.testing.assert_close(apply_rope(x, cos[pos], sin[pos]), apply_rope_reference(x, pos, 10000.0), atol=1e-5, rtol=1e-5)


@given(m=st.integers(0, 40), n=st.integers(0, 40), shift=st.integers(0, 20))
@settings(max_examples=30, deadline=None)
def test_rope_scores_depend_only_on_relative_position(m, n, shift):
    """<rope(q, m), rope(k, n)> == <rope(q, m + s), rope(k, n + s)>, and rotation keeps norms."""
    cos, sin = rope_tables(64, 16, 10000.0)
    gen = torch.Generator().manual_seed(m * 100 + n)
    q, k = torch.randn(1, 1, 16, generator=gen), torch.randn(1, 1, 16, generator=gen)  # [B, T, K]

    def rot(x, pos):  # x [B, T=1, K]
        return apply_rope(x, cos[pos : pos + 1], sin[pos : pos + 1])

    a = (rot(q, m) * rot(k, n)).sum()
    b = (rot(q, m + shift) * rot(k, n + shift)).sum()
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rot(q, m).norm(), q.norm(), atol=1e-5, rtol=1e-5)


@given(start=st.integers(0, 10), T=st.integers(1, 6))
@settings(max_examples=30, deadline=None)
def test_sdpa_with_causal_mask_matches_written_out_attention(start, T):
    gen = torch.Generator().manual_seed(start * 10 + T)
    S = start + T
    q = torch.randn(2, 3, T, 8, generator=gen)
    k, v = torch.randn(2, 3, S, 8, generator=gen), torch.randn(2, 3, S, 8, generator=gen)
    mask = causal_mask(start, T, S)
    fast = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1)
    torch.testing.assert_close(fast, attention_reference(q, k, v, start), atol=1e-5, rtol=1e-5)


# ---- cached == uncached -------------------------------------------------------------------


@pytest.mark.parametrize("model", SWIGLU_AND_GELU, ids=["swiglu", "gelu"])
@given(data=st.data())
@settings(max_examples=25, deadline=None)
def test_kv_cached_logits_equal_uncached(model, data):
    """Feeding a sequence in arbitrary chunks through the cache gives the logits of one full pass."""
    length = data.draw(st.integers(1, 48), label="length")
    cuts = sorted(data.draw(st.sets(st.integers(1, length - 1), max_size=5), label="cuts")) if length > 1 else []
    gen = torch.Generator().manual_seed(length)
    tokens = torch.randint(0, CFG.vocab_size, (1, length), generator=gen)
    with torch.no_grad():
        full = model(tokens)  # [1, T, V]
        cache = model.new_cache()
        pieces = [model(tokens[:, a:b], cache) for a, b in zip([0, *cuts], [*cuts, length])]
    assert cache.length == length
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=2e-5, rtol=1e-4)


def test_right_padding_does_not_change_real_positions():
    tokens = torch.randint(0, CFG.vocab_size, (1, 20))
    padded = torch.cat([tokens, torch.zeros(1, 7, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(MODEL(padded)[:, :20], MODEL(tokens), atol=1e-5, rtol=1e-5)


def test_batched_cache_rows_are_independent():
    tokens = torch.randint(0, CFG.vocab_size, (3, 12))
    with torch.no_grad():
        cache = MODEL.new_cache(batch_size=3)
        MODEL(tokens[:, :8], cache)
        batched = MODEL(tokens[:, 8:], cache)
        for row in range(3):
            single = MODEL(tokens[row : row + 1])[:, 8:]
            torch.testing.assert_close(batched[row : row + 1], single, atol=2e-5, rtol=1e-4)


def test_context_overflow_and_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="exceeds"):
        MODEL(torch.zeros(1, CFG.max_seq_len + 1, dtype=torch.long))
    cache = MODEL.new_cache(max_len=8)
    with torch.no_grad():
        MODEL(torch.zeros(1, 8, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="exceeds"):
            MODEL(torch.zeros(1, 1, dtype=torch.long), cache)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        MODEL(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="head"):
        GPTConfig(d_model=30, n_head=4)


# ---- sampling ------------------------------------------------------------------------------

logit_rows = st.lists(st.floats(-8, 8, allow_nan=False, width=32), min_size=2, max_size=30)


@given(logits=logit_rows, k=st.integers(1, 30), seed=st.integers(0, 2**31))
@settings(max_examples=60, deadline=None)
def test_top_k_never_samples_outside_the_k_largest(logits, k, seed):
    x = torch.tensor([logits])
    kth = sorted(logits, reverse=True)[min(k, len(logits)) - 1]
    allowed = {i for i, v in enumerate(logits) if torch.tensor(v, dtype=torch.float32) >= torch.tensor(kth, dtype=torch.float32)}
    gen = torch.Generator().manual_seed(seed)
    sampling = SamplingConfig(temperature=1.5, top_k=k)
    draws = {int(sample_token(x, sampling, gen)[0]) for _ in range(20)}
    assert draws <= allowed
    assert set(torch.nonzero(torch.isfinite(top_k_filter(x, k))[0]).flatten().tolist()) == allowed


def nucleus_reference(logits: list[float], p: float) -> set[int]:
    """Slow reference: walk tokens from most to least likely, keep them until the mass reaches p."""
    probs = torch.tensor(logits, dtype=torch.float32).softmax(0).tolist()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += probs[i]
        if mass >= p:
            break
    return kept


@given(logits=logit_rows, p=st.floats(0.05, 0.99), seed=st.integers(0, 2**31))
@settings(max_examples=60, deadline=None)
def test_top_p_never_samples_outside_the_nucleus(logits, p, seed):
    x = torch.tensor([logits])
    probs = sorted(torch.tensor(logits).softmax(0).tolist(), reverse=True)
    cumulative = [sum(probs[: i + 1]) for i in range(len(probs))]
    near_tie = any(abs(a - b) < 1e-6 for a, b in zip(probs, probs[1:]))
    assume(not near_tie and all(abs(c - p) > 1e-5 for c in cumulative))  # else the nucleus is ambiguous
    allowed = nucleus_reference(logits, p)
    kept = set(torch.nonzero(torch.isfinite(top_p_filter(x, p))[0]).flatten().tolist())
    assert kept == allowed
    gen = torch.Generator().manual_seed(seed)
    draws = {int(sample_token(x, SamplingConfig(temperature=1.0, top_p=p), gen)[0]) for _ in range(20)}
    assert draws <= allowed


def test_repetition_penalty_matches_ctrl_rule():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, -2.0, 0.5, 3.0]]))


def test_bad_sampling_settings_raise():
    for bad in ({"temperature": -1}, {"top_p": 0.0}, {"top_k": -2}, {"repetition_penalty": 0}):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)


# ---- generation ------------------------------------------------------------------------------


def greedy_reference(model: GPT, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding with a full uncached forward per token."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def test_greedy_generation_is_deterministic_and_equals_uncached_reference():
    prompt = [5, 17, 3, 44, 9]
    sampling = SamplingConfig(temperature=0.0, max_tokens=20)
    first = list(generate(MODEL, prompt, sampling))
    second = list(generate(MODEL, prompt, sampling))
    assert first == second == greedy_reference(MODEL, prompt, 20)


def test_seeded_sampling_is_reproducible():
    sampling = SamplingConfig(temperature=1.0, top_p=0.95, max_tokens=15, seed=1234)
    runs = [list(generate(MODEL, [1, 2, 3], sampling)) for _ in range(2)]
    assert runs[0] == runs[1]
    other = list(generate(MODEL, [1, 2, 3], SamplingConfig(temperature=1.0, max_tokens=15, seed=99)))
    assert other != runs[0]  # 15 draws over 97 tokens colliding by chance is negligible


def test_stop_tokens_max_tokens_and_context_end():
    prompt = [5, 17, 3]
    free = list(generate(MODEL, prompt, SamplingConfig(temperature=0.0, max_tokens=10)))
    stopper = free[4]
    stream = generate(MODEL, prompt, SamplingConfig(temperature=0.0, max_tokens=10, stop_tokens=(stopper,)))
    out = list(stream)
    assert out == free[: free.index(stopper)] and stream.finish_reason == "stop"
    stream = generate(MODEL, prompt, SamplingConfig(temperature=0.0, max_tokens=6))
    assert len(list(stream)) == 6 and stream.finish_reason == "length"
    stream = generate(MODEL, list(range(60)), SamplingConfig(temperature=0.0, max_tokens=100))
    assert len(list(stream)) == CFG.max_seq_len - 60 + 1 and stream.finish_reason == "length"
    with pytest.raises(ValueError, match="prompt"):
        generate(MODEL, list(range(64)))


def test_prefix_reuse_gives_the_same_tokens_as_a_fresh_cache():
    sampling = SamplingConfig(temperature=0.0, max_tokens=8)
    cache = MODEL.new_cache()
    list(generate(MODEL, [1, 2, 3, 4, 5, 6], sampling, cache=cache))
    prompt = [1, 2, 3, 4, 7, 8, 9]
    stream = generate(MODEL, prompt, sampling, cache=cache)
    reused = list(stream)
    assert stream.reused_prefix == 4
    assert reused == list(generate(MODEL, prompt, sampling))


@given(data=st.data())
@settings(max_examples=25, deadline=None)
def test_continuation_logprobs_equal_one_uncached_pass(data):
    """Each continuation's token log-probs are those of one full pass over prefix + continuation,
    whatever an earlier generation left in the cache; the cache ends holding the prefix."""
    ids = st.integers(0, CFG.vocab_size - 1)
    prefix = data.draw(st.lists(ids, min_size=1, max_size=20), label="prefix")
    continuations = data.draw(st.lists(st.lists(ids, min_size=1, max_size=8), min_size=1, max_size=4), label="conts")
    earlier = data.draw(st.lists(ids, max_size=20), label="earlier prompt")  # may share a prefix or not
    cache = MODEL.new_cache()
    if earlier:
        list(generate(MODEL, earlier, SamplingConfig(temperature=0.0, max_tokens=3), cache=cache))
    got = continuation_logprobs(MODEL, prefix, continuations, cache)
    with torch.no_grad():
        for continuation, logprobs in zip(continuations, got):
            full = torch.log_softmax(MODEL(torch.tensor([prefix + continuation]))[0], dim=-1)  # [T, V]
            want = [float(full[len(prefix) - 1 + j, t]) for j, t in enumerate(continuation)]
            assert logprobs == pytest.approx(want, abs=1e-4)
    assert cache.length == len(prefix) and cache.token_ids == prefix
    with pytest.raises(ValueError, match="non-empty"):
        continuation_logprobs(MODEL, prefix, [[]])


def test_banned_tokens_are_never_generated():
    free = list(generate(MODEL, [1, 2, 3], SamplingConfig(temperature=0.0, max_tokens=12)))
    banned = set(free)
    out = list(generate(MODEL, [1, 2, 3], SamplingConfig(temperature=0.0, max_tokens=12), banned_tokens=banned))
    assert not banned & set(out)


def test_cancel_sets_finish_reason():
    stream = generate(MODEL, [1, 2], SamplingConfig(temperature=0.0, max_tokens=50))
    next(stream)
    stream.close()
    assert stream.finish_reason == "cancelled" and list(stream) == []


# ---- checkpoints and presets ------------------------------------------------------------------


def test_checkpoint_round_trip_fp16(tmp_path):
    path = MODEL.save(tmp_path / "llm.pt", meta={"step": 3}, fp16=True)
    loaded = GPT.from_checkpoint(path)
    assert loaded.cfg == CFG and loaded.meta["step"] == 3
    tokens = torch.randint(0, CFG.vocab_size, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), MODEL(tokens), atol=2e-2, rtol=0)  # fp16 weights
    assert loaded.embed.weight.dtype == torch.float32


@pytest.mark.parametrize("name", ["llm_tiny", "llm_demo", "llm_base"])
def test_presets_load(name):
    from minivox.config import load_config
    from minivox.train.llm import TrainLLMConfig

    cfg = load_config(TrainLLMConfig, f"configs/{name}.toml")
    assert cfg.model == load_model_config(f"configs/{name}.toml")
    assert cfg.model.d_model % cfg.model.n_head == 0


def test_demo_size_parameter_count():
    cfg = load_model_config("configs/llm_demo.toml")
    # embeddings V*D + per layer: qkv 3D^2, proj D^2, SwiGLU 3*D*F, two norms; final norm
    D, F_ = cfg.d_model, cfg.hidden_dim
    expected = cfg.vocab_size * D + cfg.n_layer * (4 * D * D + 3 * D * F_ + 2 * D) + D
    assert GPT(cfg).num_parameters() == expected
    assert math.isclose(expected / 1e6, 5.87, abs_tol=0.05)


def test_kv_cache_rejects_bad_sizes():
    with pytest.raises(ValueError, match="max_len"):
        KVCache(CFG, max_len=CFG.max_seq_len + 1)
    cache = MODEL.new_cache()
    with pytest.raises(ValueError, match="crop"):
        cache.crop(3)


def test_int8_model_stays_close_to_fp32_and_keeps_the_cache_contract():
    from minivox.llm import quantize_int8

    torch.manual_seed(3)
    model = GPT(GPTConfig(vocab_size=97, n_layer=2, n_head=2, d_model=64, max_seq_len=64)).eval()
    model.tokenizer = object()  # any attached tokenizer is shared, not copied
    q = quantize_int8(model)
    assert q.tokenizer is model.tokenizer and isinstance(model.blocks[0].attn.qkv, torch.nn.Linear)
    tokens = torch.randint(0, 97, (1, 30))
    with torch.no_grad():
        full, ref = q(tokens), model(tokens)
        cache = q.new_cache()
        chunked = torch.cat([q(tokens[:, :17], cache), q(tokens[:, 17:], cache)], dim=1)
    # activations are quantized per call, so chunking changes logits a little (not bit for bit as in fp32)
    assert (chunked - full).abs().max() < 0.02 * full.abs().max()
    assert (full - ref).abs().max() < 0.05 * ref.abs().max()  # int8 weights: small relative error


# ---- training script ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm_data(tmp_path_factory):
    """A small sentence corpus and dialogue splits in the formats of `minivox data text/dialogues`."""
    import json

    from minivox.data.dialogues import LLMDataConfig, generate_dialogues

    root = tmp_path_factory.mktemp("llm_data")
    words = "the a cat dog sat ran on under big small red blue house tree quickly slowly".split()
    rng = __import__("random").Random(0)
    with open(root / "sentences.jsonl", "w") as f:
        for _ in range(400):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9))).capitalize() + "."
            f.write(json.dumps({"text": text, "source": "test"}) + "\n")
    cfg = LLMDataConfig()
    cfg.dialogues.chatterbot_prob = 0.0
    for split, n in (("train", 80), ("dev", 6)):
        with open(root / f"dialogues_{split}.jsonl", "w") as f:
            for row in generate_dialogues(cfg, split, n, log=lambda m: None):
                f.write(json.dumps(row) + "\n")
    return root


def test_training_resume_is_exact_across_the_phase_boundary(llm_data, tmp_path):
    """6 straight steps == 4 steps, stop, --resume, 2 more (pre-training 3 + SFT 3, with token
    noise and copying rows in both phases): same weights, bit for bit."""
    from minivox.train.llm import main

    common = [f"data.sentences={llm_data / 'sentences.jsonl'}",
              f"data.dialogues_dir={llm_data}", "pretrain.steps=3", "sft.steps=3", "pretrain.batch_tokens=256",
              "sft.batch_tokens=1024", "eval_dialogues=1", "data.max_sentences=0", "sft.user_token_noise=0.2",
              "pretrain.copy_share=0.5", "sft.copy_share=0.25"]
    config = ["--config", "configs/llm_tiny.toml"]
    assert main(config + ["--out", str(tmp_path / "straight")] + common) == 0
    assert main(config + ["--out", str(tmp_path / "split")] + common + ["stop_at=4"]) == 0
    assert GPT.from_checkpoint(tmp_path / "split" / "llm.pt").meta["step"] == 4
    assert main(config + ["--out", str(tmp_path / "split"), "--resume", str(tmp_path / "split" / "state.pt")] + common) == 0
    straight = GPT.from_checkpoint(tmp_path / "straight" / "llm.pt")
    resumed = GPT.from_checkpoint(tmp_path / "split" / "llm.pt")
    assert straight.tokenizer == resumed.tokenizer and resumed.meta["step"] == 6
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    log = [__import__("json").loads(line) for line in open(tmp_path / "split" / "log.jsonl")]
    evals = [r for r in log if r["kind"] == "eval"]
    assert {"heldout_ppl", "dev_sft_loss", "tool_call_accuracy", "answer_accuracy"} <= set(evals[-1])


def test_with_repeats_ends_a_share_of_rows_with_a_span_of_themselves():
    from minivox.train.llm import with_repeats

    rows = torch.arange(400 * 33).view(400, 33)  # every token distinct: a copied span is easy to find
    assert torch.equal(with_repeats(rows, 0.0, seed=1)[0], rows)
    out, lengths = with_repeats(rows, 0.5, seed=1)
    assert torch.equal(out, with_repeats(rows, 0.5, seed=1)[0]) and torch.equal(rows, torch.arange(400 * 33).view(400, 33))
    changed = 0
    for row, new, length in zip(rows, out, lengths):
        if torch.equal(row, new):
            assert length == 0
            continue
        changed += 1
        k = int((row != new).sum())  # the tail was replaced ...
        assert k == length
        assert 8 <= k <= 11 and torch.equal(new[:-k], row[:-k])
        start = int(new[-k]) - int(row[0])  # ... by the span of the row that starts with its first token
        assert 0 <= start <= 33 - 2 * k and torch.equal(new[-k:], row[start:start + k])
    assert 160 <= changed <= 240  # ~ half of 400


def induction_oracle(x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Logits of a perfect copier: the token that followed the previous occurrence of the current one."""
    logits = torch.zeros(*x.shape, vocab_size)
    for b, row in enumerate(x.tolist()):
        for t, token in enumerate(row):
            earlier = [j for j in range(t) if row[j] == token]
            if earlier:
                logits[b, t, row[earlier[-1] + 1]] = 1.0
    return logits


def test_copy_accuracy_tells_a_copier_from_a_model_that_does_not():
    from minivox.train.llm import copy_accuracy

    rows = torch.arange(40 * 33).view(40, 33)  # distinct tokens: only a repeat can be predicted
    assert copy_accuracy(lambda x: induction_oracle(x, 40 * 33), rows) == (1.0, 0.0)
    assert copy_accuracy(lambda x: torch.zeros(*x.shape, 40 * 33), rows) == (0.0, 0.0)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), width=st.integers(16, 80), seed=st.integers(0, 10**6))
def test_induction_rows_score_exactly_what_copying_predicts(n, width, seed):
    """Each row is a span of 8 <= p <= width // 2 tokens of the vocabulary, repeated; the targets are
    the next tokens from the span's second copy on (after its first token), and a perfect copier predicts every one of
    them (a large vocabulary: chance repeats inside a span almost never happen)."""
    from minivox.train.llm import IGNORE_INDEX, induction_rows

    vocab = torch.arange(10**6, 10**6 + 10**5)
    x, y = induction_rows(n, width, vocab, torch.Generator().manual_seed(seed))
    again = induction_rows(n, width, vocab, torch.Generator().manual_seed(seed))
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    assert x.shape == y.shape == (n, width) and bool(((x >= 10**6) & (x < 10**6 + 10**5)).all())
    for row, target in zip(x, y):
        scored = (target != IGNORE_INDEX).nonzero().flatten()
        p = width - len(scored)  # the period: scored from the second copy's first token on
        assert 8 <= p <= width // 2 and scored.tolist() == list(range(p, width))
        assert torch.equal(row[p:], row[:width - p])  # periodic
        assert torch.equal(target[p:-1], row[p + 1:])  # targets are the next inputs ...
        assert int(target[-1]) == int(row[width - p])  # ... and the last one continues the pattern
        if len(set(row[:p].tolist())) == p:  # no chance repeat inside the span: a copier is exact
            hits = induction_oracle(row[None], 10**6 + 10**5)[0].argmax(-1) == target
            assert bool(hits[scored].all())


def test_copy_vocabulary_and_join_batches():
    from minivox.train.llm import IGNORE_INDEX, copy_vocabulary, join_batches

    ids = [[5, 5, 5, 2, 9], [9, 5, 7]]
    assert copy_vocabulary(ids, 2, exclude=set()).tolist() == [5, 9]
    assert copy_vocabulary(ids, 0, exclude={5}).tolist() == [9, 2, 7]  # every id seen, commonest first
    a = (torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))
    b = (torch.full((1, 5), 7), torch.full((1, 5), 8))
    x, y = join_batches(a, b)
    assert x.tolist() == [[1, 1, 1, 0, 0]] * 2 + [[7] * 5]
    assert y.tolist() == [[1, 1, 1, IGNORE_INDEX, IGNORE_INDEX]] * 2 + [[8] * 5]


def test_sft_targets_are_assistant_tokens_only(llm_data):
    import json

    from minivox.chat_template import IGNORE_INDEX, ChatTemplate, train_chat_tokenizer
    from minivox.train.llm import collate, encode_dialogues, length_batches

    dialogues = [json.loads(line) for line in open(llm_data / "dialogues_train.jsonl")]
    tok = train_chat_tokenizer([m["content"] for d in dialogues for m in d["messages"] if m["content"]], 400)
    template = ChatTemplate(tok)
    ids, targets, dropped = encode_dialogues(template, dialogues, 10_000)
    assert dropped == 0 and len(ids) == len(dialogues)
    batches = length_batches([len(x) for x in ids], 2048)
    assert sorted(i for b in batches for i in b) == list(range(len(ids)))
    assert all(len(b) * max(len(ids[i]) for i in b) <= 2048 or len(b) == 1 for b in batches)
    x, y = collate(ids, targets, batches[0])
    for row, i in enumerate(batches[0]):
        trained = [t for t in y[row].tolist() if t != IGNORE_INDEX]
        assistant = [t for m in dialogues[i]["messages"] if m["role"] == "assistant"
                     for t in template.encode_message(m)[1:]]
        assert trained == assistant


def test_init_from_starts_from_the_checkpoint_weights_and_tokenizer(llm_data, tmp_path):
    """--init-from with no steps to run gives back the checkpoint itself; another [model] is refused by name."""
    from minivox.train.llm import main

    common = [f"data.sentences={llm_data / 'sentences.jsonl'}", f"data.dialogues_dir={llm_data}",
              "pretrain.batch_tokens=256", "sft.batch_tokens=1024", "eval_dialogues=1", "data.max_sentences=0"]
    config = ["--config", "configs/llm_tiny.toml"]
    assert main(config + ["--out", str(tmp_path / "base")] + common + ["pretrain.steps=2", "sft.steps=2"]) == 0
    base = GPT.from_checkpoint(tmp_path / "base" / "llm.pt")
    assert main(config + ["--out", str(tmp_path / "tuned"), "--init-from", str(tmp_path / "base" / "llm.pt")]
                + common + ["pretrain.steps=0", "sft.steps=0"]) == 0
    tuned = GPT.from_checkpoint(tmp_path / "tuned" / "llm.pt")
    assert tuned.tokenizer == base.tokenizer and tuned.meta["init_from"] == str(tmp_path / "base" / "llm.pt")
    for (name, a), b in zip(base.state_dict().items(), tuned.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="n_layer"):
        main(config + ["--out", str(tmp_path / "bad"), "--init-from", str(tmp_path / "base" / "llm.pt")]
             + common + ["model.n_layer=3"])


def test_token_noise_replaces_only_user_text_tokens(llm_data):
    """user_token_positions marks exactly the user messages' text; add_token_noise changes about p
    of those positions and nothing else, the same way for the same generator seed."""
    import json

    from minivox.chat_template import ChatTemplate, train_chat_tokenizer
    from minivox.train.llm import add_token_noise, collate, encode_dialogues, user_token_positions, value_token_ids

    dialogues = [json.loads(line) for line in open(llm_data / "dialogues_train.jsonl")]
    tok = train_chat_tokenizer([m["content"] for d in dialogues for m in d["messages"] if m["content"]], 400)
    template = ChatTemplate(tok)
    ids, targets, _ = encode_dialogues(template, dialogues, 10_000)
    positions = [user_token_positions(template, x, value_token_ids(tok)) for x in ids]
    from minivox.train.llm import VALUE_WORDS

    for d, x, pos in zip(dialogues, ids, positions):
        user_ids = [i for m in d["messages"] if m["role"] == "user" for i in template.encode_message(m)[1:-1]]
        said = {i for m in d["messages"] if m["role"] == "assistant" for i in template.encode_message(m)}
        assert set(x[i] for i in pos) <= set(user_ids) - set(template.speaker_ids) - said
        for i in pos:
            word = tok.id_to_piece(x[i]).lstrip("\u2581").lower()
            assert word not in VALUE_WORDS and not any(c.isdigit() for c in word)
        if not any(m.get("tool_calls") for m in d["messages"]):  # small talk: every user word but those repeated
            assert len(pos) == sum(1 for i in user_ids if i not in said and i not in template.speaker_ids
                                   and tok.id_to_piece(i).lstrip("\u2581").lower() not in VALUE_WORDS
                                   and not any(c.isdigit() for c in tok.id_to_piece(i)))
    index = list(range(len(ids)))
    x, y = collate(ids, targets, index)
    vocab = torch.arange(10, 20)
    noisy = add_token_noise(x, [positions[i] for i in index], vocab, 0.3, torch.Generator().manual_seed(1))
    again = add_token_noise(x, [positions[i] for i in index], vocab, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)
    changed = (noisy != x).nonzero().tolist()
    allowed = {(row, i) for row, pos in enumerate(positions) for i in pos}
    assert changed and all((row, i) in allowed for row, i in changed)
    assert all(10 <= noisy[row, i] < 20 for row, i in changed)
    drawn = sum(1 for row, i in allowed if noisy[row, i] != x[row, i] or x[row, i] in range(10, 20))
    assert 0.2 < drawn / len(allowed) < 0.4


def test_training_script_reports_a_user_mistake_in_one_line(tmp_path, capsys):
    """A missing data file or a bad config value: `error: ...` on stderr and exit status 2, no traceback."""
    from minivox.train.common import run_main
    from minivox.train.llm import main

    missing = tmp_path / "no_such_sentences.jsonl"
    args = ["--config", "configs/llm_tiny.toml", "--out", str(tmp_path / "run")]
    assert run_main(lambda: main(args + [f"data.sentences={missing}"])) == 2
    assert run_main(lambda: main(args + ["sft.copy_share=1.0"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and str(missing) in err[0] and "sft.copy_share" in err[1]
    assert all(line.startswith("error: ") for line in err)
