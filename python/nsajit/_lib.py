"""libnsajit.so through ctypes: finding and loading it, the mirrors of runtime/nsajit_c.h's structs, and errors.

Nothing here is traced by torch.compile: only the CUDA kernels of the ops (ops.py) call into it.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading
from ctypes import POINTER, byref, c_char_p, c_double, c_int, c_int64, c_size_t, c_void_p
from importlib import resources

# The ABI this module mirrors (runtime/nsajit_c.h NSAJIT_ABI_VERSION).
ABI_VERSION = 4

NSAJIT_OK, NSAJIT_ERROR, NSAJIT_USAGE = 0, 1, 2
NSAJIT_BF16, NSAJIT_FP16 = 0, 1


class NsajitError(RuntimeError):
    """A CUDA or compile failure inside nsajit (NSAJIT_ERROR), or a library that cannot be loaded."""


class NsajitUsageError(NsajitError, ValueError):
    """An argument nsajit refuses (NSAJIT_USAGE); the message names it."""


class Problem(ctypes.Structure):
    _fields_ = [
        ("dtype", c_int),
        ("B", c_int64),
        ("T", c_int64),
        ("HQ", c_int),
        ("H", c_int),
        ("dk", c_int),
        ("dv", c_int),
        ("l", c_int),
        ("d", c_int),
        ("lsel", c_int),
        ("n", c_int),
        ("w", c_int),
        ("scale", c_double),
    ]


class Tensor(ctypes.Structure):
    _fields_ = [("data", c_void_p), ("stride_b", c_int64), ("stride_t", c_int64), ("stride_h", c_int64)]


def _tensor_fields(names):
    return [(n, Tensor) for n in names.split()]


class ForwardTensors(ctypes.Structure):
    _fields_ = (
        _tensor_fields("q k v k_slc v_slc k_win v_win k_cmp v_cmp")
        + [("g_cmp", c_void_p), ("g_slc", c_void_p), ("g_win", c_void_p)]
        + [("gate_stride_b", c_int64), ("gate_stride_t", c_int64)]
        + _tensor_fields("o o_cmp o_slc o_win")
        + [("lse_cmp", c_void_p), ("lse_slc", c_void_p), ("lse_win", c_void_p)]
        + [("lse_stride_b", c_int64), ("lse_stride_t", c_int64)]
        + [("idx", c_void_p), ("cnt", c_void_p)]
        + [("cu_seqlens", c_void_p), ("cu_seqlens_host", c_void_p), ("num_seqs", c_int64)]
        + [("workspace", c_void_p), ("workspace_bytes", c_size_t)]
        + [("gate_stride_h", c_int64), ("max_seqlen", c_int64)]
    )


class BackwardTensors(ctypes.Structure):
    _fields_ = (
        _tensor_fields("q k v k_slc v_slc k_win v_win k_cmp v_cmp")
        + [("g_cmp", c_void_p), ("g_slc", c_void_p), ("g_win", c_void_p)]
        + [("gate_stride_b", c_int64), ("gate_stride_t", c_int64), ("gate_stride_h", c_int64)]
        + _tensor_fields("o_cmp o_slc o_win")
        + [("lse_cmp", c_void_p), ("lse_slc", c_void_p), ("lse_win", c_void_p)]
        + [("lse_stride_b", c_int64), ("lse_stride_t", c_int64)]
        + [("idx", c_void_p), ("cnt", c_void_p)]
        + _tensor_fields("dout dq dk dv dk_slc dv_slc dk_win dv_win dk_cmp dv_cmp")
        + [("dg_cmp", c_void_p), ("dg_slc", c_void_p), ("dg_win", c_void_p)]
        + [("dg_stride_b", c_int64), ("dg_stride_t", c_int64)]
        + [("cu_seqlens", c_void_p), ("cu_seqlens_host", c_void_p), ("num_seqs", c_int64), ("max_seqlen", c_int64)]
        + [("workspace", c_void_p), ("workspace_bytes", c_size_t)]
    )


class DecodeTensors(ctypes.Structure):
    _fields_ = (
        _tensor_fields("q")
        + [("g_cmp", c_void_p), ("g_slc", c_void_p), ("g_win", c_void_p)]
        + [("gate_stride_b", c_int64), ("gate_stride_t", c_int64), ("gate_stride_h", c_int64)]
        + _tensor_fields("o")
        + [("k_pool", c_void_p), ("v_pool", c_void_p), ("num_pages", c_int64)]
        + [("k_pool_slc", c_void_p), ("v_pool_slc", c_void_p), ("num_pages_slc", c_int64)]
        + [("k_pool_win", c_void_p), ("v_pool_win", c_void_p), ("num_pages_win", c_int64)]
        + [("page_table", c_void_p), ("page_table_stride", c_int64), ("page_size", c_int64)]
        + [("page_table_host", c_void_p), ("seqlens", c_void_p), ("seqlens_host", c_void_p)]
        + _tensor_fields("k_cmp v_cmp")
        + [("max_cmp", c_int64), ("idx", c_void_p), ("cnt", c_void_p)]
        + [("workspace", c_void_p), ("workspace_bytes", c_size_t)]
    )


class DecodeAppendTensors(ctypes.Structure):
    _fields_ = (
        _tensor_fields("k_new v_new")
        + [("k_pool", c_void_p), ("v_pool", c_void_p), ("num_pages", c_int64)]
        + [("page_table", c_void_p), ("page_table_stride", c_int64), ("page_size", c_int64)]
        + [("page_table_host", c_void_p), ("seqlens", c_void_p), ("seqlens_host", c_void_p)]
        + _tensor_fields("k_cmp v_cmp")
        + [("max_cmp", c_int64)]
    )


# The structs whose layout is checked against the library's own (nsajit_struct_layout).
MIRRORS = {
    "nsajit_problem": Problem,
    "nsajit_tensor": Tensor,
    "nsajit_forward_tensors": ForwardTensors,
    "nsajit_backward_tensors": BackwardTensors,
    "nsajit_decode_tensors": DecodeTensors,
    "nsajit_decode_append_tensors": DecodeAppendTensors,
}

_SIGNATURES = {
    "nsajit_preset": (c_int, [c_char_p, POINTER(Problem)]),
    "nsajit_forward_workspace_size": (c_int, [POINTER(Problem), POINTER(c_size_t)]),
    "nsajit_forward": (c_int, [POINTER(Problem), POINTER(ForwardTensors), c_void_p]),
    "nsajit_backward_workspace_size": (c_int, [POINTER(Problem), POINTER(BackwardTensors), POINTER(c_size_t)]),
    "nsajit_backward": (c_int, [POINTER(Problem), POINTER(BackwardTensors), c_void_p]),
    "nsajit_decode": (c_int, [POINTER(Problem), c_int, POINTER(DecodeTensors), c_void_p]),
    "nsajit_decode_workspace_size": (c_int, [POINTER(Problem), c_int, POINTER(c_size_t)]),
    "nsajit_decode_append": (c_int, [POINTER(Problem), c_int, POINTER(DecodeAppendTensors), c_void_p]),
    "nsajit_varlen_cmp_rows": (c_int, [POINTER(Problem), c_int64, c_int64, POINTER(c_int64)]),
    "nsajit_version": (c_char_p, []),
    "nsajit_nvrtc_library": (c_char_p, []),
    "nsajit_abi_version": (c_int, []),
    "nsajit_struct_layout": (c_int64, [c_char_p, c_char_p]),
    "nsajit_last_error": (c_char_p, []),
}


def _candidates() -> list[str]:
    """Where libnsajit.so is looked for: $NSAJIT_LIBRARY alone when set, else next to this package."""
    forced = os.environ.get("NSAJIT_LIBRARY")
    if forced:
        return [forced]
    try:
        here = resources.files("nsajit") / "libnsajit.so"
        return [str(here)]
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - a package without resources
        return [os.path.join(os.path.dirname(os.path.abspath(__file__)), "libnsajit.so")]


def _nvrtc_loaded() -> bool:
    try:
        with open("/proc/self/maps") as f:
            return "libnvrtc.so" in f.read()
    except OSError:  # pragma: no cover - not Linux
        return False


def _point_at_wheel_nvrtc() -> None:
    """When no NVRTC is in the process yet (torch preloads its wheel's NVRTC on import, so this is rare) and none is
    named, name the one a PyTorch CUDA wheel ships, so that libnsajit.so finds it wherever it was loaded from."""
    if os.environ.get("NSAJIT_NVRTC") or _nvrtc_loaded():
        return
    for base in sys.path:
        for pattern in ("nvidia/cu13/lib/libnvrtc.so.13", "nvidia/cuda_nvrtc/lib/libnvrtc.so.1[0-9]*"):
            found = sorted(glob.glob(os.path.join(base, pattern)))
            if found:
                os.environ["NSAJIT_NVRTC"] = found[-1]
                return


_lock = threading.Lock()
_loaded: tuple[ctypes.CDLL, str] | None = None


def load() -> ctypes.CDLL:
    """The loaded library (loaded on first use); raises NsajitError saying where it looked."""
    global _loaded
    if _loaded is not None:
        return _loaded[0]
    with _lock:
        if _loaded is not None:
            return _loaded[0]
        tried = []
        lib = None
        path = ""
        for path in _candidates():
            if not os.path.exists(path):
                tried.append(f"{path}: no such file")
                continue
            try:
                lib = ctypes.CDLL(path, mode=os.RTLD_LOCAL | os.RTLD_NOW)
                break
            except OSError as e:
                tried.append(f"{path}: {e}")
        if lib is None:
            raise NsajitError(
                "libnsajit.so was not found: tried " + "; ".join(tried) + ". Build it with "
                "`cmake --build build --target nsajit_shared` and set NSAJIT_LIBRARY=build/libnsajit.so, or install "
                "the package with `pip install ./python`"
            )
        for name, (restype, argtypes) in _SIGNATURES.items():
            try:
                fn = getattr(lib, name)
            except AttributeError as e:
                raise NsajitError(f"{path} lacks {name}: it is older than this package (rebuild it)") from e
            fn.restype, fn.argtypes = restype, argtypes
        abi = lib.nsajit_abi_version()
        if abi != ABI_VERSION:
            raise NsajitError(
                f"{path} has ABI version {abi} but this package mirrors version {ABI_VERSION}: rebuild one of them"
            )
        for cname, mirror in MIRRORS.items():
            size = lib.nsajit_struct_layout(cname.encode(), None)
            if size != ctypes.sizeof(mirror):
                raise NsajitError(f"{cname} is {size} bytes in {path} but {ctypes.sizeof(mirror)} in the mirror")
        _point_at_wheel_nvrtc()
        _loaded = (lib, path)
        return lib


def path() -> str:
    """The file of the loaded library."""
    load()
    assert _loaded is not None
    return _loaded[1]


def check(status: int) -> None:
    """Raises the error of a call that did not return NSAJIT_OK, with nsajit_last_error()'s message."""
    if status == NSAJIT_OK:
        return
    message = (load().nsajit_last_error() or b"").decode(errors="replace")
    if status == NSAJIT_USAGE:
        raise NsajitUsageError(message)
    raise NsajitError(message)


def version() -> str:
    return load().nsajit_version().decode()


def nvrtc_library() -> str:
    """The NVRTC libnsajit.so compiles with (loading it if needed)."""
    lib = load()
    found = lib.nsajit_nvrtc_library()
    if found is None:
        check(NSAJIT_ERROR)
    return found.decode()


def preset(name: str) -> Problem:
    p = Problem()
    check(load().nsajit_preset(name.encode(), byref(p)))
    return p


def decode_workspace_size(p: Problem, Tq: int) -> int:
    n = c_size_t(0)
    check(load().nsajit_decode_workspace_size(byref(p), Tq, byref(n)))
    return n.value


def forward_workspace_size(p: Problem) -> int:
    n = c_size_t(0)
    check(load().nsajit_forward_workspace_size(byref(p), byref(n)))
    return n.value


def backward_workspace_size(p: Problem, t: BackwardTensors) -> int:
    n = c_size_t(0)
    check(load().nsajit_backward_workspace_size(byref(p), byref(t), byref(n)))
    return n.value


def varlen_cmp_rows(p: Problem, num_seqs: int, max_seqlen: int) -> int:
    rows = c_int64(0)
    check(load().nsajit_varlen_cmp_rows(byref(p), num_seqs, max_seqlen, byref(rows)))
    return rows.value
