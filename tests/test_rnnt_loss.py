"""RNN-T loss: reference, numba CPU kernel and numba CUDA kernel (under the simulator) held equal.

Oracles: published golden costs/gradients (warp-transducer / NeMo test suites), the
readable float64 reference (itself checked by gradcheck), an independent numpy
forward-backward for FastEmit, and properties (padding, thread count, upcasting).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minivox.kernels import RNNTLoss, rnnt_loss, rnnt_loss_reference

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden" / "rnnt_loss_vectors.json"
GOLDEN_CASES = json.loads(GOLDEN.read_text())["cases"]


def _golden_inputs(case, dtype):
    logits = torch.tensor(case["acts"], dtype=dtype)  # [B, T, U+1, V]
    targets = torch.tensor(case["labels"], dtype=torch.int32)  # [B, U]
    logit_lengths = torch.tensor(case["act_lens"], dtype=torch.int32)  # [B]
    target_lengths = torch.tensor(case["label_lens"], dtype=torch.int32)  # [B]
    return logits, targets, logit_lengths, target_lengths


def _costs_and_grads(loss_fn, logits, *args, weights=None, **kwargs):
    """Run loss_fn, backprop sum(weights * loss) (or the scalar loss) and return (loss, grad)."""
    x = logits.detach().clone().requires_grad_()
    loss = loss_fn(x, *args, **kwargs)
    (loss if weights is None else (loss * weights).sum()).sum().backward()
    return loss.detach(), x.grad


# ---------------------------------------------------------------------------
# Golden values
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", GOLDEN_CASES, ids=[c["name"] for c in GOLDEN_CASES])
@pytest.mark.parametrize("loss_fn, dtype", [
    (rnnt_loss, torch.float32), (rnnt_loss, torch.float64), (rnnt_loss_reference, torch.float64)],
    ids=["cpu-float32", "cpu-float64", "reference-float64"])
def test_golden(case, loss_fn, dtype):
    logits, targets, logit_lengths, target_lengths = _golden_inputs(case, dtype)
    costs, grads = _costs_and_grads(loss_fn, logits, targets, logit_lengths, target_lengths,
                                    blank=case["blank"], clamp=case.get("clamp", -1.0), reduction="none")
    tol = case["tol"]
    torch.testing.assert_close(costs.double(), torch.tensor(case["costs"], dtype=torch.float64), rtol=tol, atol=tol)
    torch.testing.assert_close(grads.double(), torch.tensor(case["grads"], dtype=torch.float64), rtol=tol, atol=tol)


def test_golden_clamp_case_is_really_clamped():
    """The clamp case must differ from the unclamped one, or it tests nothing."""
    (case,) = [c for c in GOLDEN_CASES if c.get("clamp", -1) > 0]
    (plain,) = [c for c in GOLDEN_CASES if c["acts"] == case["acts"] and c.get("clamp", -1) <= 0]
    clamped = np.array(case["grads"])
    assert np.abs(clamped).max() <= case["clamp"] + 1e-7
    assert np.abs(np.array(plain["grads"])).max() > case["clamp"]


# ---------------------------------------------------------------------------
# CPU kernel == float64 reference on random problems
# ---------------------------------------------------------------------------

@st.composite
def rnnt_problems(draw):
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, 5))
    U = draw(st.integers(0, 4))
    V = draw(st.integers(2, 7))
    blank = draw(st.sampled_from(["first", "last", "middle", "minus-one"]))
    blank_index = {"first": 0, "last": V - 1, "middle": V // 2, "minus-one": -1}[blank]
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    logit_lengths = rng.integers(1, T + 1, B)
    logit_lengths[rng.integers(B)] = T  # the tensor is exactly as long as the longest utterance
    target_lengths = rng.integers(0, U + 1, B)
    target_lengths[rng.integers(B)] = U
    non_blank = np.array([v for v in range(V) if v != blank_index % V])
    targets = rng.choice(non_blank, size=(B, max(U, 1)))
    scale = draw(st.sampled_from([1.0, 4.0]))
    logits = rng.standard_normal((B, T, U + 1, V)) * scale
    return dict(
        logits=torch.from_numpy(logits),
        targets=torch.from_numpy(targets),
        logit_lengths=torch.from_numpy(logit_lengths),
        target_lengths=torch.from_numpy(target_lengths),
        blank=blank_index,
        weights=torch.from_numpy(rng.uniform(0.5, 2.0, B)),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=rnnt_problems(),
       dtype=st.sampled_from([torch.float32, torch.float64]),
       reduction=st.sampled_from(["none", "sum", "mean"]),
       clamp=st.sampled_from([-1.0, 0.05, 0.3]),
       fastemit_lambda=st.sampled_from([0.0, 0.01, 0.5]),
       fused=st.booleans())
def test_cpu_kernel_matches_reference(problem, dtype, reduction, clamp, fastemit_lambda, fused):
    logits = problem["logits"]
    if not fused:
        logits = torch.log_softmax(logits, dim=-1)
    logits = logits.to(dtype)
    args = (problem["targets"], problem["logit_lengths"], problem["target_lengths"])
    kwargs = dict(blank=problem["blank"], clamp=clamp, reduction=reduction,
                  fused_log_softmax=fused, fastemit_lambda=fastemit_lambda)
    # Weighted sum for "none" (a non-unit grad_output per utterance); x 1.7 for the scalars.
    weights = problem["weights"] if reduction == "none" else torch.tensor(1.7, dtype=torch.float64)
    costs, grads = _costs_and_grads(rnnt_loss, logits, *args, weights=weights.to(dtype), **kwargs)
    ref_costs, ref_grads = _costs_and_grads(rnnt_loss_reference, logits.double(), *args, weights=weights, **kwargs)
    assert costs.dtype == grads.dtype == dtype
    atol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(costs.double(), ref_costs, rtol=1e-5, atol=atol)
    torch.testing.assert_close(grads.double(), ref_grads, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("fused", [True, False])
def test_reference_gradcheck(fused):
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    if not fused:
        logits = torch.log_softmax(logits, dim=-1)
    args = (torch.tensor([[1, 3], [2, 0]]), torch.tensor([4, 2]), torch.tensor([2, 1]))

    def loss(x):
        return rnnt_loss_reference(x, *args, blank=4, reduction="none", fused_log_softmax=fused)

    assert torch.autograd.gradcheck(loss, (logits.requires_grad_(),))


def test_cpu_kernel_gradcheck():
    """The kernel's hand-written gradient against finite differences of its own forward."""
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    args = (torch.tensor([[3, 1], [2, 2]]), torch.tensor([3, 2]), torch.tensor([2, 1]))
    assert torch.autograd.gradcheck(lambda x: rnnt_loss(x, *args, blank=0, reduction="none"), (logits,))


# ---------------------------------------------------------------------------
# FastEmit against an independent occupancy computation
# ---------------------------------------------------------------------------

def _fastemit_by_occupancy(logits, targets, n_frames, n_labels, blank, lam):
    """One utterance in numpy float64: plain loops for alpha/beta, then the FastEmit gradient.

    With gamma_blank(t,u) and gamma_label(t,u) the posterior probabilities of the blank and
    label transitions leaving node (t,u), FastEmit (NeMo's form) gives
        d/d logits[t,u,v] = p_v * (gamma_blank + (1+lam) gamma_label)
                            - [v = blank] gamma_blank - [v = y_{u+1}] (1+lam) gamma_label
    and reports cost (1+lam) * (-log P(y|x)).
    """
    x = logits[:n_frames, :n_labels + 1]  # [T, U+1, V]
    logp = x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)
    T, U1 = n_frames, n_labels + 1
    lp_blank = logp[:, :, blank]  # [T, U+1]
    lp_label = np.full((T, U1), -np.inf)
    for u in range(n_labels):
        lp_label[:, u] = logp[:, u, targets[u]]
    alpha = np.full((T, U1), -np.inf)
    alpha[0, 0] = 0.0
    for t in range(T):
        for u in range(U1):
            if t > 0:
                alpha[t, u] = np.logaddexp(alpha[t, u], alpha[t - 1, u] + lp_blank[t - 1, u])
            if u > 0:
                alpha[t, u] = np.logaddexp(alpha[t, u], alpha[t, u - 1] + lp_label[t, u - 1])
    beta = np.full((T + 1, U1 + 1), -np.inf)  # padded by one frame and one label
    for t in reversed(range(T)):
        for u in reversed(range(U1)):
            after_blank = 0.0 if (t == T - 1 and u == U1 - 1) else beta[t + 1, u]
            beta[t, u] = np.logaddexp(after_blank + lp_blank[t, u], beta[t, u + 1] + lp_label[t, u])
    ll = beta[0, 0]
    grads = np.zeros_like(logits)
    for t in range(T):
        for u in range(U1):
            after_blank = 0.0 if (t == T - 1 and u == U1 - 1) else beta[t + 1, u]
            gamma_blank = np.exp(alpha[t, u] + lp_blank[t, u] + after_blank - ll)
            gamma_label = np.exp(alpha[t, u] + lp_label[t, u] + beta[t, u + 1] - ll)
            g = np.exp(logp[t, u]) * (gamma_blank + (1 + lam) * gamma_label)
            g[blank] -= gamma_blank
            if u < n_labels:
                g[targets[u]] -= (1 + lam) * gamma_label
            grads[t, u] = g
    return -(1 + lam) * ll, grads


@pytest.mark.parametrize("lam", [0.0, 0.01, 0.5])
def test_fastemit_matches_occupancy_computation(lam):
    rng = np.random.default_rng(7)
    B, T, U, V, blank = 3, 6, 3, 5, 2
    logits = rng.standard_normal((B, T, U + 1, V)) * 2
    targets = rng.choice([0, 1, 3, 4], size=(B, U))
    logit_lengths, target_lengths = np.array([6, 4, 5]), np.array([3, 0, 2])
    args = (torch.from_numpy(targets), torch.from_numpy(logit_lengths), torch.from_numpy(target_lengths))
    expected = [_fastemit_by_occupancy(logits[b], targets[b], logit_lengths[b], target_lengths[b], blank, lam)
                for b in range(B)]
    expected_costs = torch.tensor([c for c, _ in expected])
    expected_grads = torch.from_numpy(np.stack([g for _, g in expected]))
    for loss_fn in (rnnt_loss, rnnt_loss_reference):
        costs, grads = _costs_and_grads(loss_fn, torch.from_numpy(logits), *args, blank=blank,
                                        reduction="none", fastemit_lambda=lam)
        torch.testing.assert_close(costs, expected_costs, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(grads, expected_grads, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------
# Properties: padding, dtypes, threads, NaN isolation, module, autograd plumbing
# ---------------------------------------------------------------------------

def _ragged_problem(seed=0, B=4, T=7, U=4, V=9, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, U + 1, V, generator=g, dtype=dtype) * 2
    targets = torch.randint(0, V - 1, (B, U), generator=g)  # blank = V - 1 never a target
    logit_lengths = torch.tensor([T, 3, 5, 1])[:B]
    target_lengths = torch.tensor([2, U, 0, 1])[:B]
    return logits, targets, logit_lengths, target_lengths


def test_padding_is_ignored_and_gets_zero_gradient():
    logits, targets, logit_lengths, target_lengths = _ragged_problem()
    costs, grads = _costs_and_grads(rnnt_loss, logits, targets, logit_lengths, target_lengths, reduction="none")
    noisy = logits.clone()
    inside = torch.zeros(logits.shape[:3], dtype=torch.bool)  # [B, T, U+1]
    for b in range(logits.shape[0]):
        inside[b, :logit_lengths[b], :target_lengths[b] + 1] = True
    noisy[~inside] = float("nan")  # the kernel must never read the padding
    padded_targets = targets.clone()
    padded_targets[1:, 2:] = -5  # nor padded targets (outside target_lengths)
    padded_targets[1, :] = targets[1]  # utterance 1 uses all U targets
    costs2, grads2 = _costs_and_grads(rnnt_loss, noisy, padded_targets, logit_lengths, target_lengths,
                                      reduction="none")
    torch.testing.assert_close(costs2, costs, rtol=0, atol=0)
    torch.testing.assert_close(grads2, grads, rtol=0, atol=0)
    assert torch.all(grads[~inside] == 0)
    assert torch.all(grads[inside].abs().sum(-1) > 0)


def test_nan_and_inf_stay_in_their_utterance():
    logits, targets, logit_lengths, target_lengths = _ragged_problem()
    costs, grads = _costs_and_grads(rnnt_loss, logits, targets, logit_lengths, target_lengths, reduction="none")
    bad = logits.clone()
    bad[1, 0, 0, 3] = float("nan")
    bad[2, 1, 0, 0] = float("inf")
    bad[3, 0, 0, 2] = float("-inf")  # a class with probability 0: still a finite loss
    costs2, grads2 = _costs_and_grads(rnnt_loss, bad, targets, logit_lengths, target_lengths, reduction="none")
    assert torch.isnan(costs2[1]) and not torch.isfinite(costs2[2])
    assert torch.isfinite(costs2[3]) and torch.isfinite(grads2[3]).all()
    assert grads2[3, 0, 0, 2] == 0
    torch.testing.assert_close(costs2[0], costs[0], rtol=0, atol=0)
    torch.testing.assert_close(grads2[0], grads[0], rtol=0, atol=0)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_inputs_are_upcast_once(half):
    logits, targets, logit_lengths, target_lengths = _ragged_problem()
    logits = logits.to(half)
    costs, grads = _costs_and_grads(rnnt_loss, logits, targets, logit_lengths, target_lengths, reduction="none")
    costs32, grads32 = _costs_and_grads(rnnt_loss, logits.float(), targets, logit_lengths, target_lengths,
                                        reduction="none")
    assert costs.dtype == grads.dtype == half
    torch.testing.assert_close(costs, costs32.to(half), rtol=0, atol=0)
    torch.testing.assert_close(grads, grads32.to(half), rtol=0, atol=0)


def test_result_does_not_depend_on_thread_count_or_layout():
    from minivox.kernels.rnnt_loss import SMALL_PROBLEM

    logits, targets, logit_lengths, target_lengths = _ragged_problem(B=4, T=40, U=8, V=200)
    assert logits.numel() >= SMALL_PROBLEM  # big enough to run on all of numba's threads
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        costs, grads = _costs_and_grads(rnnt_loss, logits, targets, logit_lengths, target_lengths)
        torch.set_num_threads(1)
        costs1, grads1 = _costs_and_grads(rnnt_loss, logits, targets, logit_lengths, target_lengths)
    finally:
        torch.set_num_threads(threads)
    transposed = logits.transpose(0, 1).contiguous().transpose(0, 1)  # same values, not contiguous
    assert not transposed.is_contiguous()
    costs2, grads2 = _costs_and_grads(rnnt_loss, transposed, targets.long(), logit_lengths.int(),
                                      target_lengths.long())
    for c, g in ((costs1, grads1), (costs2, grads2)):
        torch.testing.assert_close(c, costs, rtol=0, atol=0)
        torch.testing.assert_close(g, grads, rtol=0, atol=0)


def test_module_matches_function_and_reductions_agree():
    logits, targets, logit_lengths, target_lengths = _ragged_problem()
    args = (targets, logit_lengths, target_lengths)
    none = rnnt_loss(logits, *args, reduction="none")
    torch.testing.assert_close(rnnt_loss(logits, *args, reduction="sum"), none.sum())
    torch.testing.assert_close(rnnt_loss(logits, *args), none.mean())  # "mean" divides by B
    module = RNNTLoss(blank=-1, clamp=0.1, reduction="sum", fastemit_lambda=0.01)
    torch.testing.assert_close(module(logits, *args),
                               rnnt_loss(logits, *args, clamp=0.1, reduction="sum", fastemit_lambda=0.01))
    assert "fastemit_lambda=0.01" in repr(module)


def test_forward_without_grad_and_retained_graph():
    logits, targets, logit_lengths, target_lengths = _ragged_problem()
    args = (targets, logit_lengths, target_lengths)
    with torch.no_grad():
        plain = rnnt_loss(logits.requires_grad_(), *args)
    x = logits.detach().requires_grad_()
    loss = rnnt_loss(x, *args)
    torch.testing.assert_close(loss.detach(), plain, rtol=0, atol=0)
    (first,) = torch.autograd.grad(loss, x, retain_graph=True)
    (second,) = torch.autograd.grad(loss * 3, x)  # recomputed: the first backward took the buffer
    torch.testing.assert_close(second, 3 * first, rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

def _valid_inputs():
    logits, targets, logit_lengths, target_lengths = _ragged_problem()
    return dict(logits=logits, targets=targets, logit_lengths=logit_lengths, target_lengths=target_lengths)


@pytest.mark.parametrize("change, message", [
    (dict(logits=torch.zeros(4, 7, 5)), "4-D"),
    (dict(logits=torch.zeros(4, 7, 5, 9, dtype=torch.int64)), "floating point"),
    (dict(logit_lengths=torch.tensor([6, 3, 5, 1])), "max\\(logit_lengths\\)"),
    (dict(logit_lengths=torch.tensor([7, 3, 0, 1])), ">= 1"),
    (dict(target_lengths=torch.tensor([2, 3, 0, 1])), "max\\(target_lengths\\)"),
    (dict(target_lengths=torch.tensor([2, 4, -1, 1])), ">= 0"),
    (dict(targets=torch.zeros(4, 3, dtype=torch.int64)), "only 3 columns"),
    (dict(targets=torch.full((4, 4), 8)), "!= blank"),
    (dict(targets=torch.full((4, 4), 9)), "in \\[0, 9\\)"),
    (dict(targets=torch.full((4, 4), -1)), "targets\\[0, 0\\] = -1"),
    (dict(targets=torch.zeros(4, 4)), "integer"),
    (dict(logit_lengths=torch.tensor([7, 3, 5])), "logit_lengths must have shape"),
    (dict(blank=9), "blank must be in"),
    (dict(reduction="avg"), "reduction"),
    (dict(fastemit_lambda=-0.1), "fastemit_lambda"),
    (dict(logits=torch.zeros(4, 7, 5, 9, device="meta")), "device|is on"),
])
def test_validation_errors(change, message):
    inputs = _valid_inputs()
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        rnnt_loss(**inputs)


def test_only_targets_inside_lengths_are_checked():
    inputs = _valid_inputs()
    inputs["targets"][2, :] = 8  # utterance 2 has 0 targets: its row is padding, even if it equals blank
    rnnt_loss(**inputs)


# ---------------------------------------------------------------------------
# Import hygiene and the CUDA kernel under numba's simulator (separate processes)
# ---------------------------------------------------------------------------

def test_import_does_not_load_numba():
    code = "import sys, minivox.kernels as k; k.rnnt_loss; assert 'numba' not in sys.modules, 'numba imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_package_attribute_is_the_function_not_its_module():
    import minivox.kernels
    import minivox.kernels.rnnt_loss_cpu  # noqa: F401 - importing submodules must not rebind the name

    assert callable(minivox.kernels.rnnt_loss) and minivox.kernels.rnnt_loss is rnnt_loss


def test_numba_machine_code_is_cached_across_processes():
    """A fresh process loads the CPU kernels from numba's on-disk cache instead of compiling."""
    logits, targets, logit_lengths, target_lengths = _ragged_problem()
    _costs_and_grads(rnnt_loss, logits, targets, logit_lengths, target_lengths)  # compiles or loads here
    code = textwrap.dedent("""
        import json, torch
        from minivox.kernels import rnnt_loss, rnnt_loss_cpu
        x = torch.randn(2, 3, 2, 4, requires_grad=True)
        rnnt_loss(x, torch.tensor([[1], [2]]), torch.tensor([3, 2]), torch.tensor([1, 0])).backward()
        kernels = ("_node_log_probs", "_alphas_betas", "_gradients")
        stats = {k: getattr(rnnt_loss_cpu, k).stats for k in kernels}
        print(json.dumps({k: [sum(s.cache_hits.values()), sum(s.cache_misses.values())] for k, s in stats.items()}))
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True, text=True)
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(hits >= 1 and misses == 0 for hits, misses in stats.values()), stats


_CUDASIM_CHILD = textwrap.dedent("""
    import sys, numpy as np
    from minivox.kernels import rnnt_loss_cuda
    inputs = np.load(sys.argv[1], allow_pickle=True)["cases"]
    out = {}
    for i, case in enumerate(inputs):
        B, T, U1, V = case["logits"].shape
        grads = np.full_like(case["logits"], np.nan)
        work = np.full((6, B, T, U1), np.nan)
        per_utterance = np.full((2, B), np.nan)
        rnnt_loss_cuda.cost_and_grad(case["logits"], case["targets"], case["logit_lengths"],
                                     case["target_lengths"], case["blank"], case["clamp"],
                                     case["fastemit_lambda"], case["fused"], case["grad_scale"],
                                     grads, work, per_utterance)
        out[f"costs{i}"] = per_utterance[rnnt_loss_cuda.COST]
        out[f"grads{i}"] = grads
    np.savez(sys.argv[2], **out)
""")


def test_cuda_kernel_under_simulator_matches_golden_and_cpu(tmp_path):
    from minivox.kernels import rnnt_loss_cpu

    cases = []
    for case in GOLDEN_CASES:
        logits, targets, logit_lengths, target_lengths = (x.numpy() for x in _golden_inputs(case, torch.float32))
        cases.append(dict(logits=logits, targets=targets, logit_lengths=logit_lengths,
                          target_lengths=target_lengths, blank=case["blank"], clamp=case.get("clamp", -1.0),
                          fastemit_lambda=0.0, fused=True, grad_scale=1.0,
                          expect_costs=np.array(case["costs"]), expect_grads=np.array(case["grads"]), tol=1e-5))
    rng = np.random.default_rng(3)
    for fused, clamp, lam, dtype in ((True, 0.05, 0.3, np.float64), (False, -1.0, 0.5, np.float32)):
        logits = rng.standard_normal((2, 3, 3, 4)).astype(dtype)  # ragged: T = (3, 2), U = (2, 0)
        if not fused:
            logits = (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(dtype)
        targets = rng.integers(1, 4, (2, 2)).astype(np.int32)
        logit_lengths, target_lengths = np.array([3, 2], np.int32), np.array([2, 0], np.int32)
        grads = np.empty_like(logits)
        costs = rnnt_loss_cpu.cost_and_grad(logits, targets, logit_lengths, target_lengths, 0, clamp, lam,
                                            fused, 0.5, grads)
        cases.append(dict(logits=logits, targets=targets, logit_lengths=logit_lengths,
                          target_lengths=target_lengths, blank=0, clamp=clamp, fastemit_lambda=lam,
                          fused=fused, grad_scale=0.5, expect_costs=costs, expect_grads=grads,
                          tol=1e-6 if dtype == np.float32 else 1e-12))
    np.savez(tmp_path / "in.npz", cases=np.array(cases, dtype=object))
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    subprocess.run([sys.executable, "-c", _CUDASIM_CHILD, tmp_path / "in.npz", tmp_path / "out.npz"],
                   check=True, cwd=REPO, env=env, timeout=300)
    out = np.load(tmp_path / "out.npz")
    for i, case in enumerate(cases):
        np.testing.assert_allclose(out[f"costs{i}"], case["expect_costs"], rtol=case["tol"], atol=case["tol"])
        np.testing.assert_allclose(out[f"grads{i}"], case["expect_grads"], rtol=case["tol"], atol=case["tol"])
