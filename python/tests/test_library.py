"""libnsajit.so through ctypes, on any machine: loading, the struct mirrors, errors, the NVRTC it finds, and what
importing the package does (and does not) do."""

import ctypes
import os
import random
import subprocess
import sys

import pytest
import torch

import nsajit
from nsajit import _bounds, _lib


def test_version_and_abi(lib):
    assert nsajit.library_version() == nsajit.__version__
    assert lib.nsajit_abi_version() == _lib.ABI_VERSION
    assert os.path.samefile(nsajit.library_path(), _lib._candidates()[0])


@pytest.mark.parametrize("cname", sorted(_lib.MIRRORS))
def test_struct_mirrors_match_the_header(lib, cname):
    mirror = _lib.MIRRORS[cname]
    assert lib.nsajit_struct_layout(cname.encode(), None) == ctypes.sizeof(mirror)
    for field, _ in mirror._fields_:
        offset = lib.nsajit_struct_layout(cname.encode(), field.encode())
        assert offset == getattr(mirror, field).offset, f"{cname}.{field}"
    # The C side knows no field the mirror lacks.
    assert lib.nsajit_struct_layout(cname.encode(), b"no_such_field") == -1


def test_errors_carry_the_message(lib):
    with pytest.raises(nsajit.NsajitUsageError, match="unknown preset 'nope'"):
        _lib.preset("nope")
    p = _lib.preset("fla")
    assert (p.HQ, p.H, p.dk, p.dv, p.l, p.d, p.lsel, p.n, p.w) == (64, 4, 128, 128, 64, 64, 64, 16, 512)
    assert _lib.forward_workspace_size(p) > p.T * p.HQ * 4
    p.H = 5
    with pytest.raises(nsajit.NsajitUsageError, match="not a multiple of H = 5"):
        _lib.forward_workspace_size(p)
    # A usage error is also a ValueError, and every nsajit error a RuntimeError.
    assert issubclass(nsajit.NsajitUsageError, ValueError)
    assert issubclass(nsajit.NsajitUsageError, RuntimeError)


def test_backward_workspace_size_and_refusals(lib):
    p = _lib.preset("fla")
    p.T, p.HQ, p.H = 256, 16, 4
    t = _lib.BackwardTensors()
    with pytest.raises(nsajit.NsajitUsageError, match="all three gates are null"):
        _lib.backward_workspace_size(p, t)
    t.g_cmp = t.g_slc = t.g_win = 0x1000
    full = _lib.backward_workspace_size(p, t)
    t.g_slc = None
    assert 0 < _lib.backward_workspace_size(p, t) < full
    with pytest.raises(nsajit.NsajitUsageError, match="tensors is a null pointer"):
        _lib.check(lib.nsajit_backward(ctypes.byref(p), None, None))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error; a GPU is present")
def test_a_valid_forward_without_a_gpu_says_so(lib):
    p = _lib.preset("fla")
    p.T, p.HQ, p.H = 256, 16, 4
    T = p.T

    def tensor(address, heads, dim):
        return _lib.Tensor(address, T * heads * dim, heads * dim, dim)

    t = _lib.ForwardTensors()
    t.q, t.k, t.v, t.o = tensor(0x100000, 16, 128), tensor(0x200000, 4, 128), tensor(0x300000, 4, 128), \
        tensor(0x400000, 16, 128)
    t.g_win = 0x800000
    t.gate_stride_b, t.gate_stride_t, t.gate_stride_h = T * 48, 48, 3
    with pytest.raises(nsajit.NsajitError, match="no NVIDIA driver found") as e:
        _lib.check(lib.nsajit_forward(ctypes.byref(p), ctypes.byref(t), None))
    assert not isinstance(e.value, nsajit.NsajitUsageError)
    t.gate_stride_h = -3
    with pytest.raises(nsajit.NsajitUsageError, match="gate_stride_h = -3 must be non-negative"):
        _lib.check(lib.nsajit_forward(ctypes.byref(p), ctypes.byref(t), None))


def test_varlen_cmp_rows_in_python_is_the_library_bound(lib):
    rng = random.Random(7)
    shapes = [(32, 16, 64), (64, 64, 64), (32, 32, 64), (64, 32, 64)]
    for trial in range(400):
        l, d, lsel = shapes[trial % 4]
        lens = [rng.choice([0, rng.randrange(1, 40), rng.randrange(1, 3000)]) for _ in range(rng.randrange(1, 30))]
        T = sum(lens)
        if T == 0:
            continue
        longest = max(lens) + rng.choice([0, 0, rng.randrange(1, 100)])
        p = _lib.preset("fla")
        p.T, p.HQ, p.H, p.l, p.d, p.lsel = T, 16, 4, l, d, lsel
        bound = _bounds.varlen_cmp_rows(T, len(lens), longest, l, d)
        assert bound == _lib.varlen_cmp_rows(p, len(lens), longest), (lens, longest, l, d)
        assert bound >= sum(_bounds.num_cmp_blocks(n, l, d) for n in lens)
    # One sequence: exact.
    assert _bounds.varlen_cmp_rows(1000, 1, 1000, 32, 16) == (1000 - 32) // 16 + 1
    assert _bounds.varlen_cmp_rows(1000, 3, 5000, 32, 16) == (1000 - 32) // 16 + 1


def test_nvrtc_is_found_and_named(lib):
    path = nsajit.nvrtc_library()
    assert "libnvrtc.so" in path and os.path.exists(path)
    # `import torch` loaded its wheel's NVRTC (PyPI's CUDA builds do), and libnsajit.so uses that one.
    loaded = [line.split()[-1] for line in open("/proc/self/maps") if "libnvrtc.so" in line]
    if any("site-packages/nvidia" in x for x in loaded):
        assert "site-packages/nvidia" in path, (path, loaded)


def _run(code, **env):
    """`code` in a fresh Python, importing the same nsajit and (if loaded here) the same libnsajit.so."""
    pkg_dir = os.path.dirname(os.path.dirname(os.path.abspath(nsajit.__file__)))
    full = dict(os.environ, PYTHONPATH=pkg_dir + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if _lib._loaded is not None:
        full["NSAJIT_LIBRARY"] = _lib.path()
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)


def test_nvrtc_can_be_named_and_a_missing_one_is_reported(lib):
    r = _run("import nsajit; nsajit.nvrtc_library()", NSAJIT_NVRTC="/nonexistent/libnvrtc.so.13")
    assert r.returncode != 0
    assert "NVRTC (libnvrtc.so.13) was not found" in r.stderr, r.stderr
    assert "/nonexistent/libnvrtc.so.13" in r.stderr


def test_import_neither_loads_the_library_nor_initializes_cuda():
    r = _run("import nsajit, torch, sys\n"
             "from nsajit import _lib\n"
             "assert _lib._loaded is None\n"
             "assert not torch.cuda.is_initialized()\n"
             "assert hasattr(torch.ops.nsajit, 'fwd') and hasattr(torch.ops.nsajit, 'bwd')\n"
             "print('ok')")
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_a_missing_library_is_a_clear_error():
    r = _run("import nsajit\nnsajit.library_path()", NSAJIT_LIBRARY="/nonexistent/libnsajit.so")
    assert r.returncode != 0
    assert "libnsajit.so was not found" in r.stderr and "/nonexistent/libnsajit.so" in r.stderr, r.stderr


def test_a_first_call_imports_no_sympy():
    # torch._check's first call imports torch.fx.experimental.symbolic_shapes and sympy (about 1.5 s of a fresh
    # process's first call); the op's argument checks use it only for symbolic conditions.
    r = _run("import sys, torch, nsajit\n"
             "q = torch.randn(1, 64, 4, 64); k = torch.randn(1, 64, 1, 64); v = torch.randn(1, 64, 1, 64)\n"
             "g = [torch.rand(1, 64, 4) for _ in range(3)]\n"
             "with torch.no_grad():\n"
             "    nsajit.nsa(q, k, v, *g, l=32, d=16, lsel=32, n=2, w=16)\n"
             "print('sympy' in sys.modules)\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False", "a first nsajit call imported sympy"
