"""Shared set-up of the nsajit package tests.

CPU tests run anywhere with PyPI's torch (the CPU kernels are the float64 reference); the ones that need libnsajit.so
use $NSAJIT_LIBRARY (or the library installed next to the package). GPU tests (marker `gpu`) need CUDA and run on the
H200 (scripts/python_gpu_check.sh). NSAJIT_TEST_PLANT=fwd|bwd plants a fault in every CUDA forward (one output row
zeroed) or backward (one dq and one dk row zeroed), so that the script can show that the numeric GPU tests
(markers `fwd_numeric`, `bwd_numeric`) fail when nsajit is wrong.
"""

import os
import sys

import pytest

try:
    import nsajit  # noqa: F401
except ImportError:  # the source tree, not installed
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import nsajit  # noqa: F401

import torch

from nsajit import _lib, ops


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (and libnsajit.so)")
    config.addinivalue_line("markers", "fwd_numeric: compares nsajit's forward with the reference (fails under "
                                       "NSAJIT_TEST_PLANT=fwd)")
    config.addinivalue_line("markers", "bwd_numeric: compares nsajit's gradients with the reference (fails under "
                                       "NSAJIT_TEST_PLANT=bwd)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() or os.environ.get("NSAJIT_TEST_DEVICE") == "cpu":
        return
    skip = pytest.mark.skip(reason="no CUDA GPU here: GPU tests run on the H200 (scripts/python_gpu_check.sh)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _plant(kind):
    def hook(op, outs):
        if op == "fwd" and kind == "fwd":
            o = outs[0]
            o[..., -1, 0, :] = 0  # the last token's first head
        if op == "bwd" and kind == "bwd":
            dq, dk = outs[0], outs[1]
            dq[..., -1, 0, :] = 0
            dk[..., 0, 0, :] = 0
    return hook


_kind = os.environ.get("NSAJIT_TEST_PLANT")
if _kind:
    if _kind not in ("fwd", "bwd"):
        raise ValueError(f"NSAJIT_TEST_PLANT={_kind}: use fwd or bwd")
    ops._test_hook = _plant(_kind)


@pytest.fixture(scope="session")
def lib():
    """libnsajit.so, loaded. Skips when none is configured (no NSAJIT_LIBRARY and no library next to the package);
    fails when the configured one does not load."""
    candidates = _lib._candidates()
    if not os.environ.get("NSAJIT_LIBRARY") and not any(os.path.exists(c) for c in candidates):
        pytest.skip("no libnsajit.so: set NSAJIT_LIBRARY=build/libnsajit.so (cmake --build build --target "
                    "nsajit_shared)")
    return _lib.load()
