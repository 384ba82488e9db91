"""NSA decode over a paged KV cache, as torch operators: `decode_append` writes new tokens into the cache (and the
compressed entries they complete), `decode` runs one step for the last Tq tokens of every sequence.

The cache (runtime/decode_api.h says everything):
    k_pool [num_pages, page_size, H, dk], v_pool [num_pages, page_size, H, dv]  contiguous pools
    page_table [B, max_pages] int32  sequence b's token s is row s % page_size of page page_table[b, s // page_size]
    seqlens [B] int32                tokens in the cache per sequence (decode: the Tq query tokens included)
    k_cmp [B, max_cmp, H, dk], v_cmp [B, max_cmp, H, dv]  the compressed cache (entry i: mean of tokens
                                     [i*d, i*d + l), complete once token i*d + l - 1 is in the cache)
page_size must be a multiple of l' and of 8; max_cmp at least the entries a full sequence completes.

    nsajit.decode_append(k_new, v_new, k_pool, v_pool, page_table, seqlens, k_cmp, v_cmp, l=64, d=64)
    seqlens += Tn                                        # the caller owns the lengths
    o, idx, cnt = nsajit.decode(q, k_pool, v_pool, page_table, seqlens, k_cmp, v_cmp, g_cmp, g_slc, g_win,
                                l=64, d=64, lsel=64, n=16, w=512)

Neither op synchronizes, allocates outside torch, or reads device memory on the host, and the launch depends only on
the shapes: a step can be captured into a CUDA graph once and replayed as the sequences grow. On the CPU both run a
float64 reference (slow; for tests).
"""

from __future__ import annotations

import ctypes
from ctypes import byref

import torch

from . import _lib, reference
from ._bounds import num_cmp_blocks

_lib_def = torch.library.Library("nsajit", "FRAGMENT")
_lib_def.define(
    "decode(Tensor q, Tensor k_pool, Tensor v_pool, Tensor page_table, Tensor seqlens, Tensor k_cmp, Tensor v_cmp, "
    "Tensor? g_cmp, Tensor? g_slc, Tensor? g_win, Tensor? k_pool_slc, Tensor? v_pool_slc, Tensor? k_pool_win, "
    "Tensor? v_pool_win, int l, int d, int lsel, int n, int w, float scale) -> (Tensor o, Tensor idx, Tensor cnt)")
_lib_def.define(
    "decode_append(Tensor k_new, Tensor v_new, Tensor(a!) k_pool, Tensor(b!) v_pool, Tensor page_table, "
    "Tensor seqlens, Tensor(c!)? k_cmp, Tensor(d!)? v_cmp, int l, int d) -> ()")


def _check(cond, message):
    if not cond:
        raise _lib.NsajitUsageError(message())


def _check_cache(who, k_pool, v_pool, page_table, seqlens, B):
    _check(k_pool.dim() == 4 and v_pool.dim() == 4, lambda: f"{who}: k_pool/v_pool must be [num_pages, page_size, H, d]")
    _check(k_pool.shape[:3] == v_pool.shape[:3],
           lambda: f"{who}: k_pool {tuple(k_pool.shape)} and v_pool {tuple(v_pool.shape)} differ in [pages, size, H]")
    _check(page_table.dim() == 2 and page_table.shape[0] == B and page_table.dtype == torch.int32,
           lambda: f"{who}: page_table must be int32 [B = {B}, max_pages], not {page_table.dtype} "
                   f"{tuple(page_table.shape)}")
    _check(seqlens.dim() == 1 and seqlens.shape[0] == B and seqlens.dtype == torch.int32,
           lambda: f"{who}: seqlens must be int32 [B = {B}], not {seqlens.dtype} {tuple(seqlens.shape)}")


def _check_decode(q, k_pool, v_pool, page_table, seqlens, k_cmp, v_cmp, g_cmp, g_slc, g_win, n):
    _check(q.dim() == 4, lambda: "nsajit.decode: q must be [B, Tq, HQ, dk]")
    B, Tq, HQ, dk = q.shape
    _check_cache("nsajit.decode", k_pool, v_pool, page_table, seqlens, B)
    H = k_pool.shape[2]
    _check(k_pool.shape[3] == dk, lambda: f"nsajit.decode: k_pool's head dim {k_pool.shape[3]} != q's {dk}")
    _check(H >= 1 and HQ % H == 0, lambda: f"nsajit.decode: HQ = {HQ} is not a multiple of H = {H}")
    _check(k_cmp.dim() == 4 and k_cmp.shape[0] == B and k_cmp.shape[2] == H and k_cmp.shape[3] == dk,
           lambda: f"nsajit.decode: k_cmp {tuple(k_cmp.shape)} must be [B, max_cmp, H, dk]")
    _check(v_cmp.shape[:3] == k_cmp.shape[:3] and v_cmp.shape[3] == v_pool.shape[3],
           lambda: f"nsajit.decode: v_cmp {tuple(v_cmp.shape)} must be [B, max_cmp, H, dv]")
    for g in (g_cmp, g_slc, g_win):
        if g is not None:
            _check(g.dim() == 3 and tuple(g.shape) == (B, Tq, HQ),
                   lambda: f"nsajit.decode: a gate is {tuple(g.shape)}, not [B, Tq, HQ] = {(B, Tq, HQ)}")
    _check(any(g is not None for g in (g_cmp, g_slc, g_win)), lambda: "nsajit.decode: give at least one gate")
    return B, Tq, HQ, H


@torch.library.register_fake("nsajit::decode")
def _decode_fake(q, k_pool, v_pool, page_table, seqlens, k_cmp, v_cmp, g_cmp, g_slc, g_win, k_pool_slc, v_pool_slc,
                 k_pool_win, v_pool_win, l, d, lsel, n, w, scale):
    B, Tq, HQ, H = _check_decode(q, k_pool, v_pool, page_table, seqlens, k_cmp, v_cmp, g_cmp, g_slc, g_win, n)
    return _alloc_decode(q, v_pool, H, n, g_slc is not None)


@torch.library.register_fake("nsajit::decode_append")
def _append_fake(k_new, v_new, k_pool, v_pool, page_table, seqlens, k_cmp, v_cmp, l, d):
    _check_cache("nsajit.decode_append", k_pool, v_pool, page_table, seqlens, k_new.shape[0])
    return None


def _alloc_decode(q, v_pool, H, n, with_selection):
    B, Tq, HQ, _ = q.shape
    o = q.new_empty(B, Tq, HQ, v_pool.shape[3])
    if with_selection:
        return o, q.new_empty(B, Tq, H, n, dtype=torch.int32), q.new_empty(B, Tq, H, dtype=torch.int32)
    return o, q.new_empty(0, dtype=torch.int32), q.new_empty(0, dtype=torch.int32)


# ---- CUDA (libnsajit.so) --------------------------------------------------------------------------------------------------

def _cuda_problem(q_like_dtype, B, T, HQ, H, dk, dv, l, d, lsel, n, w, scale):
    from .ops import _DTYPES
    if q_like_dtype not in _DTYPES:
        raise _lib.NsajitUsageError(f"nsajit's CUDA kernels take bfloat16 or float16 tensors, not {q_like_dtype}")
    return _lib.Problem(_DTYPES[q_like_dtype], B, T, HQ, H, dk, dv, l, d, lsel, n, w, scale)


def _contig(t):
    return None if t is None else t.contiguous()


_ws_bytes: dict[tuple, int] = {}  # (problem bytes, Tq) -> nsajit_decode_workspace_size


@torch.library.impl(_lib_def, "decode", "CUDA")
def _decode_cuda(q, k_pool, v_pool, page_table, seqlens, k_cmp, v_cmp, g_cmp, g_slc, g_win, k_pool_slc, v_pool_slc,
                 k_pool_win, v_pool_win, l, d, lsel, n, w, scale):
    from .ops import _gates, _ptr, _stream, _tensor, _usable
    B, Tq, HQ, H = _check_decode(q, k_pool, v_pool, page_table, seqlens, k_cmp, v_cmp, g_cmp, g_slc, g_win, n)
    o, idx, cnt = _alloc_decode(q, v_pool, H, n, g_slc is not None)
    lib = _lib.load()
    page_size = k_pool.shape[1]
    p = _cuda_problem(q.dtype, B, page_table.shape[1] * page_size, HQ, H, q.shape[3], v_pool.shape[3], l, d, lsel, n,
                      w, scale)
    q, k_cmp, v_cmp = _usable(q), _usable(k_cmp), _usable(v_cmp)
    k_pool, v_pool, page_table, seqlens = (x.contiguous() for x in (k_pool, v_pool, page_table, seqlens))
    (g_cmp, g_slc, g_win), (gsb, gst, gsh) = _gates([g_cmp, g_slc, g_win])
    t = _lib.DecodeTensors()
    t.q, t.o = _tensor(q), _tensor(o)
    t.g_cmp, t.g_slc, t.g_win = _ptr(g_cmp), _ptr(g_slc), _ptr(g_win)
    t.gate_stride_b, t.gate_stride_t, t.gate_stride_h = gsb, gst, gsh
    t.k_pool, t.v_pool, t.num_pages = k_pool.data_ptr(), v_pool.data_ptr(), k_pool.shape[0]
    keep = []
    for name, kp, vp in (("slc", k_pool_slc, v_pool_slc), ("win", k_pool_win, v_pool_win)):
        if kp is not None:
            kp, vp = kp.contiguous(), vp.contiguous()
            keep += [kp, vp]
            setattr(t, f"k_pool_{name}", kp.data_ptr())
            setattr(t, f"v_pool_{name}", vp.data_ptr())
            setattr(t, f"num_pages_{name}", kp.shape[0])
    t.page_table, t.page_table_stride, t.page_size = page_table.data_ptr(), page_table.shape[1], page_size
    t.seqlens = seqlens.data_ptr()
    t.k_cmp, t.v_cmp, t.max_cmp = _tensor(k_cmp), _tensor(v_cmp), k_cmp.shape[1]
    if g_slc is not None:
        t.idx, t.cnt = idx.data_ptr(), cnt.data_ptr()
    # Split-KV scratch from torch's caching allocator: nothing allocates or synchronizes behind torch's back, so a
    # step can be captured in a CUDA graph.
    key = (bytes(p), Tq)
    nbytes = _ws_bytes.get(key)
    if nbytes is None:
        nbytes = _ws_bytes[key] = _lib.decode_workspace_size(p, Tq)
    workspace = None
    if nbytes > 0:
        workspace = torch.empty(nbytes, dtype=torch.uint8, device=q.device)
        t.workspace, t.workspace_bytes = workspace.data_ptr(), nbytes
    _lib.check(lib.nsajit_decode(byref(p), Tq, byref(t), ctypes.c_void_p(_stream(q.device))))
    from . import ops
    if ops._test_hook is not None:
        ops._test_hook("fwd", (o,))
    return o, idx, cnt


@torch.library.impl(_lib_def, "decode_append", "CUDA")
def _append_cuda(k_new, v_new, k_pool, v_pool, page_table, seqlens, k_cmp, v_cmp, l, d):
    from .ops import _stream, _tensor, _usable
    B, Tn, H, dk = k_new.shape
    _check_cache("nsajit.decode_append", k_pool, v_pool, page_table, seqlens, B)
    _check(k_pool.is_contiguous() and v_pool.is_contiguous(),
           lambda: "nsajit.decode_append: k_pool and v_pool must be contiguous (they are written in place)")
    _check((k_cmp is None) == (v_cmp is None), lambda: "nsajit.decode_append: give both k_cmp and v_cmp, or neither")
    lib = _lib.load()
    page_size = k_pool.shape[1]
    # The problem's fields the append does not use (HQ, l', n, w) take valid placeholders.
    p = _cuda_problem(k_new.dtype, B, page_table.shape[1] * page_size, H, H, dk, v_new.shape[3], l, d,
                      page_size, 3, 0, 0.0)
    k_new, v_new = _usable(k_new), _usable(v_new)
    page_table, seqlens = page_table.contiguous(), seqlens.contiguous()
    t = _lib.DecodeAppendTensors()
    t.k_new, t.v_new = _tensor(k_new), _tensor(v_new)
    t.k_pool, t.v_pool, t.num_pages = k_pool.data_ptr(), v_pool.data_ptr(), k_pool.shape[0]
    t.page_table, t.page_table_stride, t.page_size = page_table.data_ptr(), page_table.shape[1], page_size
    t.seqlens = seqlens.data_ptr()
    if k_cmp is not None:
        _check(k_cmp.stride(-1) == 1 and v_cmp.stride(-1) == 1,
               lambda: "nsajit.decode_append: k_cmp/v_cmp need a contiguous last dim (they are written in place)")
        t.k_cmp, t.v_cmp, t.max_cmp = _tensor(k_cmp), _tensor(v_cmp), k_cmp.shape[1]
    _lib.check(lib.nsajit_decode_append(byref(p), Tn, byref(t), ctypes.c_void_p(_stream(k_new.device))))


# ---- CPU (the float64 reference; slow, for tests) ---------------------------------------------------------------------

def _gather(pool, page_table, b, length):
    P = pool.shape[1]
    s = torch.arange(length)
    pages = page_table[b].long()[s // P]
    return pool[pages, s % P]


@torch.library.impl(_lib_def, "decode", "CPU")
def _decode_cpu(q, k_pool, v_pool, page_table, seqlens, k_cmp, v_cmp, g_cmp, g_slc, g_win, k_pool_slc, v_pool_slc,
                k_pool_win, v_pool_win, l, d, lsel, n, w, scale):
    B, Tq, HQ, H = _check_decode(q, k_pool, v_pool, page_table, seqlens, k_cmp, v_cmp, g_cmp, g_slc, g_win, n)
    o, idx, cnt = _alloc_decode(q, v_pool, H, n, g_slc is not None)
    for b in range(B):
        length = int(seqlens[b])
        _check(Tq <= length, lambda: f"nsajit.decode: seqlens[{b}] = {length} < Tq = {Tq}")
        f64 = lambda t: None if t is None else t.double()  # noqa: E731
        k, v = f64(_gather(k_pool, page_table, b, length)), f64(_gather(v_pool, page_table, b, length))
        _check(k_pool_slc is None and k_pool_win is None,
               lambda: "nsajit.decode: separate per-branch pools are supported by the CUDA kernel only")
        # The prefill reference over the whole sequence, the queries in its last Tq rows (the other rows' queries are
        # zeros: they are not read by the rows kept).
        qf = torch.zeros(1, length, HQ, q.shape[3], dtype=torch.float64)
        qf[0, length - Tq:] = q[b].double()
        gates = []
        for g in (g_cmp, g_slc, g_win):
            if g is None:
                gates.append(None)
                continue
            gf = torch.zeros(1, length, HQ, dtype=torch.float64)
            gf[0, length - Tq:] = g[b].double()
            gates.append(gf)
        nc = num_cmp_blocks(length, l, d)
        r = reference.forward(qf, k[None], v[None], *gates, l=l, d=d, lsel=lsel, n=n, w=w, scale=scale or None,
                              k_cmp=f64(k_cmp[b:b + 1, :nc]), v_cmp=f64(v_cmp[b:b + 1, :nc]))
        o[b] = r.o[0, length - Tq:].to(o.dtype)
        if g_slc is not None:
            idx[b] = r.idx[0, length - Tq:]
            cnt[b] = r.cnt[0, length - Tq:]
    return o, idx, cnt


@torch.library.impl(_lib_def, "decode_append", "CPU")
def _append_cpu(k_new, v_new, k_pool, v_pool, page_table, seqlens, k_cmp, v_cmp, l, d):
    B, Tn = k_new.shape[:2]
    _check_cache("nsajit.decode_append", k_pool, v_pool, page_table, seqlens, B)
    P = k_pool.shape[1]
    for b in range(B):
        old = int(seqlens[b])
        _check(old + Tn <= page_table.shape[1] * P,
               lambda: f"nsajit.decode_append: seqlens[{b}] = {old} + {Tn} tokens exceed the capacity "
                       f"{page_table.shape[1] * P}")
        s = torch.arange(old, old + Tn)
        pages = page_table[b].long()[s // P]
        k_pool[pages, s % P] = k_new[b]
        v_pool[pages, s % P] = v_new[b]
        if k_cmp is None:
            continue
        first = max(0, (old - l) // d + 1)
        last = (old + Tn - l) // d
        for i in range(first, last + 1):
            k_cmp[b, i] = _gather(k_pool, page_table, b, i * d + l)[i * d:].float().mean(0).to(k_cmp.dtype)
            v_cmp[b, i] = _gather(v_pool, page_table, b, i * d + l)[i * d:].float().mean(0).to(v_cmp.dtype)


# ---- the functional API -----------------------------------------------------------------------------------------------

def decode(q, k_pool, v_pool, page_table, seqlens, k_cmp, v_cmp, g_cmp=None, g_slc=None, g_win=None, *, l: int, d: int,
           lsel: int, n: int, w: int, scale: float | None = None, k_pool_slc=None, v_pool_slc=None, k_pool_win=None,
           v_pool_win=None):
    """One decode step: o [B, Tq, HQ, dv] for the last Tq tokens of every sequence, and the selection idx
    [B, Tq, H, n] / cnt [B, Tq, H] (empty without g_slc). See the module's docstring for the cache."""
    return torch.ops.nsajit.decode(q, k_pool, v_pool, page_table, seqlens, k_cmp, v_cmp, g_cmp, g_slc, g_win,
                                   k_pool_slc, v_pool_slc, k_pool_win, v_pool_win, l, d, lsel, n, w,
                                   float(scale or 0.0))


def decode_append(k_new, v_new, k_pool, v_pool, page_table, seqlens, k_cmp=None, v_cmp=None, *, l: int, d: int):
    """Writes k_new / v_new [B, Tn, H, d] at positions seqlens[b] .. seqlens[b] + Tn of each sequence (seqlens: the
    lengths before; not updated here) and the compressed entries they complete into k_cmp / v_cmp (when given)."""
    torch.ops.nsajit.decode_append(k_new, v_new, k_pool, v_pool, page_table, seqlens, k_cmp, v_cmp, l, d)


def completed_cmp_entries(old_len: int, new_len: int, *, l: int, d: int) -> range:
    """The compressed entries that growing a sequence from old_len to new_len tokens completes (for a learned
    compressor, which writes them itself)."""
    first = max(0, (old_len - l) // d + 1)
    return range(first, max(first, (new_len - l) // d + 1))

