"""nsajit for PyTorch: Native Sparse Attention (DeepSeek, arXiv 2502.11089) on nsajit's run-time generated, tuned
CUDA kernels, as torch operators with autograd, torch.compile and CUDA-graph support.

    import nsajit
    o = nsajit.nsa(q, k, v, g_cmp, g_slc, g_win, l=32, d=16, lsel=64, n=16, w=512)
    layer = nsajit.NativeSparseAttention(hidden_size=2048, num_heads=64, num_kv_heads=4, head_dim=128)

Importing nsajit neither loads libnsajit.so nor initializes CUDA: the library is loaded by the first CUDA call (from
$NSAJIT_LIBRARY, else next to this package), and compiles each kernel with NVRTC on first use (the one PyTorch's CUDA
wheel ships; no CUDA toolkit is needed), caching the CUBIN on disk ($NSAJIT_CACHE_DIR, else ~/.cache/nsajit).
"""

import torch  # noqa: F401  (first: its CUDA wheels load the NVRTC that libnsajit.so then uses)

from . import ops  # noqa: F401  (registers torch.ops.nsajit.fwd / fwd_infer / bwd)
from . import decode as _decode_ops  # noqa: F401  (registers torch.ops.nsajit.decode / decode_append)
from ._bounds import num_cmp_blocks, varlen_cmp_rows
from ._lib import NsajitError, NsajitUsageError
from .decode import completed_cmp_entries, decode, decode_append
from .functional import nsa
from .nn import BlockCompressor, NativeSparseAttention

__version__ = "0.1.0"

__all__ = [
    "BlockCompressor",
    "NativeSparseAttention",
    "NsajitError",
    "NsajitUsageError",
    "completed_cmp_entries",
    "decode",
    "decode_append",
    "library_path",
    "library_version",
    "nsa",
    "nvrtc_library",
    "num_cmp_blocks",
    "varlen_cmp_rows",
]


def library_path() -> str:
    """The libnsajit.so in use (loading it if needed)."""
    from . import _lib

    return _lib.path()


def nvrtc_library() -> str:
    """The NVRTC library the kernels are compiled with (with PyTorch's CUDA wheels, theirs)."""
    from . import _lib

    return _lib.nvrtc_library()


def library_version() -> str:
    """nsajit_version() of the loaded libnsajit.so."""
    from . import _lib

    return _lib.version()
