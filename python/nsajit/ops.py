"""The nsajit operators, registered with torch.library so that autograd, torch.compile (fake tensors), CUDA graphs
and torch.library.opcheck see real operators:

    nsajit::fwd       the forward that keeps what the backward needs: (o, o_cmp, o_slc, o_win, lse_cmp, lse_slc,
                      lse_win, idx, cnt); autograd registered (its backward is nsajit::bwd)
    nsajit::fwd_infer the forward alone: o
    nsajit::bwd       the backward: (dq, dk, dv, dg_cmp, dg_slc, dg_win, dk_cmp, dv_cmp)

Each has a CUDA kernel (libnsajit.so through ctypes, on torch's current stream of the inputs' device, every output and
the workspace from torch's caching allocator, so nothing allocates or synchronizes behind torch's back and the calls
can be captured in CUDA graphs), a CPU kernel (the pure-PyTorch reference of reference.py: small shapes, for tests
and machines without a GPU) and a fake kernel (shapes and dtypes only). Outputs of a branch that is off (its gate is
None) and the selection without g_slc are empty tensors of shape [0]; every other output is contiguous.

Inputs are [B, T, heads, dim] (varlen: B = 1 with cu_seqlens int32 [N + 1] on the device and max_seqlen >= the
longest sequence), gates [B, T, HQ], in bfloat16 or float16 on CUDA. Any B, T and head strides the C ABI accepts
(multiples of 8 elements, last dim contiguous, 16-byte aligned) pass without a copy, so views of a fused qkv
projection and gates with head stride 3 cost nothing; anything else is copied first.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
from ctypes import byref

import torch

from . import _lib, reference
from ._bounds import num_cmp_blocks, varlen_cmp_rows

# Test hook: called as _test_hook(op_name, outputs) after each CUDA or CPU kernel (python/tests/conftest.py plants
# faults through it to show that the numeric tests can fail). None in normal use.
_test_hook = None

_ARGS = (
    "Tensor q, Tensor k, Tensor v, Tensor? g_cmp, Tensor? g_slc, Tensor? g_win, Tensor? k_cmp, Tensor? v_cmp, "
    "Tensor? cu_seqlens, int max_seqlen, int l, int d, int lsel, int n, int w, float scale"
)
_FWD_OUT = "(Tensor o, Tensor o_cmp, Tensor o_slc, Tensor o_win, Tensor lse_cmp, Tensor lse_slc, Tensor lse_win, Tensor idx, Tensor cnt)"
_BWD_SCHEMA = (
    "bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor? g_cmp, Tensor? g_slc, Tensor? g_win, Tensor? k_cmp, "
    "Tensor? v_cmp, Tensor o_cmp, Tensor o_slc, Tensor o_win, Tensor lse_cmp, Tensor lse_slc, Tensor lse_win, "
    "Tensor idx, Tensor cnt, Tensor? cu_seqlens, int max_seqlen, int l, int d, int lsel, int n, int w, float scale) "
    "-> (Tensor dq, Tensor dk, Tensor dv, Tensor dg_cmp, Tensor dg_slc, Tensor dg_win, Tensor dk_cmp, Tensor dv_cmp)"
)

_lib_def = torch.library.Library("nsajit", "DEF")
_lib_def.define(f"fwd({_ARGS}) -> {_FWD_OUT}")
_lib_def.define(f"fwd_infer({_ARGS}) -> Tensor")
_lib_def.define(_BWD_SCHEMA)


# ---- shapes (shared by the fake, CUDA and CPU kernels) ---------------------------------------------------------------

def _check(cond, message):
    """torch._check for symbolic conditions (under torch.compile or FakeTensorMode with dynamic shapes); a plain bool
    is checked here, because torch._check's first call imports torch.fx.experimental.symbolic_shapes and with it
    sympy, about 1.5 s of a process's first nsajit call. Raises the same RuntimeError."""
    if isinstance(cond, bool):
        if not cond:
            raise RuntimeError(message())
    else:
        torch._check(cond, message)


def _check_inputs(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w):
    _check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4, lambda: "nsajit: q, k, v must be [B, T, heads, dim]")
    B, T, HQ, dk = q.shape
    H = k.shape[2]
    _check(k.shape[0] == B and k.shape[1] == T and k.shape[3] == dk,
                 lambda: f"nsajit: k {tuple(k.shape)} does not match q {tuple(q.shape)}: [B, T, H, dk]")
    _check(v.shape[0] == B and v.shape[1] == T and v.shape[2] == H,
                 lambda: f"nsajit: v {tuple(v.shape)} does not match k {tuple(k.shape)}: [B, T, H, dv]")
    _check(H >= 1 and HQ % H == 0, lambda: f"nsajit: HQ = {HQ} query heads are not a multiple of H = {H}")
    _check(k.dtype == q.dtype and v.dtype == q.dtype, lambda: "nsajit: q, k, v must have one dtype")
    gates = [g for g in (g_cmp, g_slc, g_win) if g is not None]
    _check(len(gates) > 0, lambda: "nsajit: give at least one of g_cmp, g_slc, g_win")
    for g in gates:
        _check(g.dim() == 3 and g.shape[0] == B and g.shape[1] == T and g.shape[2] == HQ,
                     lambda: f"nsajit: a gate is {tuple(g.shape)}, not [B, T, HQ] = {(B, T, HQ)}")
        _check(g.dtype == q.dtype, lambda: f"nsajit: gates must be {q.dtype} like q, not {g.dtype}")
    _check((k_cmp is None) == (v_cmp is None), lambda: "nsajit: give both k_cmp and v_cmp, or neither")
    if k_cmp is not None:
        rows = _cmp_rows(q, cu_seqlens, max_seqlen, l, d)
        _check(k_cmp.dim() == 4 and k_cmp.shape[0] == B and k_cmp.shape[1] == rows and k_cmp.shape[2] == H
                     and k_cmp.shape[3] == dk,
                     lambda: f"nsajit: k_cmp {tuple(k_cmp.shape)} must be [B, Nc, H, dk] = {(B, rows, H, dk)}")
        _check(v_cmp.dim() == 4 and v_cmp.shape[0] == B and v_cmp.shape[1] == rows and v_cmp.shape[2] == H
                     and v_cmp.shape[3] == v.shape[3],
                     lambda: f"nsajit: v_cmp {tuple(v_cmp.shape)} must be [B, Nc, H, dv] = {(B, rows, H, v.shape[3])}")
        _check(k_cmp.dtype == q.dtype and v_cmp.dtype == q.dtype, lambda: "nsajit: k_cmp/v_cmp dtype != q's")
    if cu_seqlens is not None:
        _check(B == 1, lambda: f"nsajit: varlen (cu_seqlens) needs B = 1, got B = {B}")
        _check(cu_seqlens.dim() == 1 and cu_seqlens.dtype == torch.int32,
                     lambda: "nsajit: cu_seqlens must be a 1-d int32 tensor")
        _check(max_seqlen >= 1, lambda: f"nsajit: varlen needs max_seqlen >= 1, got {max_seqlen}")


def _cmp_rows(q, cu_seqlens, max_seqlen, l, d):
    """The rows of k_cmp / v_cmp: Nc(T), or for varlen the bound from (T, num_seqs, max_seqlen)."""
    if cu_seqlens is None:
        return num_cmp_blocks(q.shape[1], l, d)
    return varlen_cmp_rows(q.shape[1], cu_seqlens.shape[0] - 1, max_seqlen, l, d)


def _alloc_fwd(q, k, v, g_cmp, g_slc, g_win, n):
    B, T, HQ, _ = q.shape
    H, dv = k.shape[2], v.shape[3]
    o = q.new_empty(B, T, HQ, dv)
    # Every output its own tensor, the empty ones too (outputs may not alias).
    o_b = [q.new_empty(B, T, HQ, dv) if g is not None else q.new_empty(0) for g in (g_cmp, g_slc, g_win)]
    lse_b = [q.new_empty(B, T, HQ, dtype=torch.float32) if g is not None else q.new_empty(0, dtype=torch.float32)
             for g in (g_cmp, g_slc, g_win)]
    if g_slc is not None:
        idx = q.new_empty(B, T, H, n, dtype=torch.int32)
        cnt = q.new_empty(B, T, H, dtype=torch.int32)
    else:
        idx = q.new_empty(0, dtype=torch.int32)
        cnt = q.new_empty(0, dtype=torch.int32)
    return o, *o_b, *lse_b, idx, cnt


def _alloc_bwd(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp):
    B, T, HQ, _ = q.shape
    dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
    dg = [q.new_empty(B, T, HQ) if g is not None else q.new_empty(0) for g in (g_cmp, g_slc, g_win)]
    if k_cmp is not None:
        dkc, dvc = k_cmp.new_empty(k_cmp.shape), v_cmp.new_empty(v_cmp.shape)
    else:
        dkc, dvc = q.new_empty(0), q.new_empty(0)
    return dq, dk, dv, *dg, dkc, dvc


# ---- fake kernels -------------------------------------------------------------------------------------------------------

@torch.library.register_fake("nsajit::fwd")
def _fwd_fake(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w, scale):
    _check_inputs(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w)
    return _alloc_fwd(q, k, v, g_cmp, g_slc, g_win, n)


@torch.library.register_fake("nsajit::fwd_infer")
def _fwd_infer_fake(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w, scale):
    _check_inputs(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w)
    return q.new_empty(q.shape[0], q.shape[1], q.shape[2], v.shape[3])


@torch.library.register_fake("nsajit::bwd")
def _bwd_fake(dout, q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, o_cmp, o_slc, o_win, lse_cmp, lse_slc, lse_win, idx,
              cnt, cu_seqlens, max_seqlen, l, d, lsel, n, w, scale):
    _check_inputs(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w)
    return _alloc_bwd(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp)


# ---- CUDA kernels (libnsajit.so) ------------------------------------------------------------------------------------------

_DTYPES = {torch.bfloat16: _lib.NSAJIT_BF16, torch.float16: _lib.NSAJIT_FP16}
_fwd_workspace: dict[tuple, int] = {}


def _problem(q, k, v, l, d, lsel, n, w, scale) -> _lib.Problem:
    if q.dtype not in _DTYPES:
        raise _lib.NsajitUsageError(f"nsajit's CUDA kernels take bfloat16 or float16 tensors, not {q.dtype}")
    B, T, HQ, dk = q.shape
    return _lib.Problem(_DTYPES[q.dtype], B, T, HQ, k.shape[2], dk, v.shape[3], l, d, lsel, n, w, scale)


def _usable(t: torch.Tensor) -> torch.Tensor:
    """`t` as the C ABI takes it (last dim contiguous, other strides non-negative multiples of 8 elements, 16-byte
    aligned), or a contiguous copy."""
    if t.stride(-1) != 1 or t.data_ptr() % 16 != 0 or any(
            n > 1 and (s < 0 or s % 8 != 0) for s, n in zip(t.stride()[:-1], t.shape[:-1])):
        return t.contiguous()
    return t


def _tensor(t: torch.Tensor | None) -> _lib.Tensor:
    if t is None or t.numel() == 0:
        return _lib.Tensor()
    s = [st if n > 1 else 0 for st, n in zip(t.stride(), t.shape)]  # the stride of a size-1 dim is never used
    return _lib.Tensor(t.data_ptr(), s[0], s[1], s[2])


def _gates(gates):
    """The gates with one set of strides (the C ABI takes one for all three): their own when they share them, else
    contiguous copies. Returns (gates, (stride_b, stride_t, stride_h))."""
    given = [g for g in gates if g is not None]
    if not given:
        return gates, (0, 0, 1)

    def strides(g):
        return tuple(s if n > 1 else 0 for s, n in zip(g.stride(), g.shape))

    ss = {strides(g) for g in given}
    if len(ss) != 1 or min(next(iter(ss))) < 0:
        gates = [None if g is None else g.contiguous() for g in gates]
        ss = {strides(g) for g in gates if g is not None}
    sb, st, sh = next(iter(ss))
    return gates, (sb, st, sh if sh != 0 else 1)


def _ptr(t: torch.Tensor | None):
    return None if t is None or t.numel() == 0 else t.data_ptr()


def _same_device(device, **tensors):
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise _lib.NsajitUsageError(f"nsajit: {name} is on {t.device} but q is on {device}")


def _stream(device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _fwd_cuda_impl(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w, scale,
                   keep):
    _check_inputs(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w)
    _same_device(q.device, k=k, v=v, g_cmp=g_cmp, g_slc=g_slc, g_win=g_win, k_cmp=k_cmp, v_cmp=v_cmp,
                 cu_seqlens=cu_seqlens)
    outs = _alloc_fwd(q, k, v, g_cmp, g_slc, g_win, n) if keep else (q.new_empty(q.shape[:3] + v.shape[3:]),)
    o = outs[0]
    if q.numel() == 0 or o.numel() == 0:  # T = 0 (C refuses it: nothing to compute)
        for x in outs:
            x.zero_()
        if keep and g_slc is not None:
            outs[7].fill_(-1)
        return outs
    p = _problem(q, k, v, l, d, lsel, n, w, scale)
    lib = _lib.load()
    q, k, v = _usable(q), _usable(k), _usable(v)
    (g_cmp, g_slc, g_win), (gsb, gst, gsh) = _gates([None if g is None else g for g in (g_cmp, g_slc, g_win)])
    t = _lib.ForwardTensors()
    t.q, t.k, t.v = _tensor(q), _tensor(k), _tensor(v)
    if k_cmp is not None and k_cmp.numel() > 0:  # an empty k_cmp (T < l) is the same as none
        k_cmp, v_cmp = _usable(k_cmp), _usable(v_cmp)
        t.k_cmp, t.v_cmp = _tensor(k_cmp), _tensor(v_cmp)
    t.g_cmp, t.g_slc, t.g_win = _ptr(g_cmp), _ptr(g_slc), _ptr(g_win)
    t.gate_stride_b, t.gate_stride_t, t.gate_stride_h = gsb, gst, gsh
    t.o = _tensor(o)
    B, T, HQ, _ = q.shape
    if keep:
        _, o_cmp, o_slc, o_win, lse_cmp, lse_slc, lse_win, idx, cnt = outs
        t.o_cmp, t.o_slc, t.o_win = _tensor(o_cmp), _tensor(o_slc), _tensor(o_win)
        t.lse_cmp, t.lse_slc, t.lse_win = _ptr(lse_cmp), _ptr(lse_slc), _ptr(lse_win)
        t.lse_stride_b, t.lse_stride_t = T * HQ, HQ
        t.idx, t.cnt = _ptr(idx), _ptr(cnt)
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.contiguous()
        t.cu_seqlens, t.num_seqs, t.max_seqlen = cu_seqlens.data_ptr(), cu_seqlens.shape[0] - 1, max_seqlen
    key = (p.dtype, B, T, HQ, p.H, p.dk, p.dv, l, d, lsel, n, w)
    nbytes = _fwd_workspace.get(key)
    if nbytes is None:
        nbytes = _fwd_workspace[key] = _lib.forward_workspace_size(p)
    workspace = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=q.device)
    t.workspace, t.workspace_bytes = workspace.data_ptr(), nbytes
    _lib.check(lib.nsajit_forward(byref(p), byref(t), ctypes.c_void_p(_stream(q.device))))
    if _test_hook is not None:
        _test_hook("fwd", outs)
    return outs


@torch.library.impl(_lib_def, "fwd", "CUDA")
def _fwd_cuda(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w, scale):
    return _fwd_cuda_impl(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w, scale,
                          True)


@torch.library.impl(_lib_def, "fwd_infer", "CUDA")
def _fwd_infer_cuda(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w, scale):
    return _fwd_cuda_impl(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w, scale,
                          False)[0]


@torch.library.impl(_lib_def, "bwd", "CUDA")
def _bwd_cuda(dout, q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, o_cmp, o_slc, o_win, lse_cmp, lse_slc, lse_win, idx,
              cnt, cu_seqlens, max_seqlen, l, d, lsel, n, w, scale):
    _check_inputs(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w)
    _same_device(q.device, dout=dout, k=k, v=v, g_cmp=g_cmp, g_slc=g_slc, g_win=g_win, k_cmp=k_cmp, v_cmp=v_cmp,
                 o_cmp=o_cmp, o_slc=o_slc, o_win=o_win, lse_cmp=lse_cmp, lse_slc=lse_slc, lse_win=lse_win, idx=idx,
                 cnt=cnt, cu_seqlens=cu_seqlens)
    outs = _alloc_bwd(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp)
    dq, dk, dv, dg_cmp, dg_slc, dg_win, dk_cmp, dv_cmp = outs
    if q.numel() == 0 or dout.numel() == 0:
        for x in outs:
            x.zero_()
        return outs
    p = _problem(q, k, v, l, d, lsel, n, w, scale)
    lib = _lib.load()
    B, T, HQ, _ = q.shape
    q, k, v, dout = _usable(q), _usable(k), _usable(v), _usable(dout)
    (g_cmp, g_slc, g_win), (gsb, gst, gsh) = _gates([g_cmp, g_slc, g_win])
    t = _lib.BackwardTensors()
    t.q, t.k, t.v, t.dout = _tensor(q), _tensor(k), _tensor(v), _tensor(dout)
    if k_cmp is not None and k_cmp.numel() > 0:
        k_cmp, v_cmp = _usable(k_cmp), _usable(v_cmp)
        t.k_cmp, t.v_cmp = _tensor(k_cmp), _tensor(v_cmp)
        t.dk_cmp, t.dv_cmp = _tensor(dk_cmp), _tensor(dv_cmp)
    elif k_cmp is not None:
        dk_cmp.zero_(), dv_cmp.zero_()
    t.g_cmp, t.g_slc, t.g_win = _ptr(g_cmp), _ptr(g_slc), _ptr(g_win)
    t.gate_stride_b, t.gate_stride_t, t.gate_stride_h = gsb, gst, gsh
    saved = {}
    for name, o_b, lse_b, g in (("cmp", o_cmp, lse_cmp, g_cmp), ("slc", o_slc, lse_slc, g_slc),
                                ("win", o_win, lse_win, g_win)):
        if g is None:
            continue
        o_b, lse_b = _usable(o_b), lse_b.contiguous()
        saved[name] = (o_b, lse_b)
        setattr(t, "o_" + name, _tensor(o_b))
        setattr(t, "lse_" + name, lse_b.data_ptr())
    t.lse_stride_b, t.lse_stride_t = T * HQ, HQ
    if g_slc is not None:
        idx, cnt = idx.contiguous(), cnt.contiguous()
        t.idx, t.cnt = idx.data_ptr(), cnt.data_ptr()
    t.dq, t.dk, t.dv = _tensor(dq), _tensor(dk), _tensor(dv)
    t.dg_cmp, t.dg_slc, t.dg_win = _ptr(dg_cmp), _ptr(dg_slc), _ptr(dg_win)
    t.dg_stride_b, t.dg_stride_t = T * HQ, HQ
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.contiguous()
        t.cu_seqlens, t.num_seqs, t.max_seqlen = cu_seqlens.data_ptr(), cu_seqlens.shape[0] - 1, max_seqlen
    nbytes = _lib.backward_workspace_size(p, t)
    workspace = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=q.device)
    t.workspace, t.workspace_bytes = workspace.data_ptr(), nbytes
    _lib.check(lib.nsajit_backward(byref(p), byref(t), ctypes.c_void_p(_stream(q.device))))
    if _test_hook is not None:
        _test_hook("bwd", outs)
    return outs


# ---- CPU kernels (the float64 reference) ------------------------------------------------------------------------------

def _f64(t):
    return None if t is None else t.double()


def _cu_list(cu_seqlens):
    return None if cu_seqlens is None else cu_seqlens.tolist()


def _fwd_cpu_impl(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w, scale):
    _check_inputs(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w)
    outs = _alloc_fwd(q, k, v, g_cmp, g_slc, g_win, n)
    r = reference.forward(_f64(q), _f64(k), _f64(v), _f64(g_cmp), _f64(g_slc), _f64(g_win), l=l, d=d, lsel=lsel, n=n,
                          w=w, scale=scale or None, k_cmp=_f64(k_cmp), v_cmp=_f64(v_cmp),
                          cu_seqlens=_cu_list(cu_seqlens))
    outs[0].copy_(r.o)
    for i, x in enumerate((r.o_cmp, r.o_slc, r.o_win, r.lse_cmp, r.lse_slc, r.lse_win)):
        if x is not None:
            outs[1 + i].copy_(x)
    if g_slc is not None:
        outs[7].copy_(r.idx)
        outs[8].copy_(r.cnt)
    if _test_hook is not None:
        _test_hook("fwd", outs)
    return outs


@torch.library.impl(_lib_def, "fwd", "CPU")
def _fwd_cpu(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w, scale):
    return _fwd_cpu_impl(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w, scale)


@torch.library.impl(_lib_def, "fwd_infer", "CPU")
def _fwd_infer_cpu(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w, scale):
    return _fwd_cpu_impl(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w,
                         scale)[0]


@torch.library.impl(_lib_def, "bwd", "CPU")
def _bwd_cpu(dout, q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, o_cmp, o_slc, o_win, lse_cmp, lse_slc, lse_win, idx,
             cnt, cu_seqlens, max_seqlen, l, d, lsel, n, w, scale):
    _check_inputs(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w)
    outs = _alloc_bwd(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp)
    has_sel = g_slc is not None

    def gradients():
        return reference.backward(_f64(dout), _f64(q), _f64(k), _f64(v), _f64(g_cmp), _f64(g_slc), _f64(g_win), l=l,
                                  d=d, lsel=lsel, n=n, w=w, scale=scale or None, k_cmp=_f64(k_cmp),
                                  v_cmp=_f64(v_cmp), idx=idx if has_sel else None, cnt=cnt if has_sel else None,
                                  cu_seqlens=_cu_list(cu_seqlens))

    # The reference's gradients come from torch.autograd, but this kernel runs below the Autograd dispatch key
    # (the dispatcher excludes it on this thread while an autograd-registered op runs): a thread of its own has
    # the default dispatch state.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        r = pool.submit(gradients).result()
    for x, name in zip(outs, ("dq", "dk", "dv", "dg_cmp", "dg_slc", "dg_win", "dk_cmp", "dv_cmp")):
        if r[name] is not None:
            x.copy_(r[name])
    if _test_hook is not None:
        _test_hook("bwd", outs)
    return outs


# ---- autograd ------------------------------------------------------------------------------------------------------------

def _setup_context(ctx, inputs, output):
    q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, max_seqlen, l, d, lsel, n, w, scale = inputs
    _, o_cmp, o_slc, o_win, lse_cmp, lse_slc, lse_win, idx, cnt = output
    ctx.save_for_backward(q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, o_cmp, o_slc, o_win, lse_cmp,
                          lse_slc, lse_win, idx, cnt)
    ctx.params = (max_seqlen, l, d, lsel, n, w, scale)
    # What is saved for the backward carries no gradient of its own: only o does.
    ctx.mark_non_differentiable(o_cmp, o_slc, o_win, lse_cmp, lse_slc, lse_win, idx, cnt)


def _backward(ctx, do, *_):
    """Gradients for q, k, v, the gates and k_cmp/v_cmp (the selection is held fixed; o_b, lse_b, idx, cnt are
    saved for the backward and carry no gradient of their own)."""
    (q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, cu_seqlens, o_cmp, o_slc, o_win, lse_cmp, lse_slc, lse_win, idx,
     cnt) = ctx.saved_tensors
    if do is None:
        do = torch.zeros(q.shape[:3] + v.shape[3:], dtype=q.dtype, device=q.device)
    dq, dk, dv, dg_cmp, dg_slc, dg_win, dk_cmp, dv_cmp = torch.ops.nsajit.bwd(
        do, q, k, v, g_cmp, g_slc, g_win, k_cmp, v_cmp, o_cmp, o_slc, o_win, lse_cmp, lse_slc, lse_win, idx, cnt,
        cu_seqlens, *ctx.params)
    return (dq, dk, dv, dg_cmp if g_cmp is not None else None, dg_slc if g_slc is not None else None,
            dg_win if g_win is not None else None, dk_cmp if k_cmp is not None else None,
            dv_cmp if v_cmp is not None else None, None, None, None, None, None, None, None, None)


def _no_double_backward(ctx, *grads):
    raise NotImplementedError("nsajit: the backward of nsajit::bwd (double backward) is not implemented")


torch.library.register_autograd("nsajit::fwd", _backward, setup_context=_setup_context)
torch.library.register_autograd("nsajit::bwd", _no_double_backward)
