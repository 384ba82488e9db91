"""nsajit.nsa: the NSA of /work/shared/NSA.md (three gated branches) as one differentiable call.

This file is what torch.compile traces: plain shape arithmetic and torch operators, no ctypes (that lives in the
operators' CUDA kernels, ops.py).
"""

from __future__ import annotations

import torch

from . import ops  # noqa: F401  (registers torch.ops.nsajit)


def nsa(q, k, v, g_cmp=None, g_slc=None, g_win=None, *, l: int, d: int, lsel: int, n: int, w: int,
        scale: float | None = None, cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None,
        k_cmp: torch.Tensor | None = None, v_cmp: torch.Tensor | None = None) -> torch.Tensor:
    """Native Sparse Attention: o = g_cmp * Attn(compressed) + g_slc * Attn(selected) + g_win * Attn(window).

    q [B, T, HQ, dk], k [B, T, H, dk], v [B, T, H, dv] (HQ a multiple of H: GQA), gates [B, T, HQ] already through a
    sigmoid (None turns a branch off; at least one is needed), in bfloat16 or float16 on CUDA (any float dtype on
    the CPU, where the reference runs). Returns o [B, T, HQ, dv].

    l, d: compressed block length and stride; lsel: selection block length; n: selected blocks per query (block 0
    and the two local blocks included); w: sliding window (0: off); scale: softmax scale (default 1/sqrt(dk)).

    Varlen (as flash-attn): q [T, HQ, dk] (or [1, T, HQ, dk]) holding the sequences one after another, cu_seqlens
    int32 [N + 1] on the same device, max_seqlen >= the longest sequence (a Python int; when None it is read from
    cu_seqlens, which synchronizes with the GPU and breaks a torch.compile graph). Nothing is copied to the host.

    k_cmp / v_cmp [B, Nc, H, dk|dv]: the compressed keys and values from your own compressor (nsajit.nn's
    BlockCompressor is the paper's MLP), with Nc = max(0, (T - l) // d + 1); they get gradients. Varlen: each
    sequence's blocks one after another, padded to nsajit.varlen_cmp_rows(T, N, max_seqlen, l, d) rows. None: the
    built-in mean pool of k and v.

    Strides: any B, T and head strides that are multiples of 8 elements with the last dim contiguous pass without a
    copy (views of a fused qkv projection; gates that are views of one [B, T, HQ, 3] projection).
    """
    gates = [g_cmp, g_slc, g_win]
    if all(g is None for g in gates):
        raise ValueError("nsajit.nsa: give at least one of g_cmp, g_slc, g_win (a None gate turns its branch off)")
    unbatched = False
    if cu_seqlens is not None:
        if q.dim() == 3:
            unbatched = True
            q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
            gates = [None if g is None else g.unsqueeze(0) for g in gates]
            if k_cmp is not None and k_cmp.dim() == 3:
                k_cmp, v_cmp = k_cmp.unsqueeze(0), v_cmp.unsqueeze(0)
        if cu_seqlens.dtype != torch.int32:
            cu_seqlens = cu_seqlens.to(torch.int32)
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())  # a host sync: pass max_seqlen instead
    else:
        if max_seqlen is not None and max_seqlen != 0:
            raise ValueError("nsajit.nsa: max_seqlen is for varlen: give cu_seqlens too")
        max_seqlen = 0
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"nsajit.nsa: q, k, v must be [B, T, heads, dim] (or [T, heads, dim] with cu_seqlens), got "
                         f"{q.dim()}, {k.dim()}, {v.dim()} dims")
    if k.shape[-2] == 0 or q.shape[-2] % k.shape[-2] != 0:
        raise ValueError(f"nsajit.nsa: HQ = {q.shape[-2]} query heads must be a multiple of H = {k.shape[-2]}")
    gates = [None if g is None else g.to(q.dtype) for g in gates]
    if k_cmp is not None:
        if v_cmp is None:
            raise ValueError("nsajit.nsa: give v_cmp with k_cmp")
        k_cmp, v_cmp = k_cmp.to(q.dtype), v_cmp.to(q.dtype)
    elif v_cmp is not None:
        raise ValueError("nsajit.nsa: give k_cmp with v_cmp")
    args = (q, k, v, *gates, k_cmp, v_cmp, cu_seqlens, int(max_seqlen), int(l), int(d), int(lsel), int(n), int(w),
            0.0 if scale is None else float(scale))
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, *gates, k_cmp, v_cmp))
    if needs_grad:
        o = torch.ops.nsajit.fwd(*args)[0]
    else:
        o = torch.ops.nsajit.fwd_infer(*args)
    return o.squeeze(0) if unbatched else o
