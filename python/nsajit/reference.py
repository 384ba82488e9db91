"""NSA in plain PyTorch, straight from /work/shared/NSA.md (repository: NSA.md's contract): the test oracle and the
ops' CPU kernel. Dense masks, O(T^2) memory: small shapes only. Differentiable (the selection is integer-valued and
held fixed, as the backward holds it), so torch.autograd gives the reference gradients. Computes in the dtype it is
given (the tests use float64).

Layouts are nsajit's: q [B, T, HQ, dk], k [B, T, H, dk], v [B, T, H, dv], gates [B, T, HQ], k_cmp [B, Nc, H, dk];
varlen: B = 1 and cu_seqlens [N + 1] (a CPU int tensor or a list), every sequence on its own, and given k_cmp/v_cmp
hold each sequence's compressed blocks one after another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._bounds import num_cmp_blocks


@dataclass
class Result:
    o: torch.Tensor  # [B, T, HQ, dv]
    o_cmp: torch.Tensor | None
    o_slc: torch.Tensor | None
    o_win: torch.Tensor | None
    lse_cmp: torch.Tensor | None  # [B, T, HQ], natural log, -inf for an empty key set
    lse_slc: torch.Tensor | None
    lse_win: torch.Tensor | None
    idx: torch.Tensor  # [B, T, H, n] int32, ascending, -1 padded
    cnt: torch.Tensor  # [B, T, H] int32
    k_cmp: torch.Tensor  # the compressed keys used (given or pooled)
    v_cmp: torch.Tensor


def mean_pool(x: torch.Tensor, l: int, d: int) -> torch.Tensor:
    """[T, H, D] -> [Nc, H, D]: block i is the mean of x[i d .. i d + l)."""
    nc = num_cmp_blocks(x.shape[0], l, d)
    if nc == 0:
        return x.new_zeros((0,) + tuple(x.shape[1:]))
    return x.unfold(0, l, d).mean(-1)  # unfold: [Nc, H, D, l]


def attention(q, k, v, mask, scale):
    """softmax(scale q k^T) v with GQA. q [T, HQ, D], k [S, H, D], v [S, H, Dv], mask [T, S] or [T, H, S] (True:
    visible). Returns o [T, HQ, Dv], lse [T, HQ] (-inf and o = 0 for an empty key set) and p [T, HQ, S]."""
    T, HQ, _ = q.shape
    S, H, dv = v.shape
    G = HQ // H
    if S == 0:
        return q.new_zeros(T, HQ, dv), q.new_full((T, HQ), -math.inf), q.new_zeros(T, HQ, 0)
    kx = k.repeat_interleave(G, dim=1)
    vx = v.repeat_interleave(G, dim=1)
    m = mask[:, None, :] if mask.dim() == 2 else mask.repeat_interleave(G, dim=1)  # [T, HQ or 1, S]
    m = m.expand(T, HQ, S)
    s = torch.einsum("thd,shd->ths", q, kx) * scale
    s = s.masked_fill(~m, -math.inf)
    has = m.any(-1)  # rows with at least one key
    # Rows without keys get finite scores, so that no NaN reaches the gradient; their results are replaced below.
    s_safe = torch.where(has[..., None], s, torch.zeros_like(s))
    lse = torch.logsumexp(s_safe, -1)
    p = torch.where(m, torch.exp(s_safe - lse[..., None]), torch.zeros_like(s))
    o = torch.einsum("ths,shd->thd", p, vx)
    lse = torch.where(has, lse, torch.full_like(lse, -math.inf))
    return o, lse, p


def overlap_weights(nc: int, nsel: int, l: int, d: int, lsel: int, dtype) -> torch.Tensor:
    """W[i, j] = |[i d, i d + l) and [j l', (j + 1) l') overlap| / d (NSA.md: Eq. 9's weights for l=32, d=16, l'=64)."""
    i = torch.arange(nc)[:, None]
    j = torch.arange(nsel)[None, :]
    lo = torch.maximum(i * d, j * lsel)
    hi = torch.minimum(i * d + l, (j + 1) * lsel)
    return (hi - lo).clamp(min=0).to(dtype) / d


def block_scores(p_cmp: torch.Tensor, T: int, H: int, l: int, d: int, lsel: int) -> torch.Tensor:
    """NSA.md's selection scores [T, H, ceil(T / l')] from branch 1's probabilities p_cmp [T, HQ, Nc]."""
    HQ, nc = p_cmp.shape[1], p_cmp.shape[2]
    nsel = (T + lsel - 1) // lsel
    w = overlap_weights(nc, nsel, l, d, lsel, p_cmp.dtype)
    return (p_cmp.detach() @ w).reshape(T, H, HQ // H, nsel).sum(2)


def select(p_cmp: torch.Tensor, T: int, H: int, l: int, d: int, lsel: int, n: int):
    """NSA.md's selection from branch 1's probabilities p_cmp [T, HQ, Nc]: idx [T, H, n] int32 (ascending, -1
    padded) and cnt [T, H] int32. Forced blocks: 0 and the two local ones; then the highest group scores, equal
    scores to the lower block index."""
    nsel = (T + lsel - 1) // lsel
    score = block_scores(p_cmp, T, H, l, d, lsel)
    t = torch.arange(T)
    cur = t // lsel  # the query's own block
    j = torch.arange(nsel)
    candidate = j[None, :] <= cur[:, None]
    forced = (j[None, :] == 0) | (j[None, :] == cur[:, None]) | (j[None, :] == cur[:, None] - 1)
    key = score.clone()
    key = torch.where(forced[:, None, :].expand_as(key), torch.full_like(key, math.inf), key)
    key = torch.where(candidate[:, None, :].expand_as(key), key, torch.full_like(key, -math.inf))
    order = torch.sort(-key, dim=-1, stable=True).indices  # ties keep ascending block order
    cnt = torch.clamp(cur + 1, max=n)  # [T]
    idx = torch.full((T, H, n), -1, dtype=torch.int32)
    for tt in range(T):
        c = int(cnt[tt])
        chosen = torch.sort(order[tt, :, :c], dim=-1).values
        idx[tt, :, :c] = chosen.to(torch.int32)
    return idx, cnt[:, None].expand(T, H).to(torch.int32).contiguous()


def _sequence(q, k, v, gates, kc, vc, idx, cnt, l, d, lsel, n, w, scale):
    """One sequence: q [T, HQ, dk], k/v [T, H, *], gates (g_cmp, g_slc, g_win) each [T, HQ] or None, kc/vc [Nc, H, *]
    or None (mean pool), idx/cnt [T, H, n] / [T, H] or None (selected here)."""
    T, HQ, _ = q.shape
    H = k.shape[1]
    if kc is None:
        kc, vc = mean_pool(k, l, d), mean_pool(v, l, d)
    nc = kc.shape[0]
    t = torch.arange(T)
    out = {}
    vis_c = torch.arange(nc)[None, :] * d + l - 1 <= t[:, None]  # [T, Nc]
    o_cmp, lse_cmp, p_cmp = attention(q, kc, vc, vis_c, scale)
    out["cmp"] = (o_cmp, lse_cmp)
    if idx is None:
        idx, cnt = select(p_cmp, T, H, l, d, lsel, n)
    if gates[1] is not None:
        nsel = (T + lsel - 1) // lsel
        chosen = torch.zeros(T, H, nsel + 1, dtype=torch.bool)  # the last column takes the -1 padding
        valid = torch.arange(idx.shape[-1])[None, None, :] < cnt[..., None].long()
        cols = torch.where(valid & (idx >= 0), idx.long(), torch.full_like(idx.long(), nsel))
        chosen.scatter_(2, cols.clamp(max=nsel), True)
        block_of_key = torch.arange(T) // lsel
        vis_s = chosen[:, :, block_of_key] & (torch.arange(T)[None, None, :] <= t[:, None, None])  # [T, H, T]
        out["slc"] = attention(q, k, v, vis_s, scale)[:2]
    if gates[2] is not None:
        s = torch.arange(T)[None, :]
        vis_w = (s <= t[:, None]) & (s > t[:, None] - w)
        out["win"] = attention(q, k, v, vis_w, scale)[:2]
    o = q.new_zeros(T, HQ, v.shape[-1])
    for name, g in zip(("cmp", "slc", "win"), gates):
        if g is not None:
            o = o + g[..., None] * out[name][0]
    return o, out, idx, cnt, kc, vc


def forward(q, k, v, g_cmp=None, g_slc=None, g_win=None, *, l, d, lsel, n, w, scale=None, k_cmp=None, v_cmp=None,
            idx=None, cnt=None, cu_seqlens=None) -> Result:
    """The NSA forward of NSA.md. `idx`/`cnt` (e.g. nsajit's own) hold the selection fixed; without them it is
    computed here. Branch outputs and lse are None for a branch whose gate is None."""
    B, T, HQ, dk = q.shape
    H = k.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(dk)
    gates = (g_cmp, g_slc, g_win)
    if cu_seqlens is None:
        spans = [(b, 0, T) for b in range(B)]
    else:
        cu = [int(x) for x in (cu_seqlens.tolist() if torch.is_tensor(cu_seqlens) else cu_seqlens)]
        spans = [(0, cu[i], cu[i + 1]) for i in range(len(cu) - 1)]
    os, parts, idxs, cnts, kcs, vcs = [], {"cmp": [], "slc": [], "win": []}, [], [], [], []
    cmp_row = 0
    for b, s0, s1 in spans:
        sl = slice(s0, s1)
        kc = vc = None
        if k_cmp is not None:
            if cu_seqlens is None:
                kc, vc = k_cmp[b], v_cmp[b]
            else:
                nc = num_cmp_blocks(s1 - s0, l, d)
                kc, vc = k_cmp[0, cmp_row:cmp_row + nc], v_cmp[0, cmp_row:cmp_row + nc]
                cmp_row += nc
        o, out, i, c, kc_used, vc_used = _sequence(
            q[b, sl], k[b, sl], v[b, sl], tuple(None if g is None else g[b, sl] for g in gates), kc, vc,
            None if idx is None else idx[b, sl], None if cnt is None else cnt[b, sl], l, d, lsel, n, w, scale)
        os.append(o)
        for name in parts:
            parts[name].append(out.get(name))
        idxs.append(i)
        cnts.append(c)
        kcs.append(kc_used)
        vcs.append(vc_used)

    def join(xs):
        if cu_seqlens is None:
            return torch.stack(xs)
        return torch.cat(xs)[None] if xs else None

    def branch(name):
        if gates[("cmp", "slc", "win").index(name)] is None:
            return None, None
        return join([x[0] for x in parts[name]]), join([x[1] for x in parts[name]])

    (o_cmp, lse_cmp), (o_slc, lse_slc), (o_win, lse_win) = branch("cmp"), branch("slc"), branch("win")
    return Result(join(os), o_cmp, o_slc, o_win, lse_cmp, lse_slc, lse_win, join(idxs), join(cnts), join(kcs),
                  join(vcs))


def backward(dout, q, k, v, g_cmp, g_slc, g_win, *, l, d, lsel, n, w, scale=None, k_cmp=None, v_cmp=None, idx,
             cnt, cu_seqlens=None):
    """Gradients of the NSA forward with the selection (idx, cnt) held fixed: a dict of dq, dk, dv, dg_cmp, dg_slc,
    dg_win, dk_cmp, dv_cmp (None where the input is None), in the inputs' dtypes."""
    names = ["q", "k", "v", "g_cmp", "g_slc", "g_win", "k_cmp", "v_cmp"]
    given = [q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp]
    with torch.enable_grad():
        leaves = [None if x is None else x.detach().requires_grad_(True) for x in given]
        r = forward(*leaves[:6], l=l, d=d, lsel=lsel, n=n, w=w, scale=scale, k_cmp=leaves[6], v_cmp=leaves[7],
                    idx=idx, cnt=cnt, cu_seqlens=cu_seqlens)
        inputs = [x for x in leaves if x is not None]
        grads = torch.autograd.grad(r.o, inputs, dout, allow_unused=True)
    out, it = {}, iter(grads)
    for name, x in zip(names, leaves):
        if x is None:
            out["d" + name] = None
            continue
        g = next(it)
        out["d" + name] = torch.zeros_like(x) if g is None else g
    return out


def selection_scores(q, k_cmp, *, l, d, lsel, scale=None):
    """The selection scores [T, H, ceil(T / l')] of one sequence (q [T, HQ, dk], k_cmp [Nc, H, dk]), for judging a
    selection that differs from the reference's at near-ties (NSA.md "How a result is judged correct")."""
    T, HQ, dk = q.shape
    H = k_cmp.shape[1]
    if scale is None:
        scale = 1.0 / math.sqrt(dk)
    vis = torch.arange(k_cmp.shape[0])[None, :] * d + l - 1 <= torch.arange(T)[:, None]
    p_cmp = attention(q, k_cmp, k_cmp[..., :1], vis, scale)[2]
    return block_scores(p_cmp, T, H, l, d, lsel)
