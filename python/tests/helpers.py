"""Checks shared by the GPU tests (and tested on the CPU in test_reference.py): NSA.md's tolerances and its rule for
a selection that differs from the reference's."""

import contextlib

import torch

from nsajit import reference

# NSA.md: ||out - ref|| / ||ref|| <= 1e-2 for bf16, <= 2e-3 for fp16; any NaN or Inf fails.
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


@contextlib.contextmanager
def unplanted():
    """Runs a reference computation that goes through nsajit's own CPU kernel (a float64 layer) without the planted
    fault (NSAJIT_TEST_PLANT), which is meant for the result under test only: planted on both sides it would cancel."""
    from nsajit import ops
    hook, ops._test_hook = ops._test_hook, None
    try:
        yield
    finally:
        ops._test_hook = hook


def assert_close_nsa(got: torch.Tensor, want: torch.Tensor, dtype, name: str, factor: float = 1.0,
                     gradient: bool = False):
    """NSA.md's whole-tensor bound, no NaN/Inf, and each row's error (rows: the last dim) within 3x the bound, as the
    C++ GPU tests (tests/gpu/check.h) bound it, so that one wrong row cannot hide in a large tensor. An output row's
    error is relative to its own norm (or to 5% of the median row norm for a row that is nearly zero); a gradient
    row's (gradient=True) to the largest row norm of the tensor, since a gradient row may sum a handful of
    contributions that nearly cancel (a missing or wrong row still gives an error of order 1)."""
    got_c, want_c = got.detach().double().cpu(), want.detach().double().cpu()
    assert got_c.shape == want_c.shape, f"{name}: shape {tuple(got_c.shape)} != {tuple(want_c.shape)}"
    assert torch.isfinite(got_c).all(), f"{name}: NaN or Inf in nsajit's result"
    bound = TOLERANCE[dtype] * factor
    err = rel_err(got_c, want_c)
    assert err <= bound, f"{name}: relative error {err:.3g} > {bound:.3g}"
    if want_c.numel() == 0:
        return
    rows_got, rows_want = got_c.reshape(-1, want_c.shape[-1]), want_c.reshape(-1, want_c.shape[-1])
    norms = rows_want.norm(dim=-1)
    if gradient:
        floor = norms.max().clamp_min(1e-30)
    else:
        floor = 0.05 * norms.median().clamp_min(1e-30)
    row_err = (rows_got - rows_want).norm(dim=-1) / torch.maximum(norms, floor)
    worst = int(row_err.argmax())
    index, rest = [], worst
    for size in reversed(want_c.shape[:-1]):
        index.insert(0, rest % size)
        rest //= size
    assert row_err[worst] <= 3 * bound, (f"{name}: row {tuple(index)} has relative error "
                                         f"{float(row_err[worst]):.3g} > {3 * bound:.3g}")


def assert_grad_close(got: torch.Tensor, want: torch.Tensor, dtype, name: str, factor: float = 1.0):
    assert_close_nsa(got, want, dtype, name, factor, gradient=True)


def assert_lse_close(got: torch.Tensor, want: torch.Tensor, name: str, tol: float = 2e-2):
    """lse: -inf exactly where the reference's is (an empty key set), |difference| <= tol elsewhere."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    assert torch.equal(torch.isneginf(got), torch.isneginf(want)), f"{name}: -inf (empty key sets) differ"
    finite = torch.isfinite(want)
    assert torch.isfinite(got[finite]).all(), f"{name}: NaN or Inf"
    diff = (got[finite] - want[finite]).abs().max().item() if finite.any() else 0.0
    assert diff <= tol, f"{name}: max |lse - ref| = {diff:.3g} > {tol}"


def assert_selection_ok(idx, cnt, ref_idx, ref_cnt, scores, rel: float = 1e-3):
    """nsajit's selection (idx [T, H, n], cnt [T, H], one sequence) against the reference's: the counts equal, the
    padding -1, and every chosen set equal to the reference's except where the blocks swapped in and out have
    reference scores within `rel` of the row's largest score (a near-tie, NSA.md)."""
    idx, cnt, ref_idx, ref_cnt = (x.cpu().long() for x in (idx, cnt, ref_idx, ref_cnt))
    assert torch.equal(cnt, ref_cnt), "cnt differs from the reference's"
    T, H, n = idx.shape
    pos = torch.arange(n)
    assert torch.all(torch.where(pos < cnt[..., None], idx >= 0, idx == -1)), "idx padding is not -1 past cnt"
    same = torch.all(idx == ref_idx, dim=-1)
    bad = []
    for t, h in (~same).nonzero().tolist():
        c = int(cnt[t, h])
        got, want = set(idx[t, h, :c].tolist()), set(ref_idx[t, h, :c].tolist())
        if len(got) != c or sorted(got) != idx[t, h, :c].tolist():
            bad.append((t, h, "not ascending or repeated"))
            continue
        s = scores[t, h]
        gap = max(s[j] for j in want - got) - min(s[j] for j in got - want)
        if gap > rel * s.max():
            bad.append((t, h, f"score gap {float(gap):.3g} of max {float(s.max()):.3g}"))
    assert not bad, f"{len(bad)} rows select other blocks than the reference beyond near-ties, e.g. {bad[:3]}"
    return int((~same).sum())


def reference_forward(q, k, v, gates, outs, *, l, d, lsel, n, w, scale=None, k_cmp=None, v_cmp=None,
                      cu_seqlens=None):
    """The float64 reference on the CPU, with nsajit's own selection (outs[7], outs[8] from nsajit::fwd)."""
    f = lambda x: None if x is None else x.detach().double().cpu()  # noqa: E731
    idx, cnt = (outs[7].cpu(), outs[8].cpu()) if gates[1] is not None else (None, None)
    cu = None if cu_seqlens is None else cu_seqlens.cpu().tolist()
    return reference.forward(f(q), f(k), f(v), *(f(g) for g in gates), l=l, d=d, lsel=lsel, n=n, w=w, scale=scale,
                             k_cmp=f(k_cmp), v_cmp=f(v_cmp), idx=idx, cnt=cnt, cu_seqlens=cu)


def reference_backward(dout, q, k, v, gates, outs, *, l, d, lsel, n, w, scale=None, k_cmp=None, v_cmp=None,
                       cu_seqlens=None):
    f = lambda x: None if x is None else x.detach().double().cpu()  # noqa: E731
    idx, cnt = (outs[7].cpu(), outs[8].cpu()) if gates[1] is not None else (None, None)
    cu = None if cu_seqlens is None else cu_seqlens.cpu().tolist()
    return reference.backward(f(dout), f(q), f(k), f(v), *(f(g) for g in gates), l=l, d=d, lsel=lsel, n=n, w=w,
                              scale=scale, k_cmp=f(k_cmp), v_cmp=f(v_cmp), idx=idx, cnt=cnt, cu_seqlens=cu)
