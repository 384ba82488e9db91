"""The float64 reference (nsajit/reference.py), which the GPU tests trust, against NSA.md spelled out with loops over
every query, head and key, on tiny shapes; its varlen against per-sequence calls; its gradients against finite
differences."""

import math

import pytest
import torch

from nsajit import reference


@pytest.fixture(autouse=True)
def _float64():
    """These tests compute in float64 (restored afterwards: other test files keep torch's default)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def brute_force(q, k, v, gates, *, l, d, lsel, n, w, scale):
    """NSA.md with loops: one batch entry, q [T, HQ, D], k/v [T, H, D], gates [T, HQ] each."""
    T, HQ, _ = q.shape
    H = k.shape[1]
    G = HQ // H
    nc = max(0, (T - l) // d + 1)
    kc = torch.stack([k[i * d:i * d + l].mean(0) for i in range(nc)]) if nc else k.new_zeros(0, H, k.shape[2])
    vc = torch.stack([v[i * d:i * d + l].mean(0) for i in range(nc)]) if nc else v.new_zeros(0, H, v.shape[2])

    def attend(t, h, keys, K, V):
        if not keys:
            return torch.zeros(V.shape[-1]), -math.inf, []
        s = torch.stack([scale * (q[t, h] @ K[j, h // G]) for j in keys])
        lse = torch.logsumexp(s, 0)
        p = torch.exp(s - lse)
        return sum(p[i] * V[j, h // G] for i, j in enumerate(keys)), float(lse), p.tolist()

    o = torch.zeros(T, HQ, v.shape[2])
    idx = torch.full((T, H, n), -1, dtype=torch.int32)
    cnt = torch.zeros(T, H, dtype=torch.int32)
    nsel = (T + lsel - 1) // lsel
    for t in range(T):
        visible = [i for i in range(nc) if i * d + l - 1 <= t]
        p_cmp = {}
        for h in range(HQ):
            oc, _, p = attend(t, h, visible, kc, vc)
            p_cmp[h] = dict(zip(visible, p))
            o[t, h] += gates[0][t, h] * oc
        cur = t // lsel
        for kv in range(H):
            score = []
            for j in range(nsel):
                s = 0.0
                for h in range(kv * G, kv * G + G):
                    for i, pi in p_cmp[h].items():
                        overlap = max(0, min(i * d + l, (j + 1) * lsel) - max(i * d, j * lsel))
                        s += overlap / d * pi
                score.append(s)
            forced = [j for j in (0, cur - 1, cur) if 0 <= j <= cur]
            rest = sorted((j for j in range(cur + 1) if j not in forced), key=lambda j: (-score[j], j))
            c = min(n, cur + 1)
            chosen = sorted(set(forced) | set(rest[: c - len(set(forced))]))
            idx[t, kv, :c] = torch.tensor(chosen, dtype=torch.int32)
            cnt[t, kv] = c
            for h in range(kv * G, kv * G + G):
                keys = [s for j in chosen for s in range(j * lsel, min((j + 1) * lsel, t + 1))]
                os_, _, _ = attend(t, h, keys, k, v)
                o[t, h] += gates[1][t, h] * os_
                ow, _, _ = attend(t, h, list(range(max(0, t - w + 1), t + 1)), k, v)
                o[t, h] += gates[2][t, h] * ow
    return o, idx, cnt


@pytest.mark.parametrize("shape", [
    dict(T=40, HQ=4, H=2, l=8, d=4, lsel=8, n=4, w=6),    # overlapping compression, GQA
    dict(T=33, HQ=3, H=3, l=8, d=8, lsel=8, n=3, w=0),    # l = d = l', G = 1, window off
    dict(T=5, HQ=2, H=1, l=8, d=4, lsel=8, n=4, w=3),     # T < l: no compressed block
])
def test_reference_is_nsa_md(shape):
    torch.manual_seed(0)
    T, HQ, H = shape["T"], shape["HQ"], shape["H"]
    q, k, v = torch.randn(1, T, HQ, 8), torch.randn(1, T, H, 8), torch.randn(1, T, H, 6)
    gates = [torch.rand(1, T, HQ) for _ in range(3)]
    kw = {x: shape[x] for x in ("l", "d", "lsel", "n", "w")}
    r = reference.forward(q, k, v, *gates, scale=0.3, **kw)
    o, idx, cnt = brute_force(q[0], k[0], v[0], [g[0] for g in gates], scale=0.3, **kw)
    assert torch.equal(r.idx[0], idx)
    assert torch.equal(r.cnt[0], cnt)
    torch.testing.assert_close(r.o[0], o, rtol=1e-10, atol=1e-10)


def test_varlen_is_each_sequence_alone():
    torch.manual_seed(1)
    lens = [37, 0, 70, 5]
    T = sum(lens)
    cu = [0]
    for n_ in lens:
        cu.append(cu[-1] + n_)
    q, k, v = torch.randn(1, T, 4, 8), torch.randn(1, T, 2, 8), torch.randn(1, T, 2, 8)
    g = [torch.rand(1, T, 4) for _ in range(3)]
    kw = dict(l=16, d=8, lsel=16, n=4, w=9)
    r = reference.forward(q, k, v, *g, cu_seqlens=cu, **kw)
    for s0, s1 in zip(cu[:-1], cu[1:]):
        if s1 == s0:
            continue
        one = reference.forward(q[:, s0:s1], k[:, s0:s1], v[:, s0:s1], *(x[:, s0:s1] for x in g), **kw)
        torch.testing.assert_close(r.o[:, s0:s1], one.o)
        assert torch.equal(r.idx[:, s0:s1], one.idx)
        torch.testing.assert_close(r.lse_cmp[:, s0:s1], one.lse_cmp)


def test_reference_gradients_against_finite_differences():
    torch.manual_seed(2)
    T, HQ, H = 24, 4, 2
    kw = dict(l=8, d=4, lsel=8, n=3, w=5, scale=0.4)
    q, k, v = torch.randn(1, T, HQ, 4), torch.randn(1, T, H, 4), torch.randn(1, T, H, 4)
    g = [torch.rand(1, T, HQ) for _ in range(3)]
    sel = reference.forward(q, k, v, *g, **kw)
    k_cmp, v_cmp = sel.k_cmp.clone(), sel.v_cmp.clone()

    def f(q, k, v, gc, gs, gw, kc, vc):
        return reference.forward(q, k, v, gc, gs, gw, k_cmp=kc, v_cmp=vc, idx=sel.idx, cnt=sel.cnt, **kw).o

    inputs = [x.clone().requires_grad_(True) for x in (q, k, v, *g, k_cmp, v_cmp)]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)
    # backward() gives the same gradients, and the mean pool's gradient reaches k and v without k_cmp.
    dout = torch.randn(1, T, HQ, 4)
    got = reference.backward(dout, q, k, v, *g, idx=sel.idx, cnt=sel.cnt, **kw)
    pooled = reference.forward(*inputs[:6], idx=sel.idx, cnt=sel.cnt, **kw).o  # mean pool inside
    want = torch.autograd.grad(pooled, inputs[:6], dout)
    for name, w_ in zip(("dq", "dk", "dv", "dg_cmp", "dg_slc", "dg_win"), want):
        torch.testing.assert_close(got[name], w_, msg=name)
    assert got["dk_cmp"] is None


def test_empty_key_sets_give_zero_output_and_minus_infinity():
    q, k, v = torch.randn(1, 6, 2, 4), torch.randn(1, 6, 1, 4), torch.randn(1, 6, 1, 4)
    g = [torch.rand(1, 6, 2) for _ in range(3)]
    r = reference.forward(q, k, v, *g, l=8, d=4, lsel=8, n=3, w=0)
    assert torch.all(r.lse_cmp == -math.inf) and torch.all(r.o_cmp == 0)
    assert torch.all(r.lse_win == -math.inf) and torch.all(r.o_win == 0)
    assert torch.all(r.cnt == 1) and torch.all(r.idx[..., 0] == 0) and torch.all(r.idx[..., 1:] == -1)


def test_the_selection_check_accepts_near_ties_only():
    """helpers.assert_selection_ok, which the GPU tests use: the reference's own selection passes, a swap of two
    blocks with equal scores passes, a swap against a clearly better block fails."""
    import helpers

    torch.manual_seed(5)
    T, HQ, H = 200, 4, 2
    kw = dict(l=16, d=8, lsel=16, n=4)
    q, k, v = torch.randn(1, T, HQ, 8), torch.randn(1, T, H, 8), torch.randn(1, T, H, 8)
    g = [torch.rand(1, T, HQ) for _ in range(3)]
    r = reference.forward(q, k, v, *g, w=4, **kw)
    scores = reference.selection_scores(q[0], r.k_cmp[0], **{x: kw[x] for x in ("l", "d", "lsel")})
    assert helpers.assert_selection_ok(r.idx[0], r.cnt[0], r.idx[0], r.cnt[0], scores) == 0
    # A row whose last free pick is swapped for the best unchosen block: a near-tie only if their scores tie.
    t, h = 150, 1
    c = int(r.cnt[0, t, h])
    chosen = r.idx[0, t, h, :c].tolist()
    forced = {0, t // 16, t // 16 - 1}
    free = [j for j in chosen if j not in forced]
    unchosen = [j for j in range(t // 16 + 1) if j not in chosen]
    worst_in = min(free, key=lambda j: scores[t, h, j])
    best_out = max(unchosen, key=lambda j: scores[t, h, j])
    swapped = r.idx.clone()
    swapped[0, t, h, :c] = torch.tensor(sorted(set(chosen) - {worst_in} | {best_out}), dtype=torch.int32)
    tied = scores.clone()
    tied[t, h, best_out] = tied[t, h, worst_in]
    assert helpers.assert_selection_ok(swapped[0], r.cnt[0], r.idx[0], r.cnt[0], tied) == 1
    wrong = r.idx.clone()
    weakest_out = min(unchosen, key=lambda j: scores[t, h, j])
    best_in = max(free, key=lambda j: scores[t, h, j])
    wrong[0, t, h, :c] = torch.tensor(sorted(set(chosen) - {best_in} | {weakest_out}), dtype=torch.int32)
    assert scores[t, h, best_in] - scores[t, h, weakest_out] > 1e-3 * scores[t, h].max()  # not a near-tie
    with pytest.raises(AssertionError, match="select other blocks"):
        helpers.assert_selection_ok(wrong[0], r.cnt[0], r.idx[0], r.cnt[0], scores)
    bad_cnt = r.cnt[0].clone()
    bad_cnt[3, 0] += 1
    with pytest.raises(AssertionError, match="cnt differs"):
        helpers.assert_selection_ok(r.idx[0], bad_cnt, r.idx[0], r.cnt[0], scores)


def test_the_tolerance_check_catches_one_wrong_row():
    """helpers.assert_close_nsa: bf16-sized noise passes, one zeroed row of a large tensor fails (the whole-tensor
    error alone would let it through)."""
    import helpers

    torch.manual_seed(6)
    want = torch.randn(4, 1024, 8, 64)
    noisy = want * (1 + 3e-3 * torch.randn_like(want))
    helpers.assert_close_nsa(noisy, want, torch.bfloat16, "noisy")
    planted = noisy.clone()
    planted[3, -1, 0] = 0
    assert helpers.rel_err(planted, want) < 1e-2  # the whole-tensor bound alone would pass it
    with pytest.raises(AssertionError, match=r"row \(3, 1023, 0\) has relative error 1"):
        helpers.assert_close_nsa(planted, want, torch.bfloat16, "planted")
    with pytest.raises(AssertionError, match="NaN or Inf"):
        helpers.assert_close_nsa(torch.full_like(want, float("nan")), want, torch.bfloat16, "nan")
