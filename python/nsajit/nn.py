"""nn.Modules: the NSA attention layer and the paper's learned block compressor."""

from __future__ import annotations

import torch
from torch import nn

from ._bounds import num_cmp_blocks, varlen_cmp_rows
from .functional import nsa


def _max_seqlen(cu_seqlens: torch.Tensor, max_seqlen: int | None) -> int:
    if max_seqlen is not None:
        return int(max_seqlen)
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max())  # a host sync: pass max_seqlen to avoid it


class BlockCompressor(nn.Module):
    """The paper's compressor phi (NSA, arXiv 2502.11089, Eq. 7): an MLP over the l tokens of each block (stride d),
    with a learned intra-block position encoding added first. [B, T, H, dim] -> [B, Nc, H, dim], Nc = max(0,
    (T - l) // d + 1), shared by all heads. For varlen (B = 1, cu_seqlens) the output holds each sequence's blocks one
    after another, padded with zero rows to varlen_cmp_rows(T, N, max_seqlen, l, d) rows: the layout nsajit.nsa
    takes for k_cmp / v_cmp. Gradients flow to the MLP, the position encoding and x."""

    def __init__(self, l: int, d: int, dim: int, hidden: int | None = None, *, device=None, dtype=None):
        super().__init__()
        if l % d != 0:
            raise ValueError(f"BlockCompressor: d = {d} must divide l = {l}")
        self.l, self.d, self.dim = l, d, dim
        hidden = hidden or 2 * dim
        self.pos = nn.Parameter(torch.zeros(l, dim, device=device, dtype=dtype))
        self.mlp = nn.Sequential(nn.Linear(l * dim, hidden, device=device, dtype=dtype), nn.GELU(),
                                 nn.Linear(hidden, dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                max_seqlen: int | None = None) -> torch.Tensor:
        B, T, H, D = x.shape
        if cu_seqlens is None:
            nc = num_cmp_blocks(T, self.l, self.d)
            if nc == 0:
                return x.new_zeros(B, 0, H, D)
            blocks = x.unfold(1, self.l, self.d).transpose(-1, -2)  # [B, Nc, H, l, D]
            return self.mlp((blocks + self.pos).flatten(-2))
        # Varlen: row r of the output is block (r - first row of its sequence) of the sequence it falls in.
        num_seqs = cu_seqlens.shape[0] - 1
        rows = varlen_cmp_rows(T, num_seqs, _max_seqlen(cu_seqlens, max_seqlen), self.l, self.d)
        if rows == 0:
            return x.new_zeros(1, 0, H, D)
        cu = cu_seqlens.to(torch.int64)
        lens = cu[1:] - cu[:-1]
        nc = torch.where(lens >= self.l, torch.div(lens - self.l, self.d, rounding_mode="floor") + 1,
                         torch.zeros_like(lens))
        ends = torch.cumsum(nc, 0)
        r = torch.arange(rows, device=x.device)
        seq = torch.searchsorted(ends, r, right=True)
        valid = seq < num_seqs
        seq = seq.clamp(max=num_seqs - 1)
        block = r - (ends[seq] - nc[seq])
        first = cu[seq] + block * self.d  # the block's first token
        tok = (first[:, None] + torch.arange(self.l, device=x.device)[None, :]).clamp(0, T - 1)
        tok = torch.where(valid[:, None], tok, torch.zeros_like(tok))
        blocks = x[0][tok].transpose(1, 2)  # [rows, l, H, D] -> [rows, H, l, D]
        y = self.mlp((blocks + self.pos).flatten(-2))  # [rows, H, D]
        return torch.where(valid[:, None, None], y, torch.zeros_like(y)).unsqueeze(0)


def _rotary(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding (rotate-half form) of x [B, T, heads, D] at positions pos [B or 1, T]."""
    D = x.shape[-1]
    ct = torch.promote_types(x.dtype, torch.float32)  # at least fp32
    inv = 1.0 / (theta ** (torch.arange(0, D, 2, device=x.device, dtype=ct) / D))
    ang = pos.to(ct)[..., None] * inv  # [B, T, D / 2]
    cos, sin = ang.cos()[:, :, None, :], ang.sin()[:, :, None, :]
    x1, x2 = x.to(ct).chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


class NativeSparseAttention(nn.Module):
    """An NSA attention layer: x [B, T, hidden] -> [B, T, hidden] (varlen: x [1, T, hidden] with cu_seqlens).

    One fused projection gives q [HQ heads, head_dim], k [H heads, head_dim] and v [H heads, head_dim_v] (GQA with
    H = num_kv_heads); they reach the kernels as views of it, without copies. A second projection gives the three
    gates per query head, through a sigmoid, viewed as three [B, T, HQ] gates with head stride 3. The compressed keys
    and values come from the built-in mean pool (compressor="mean") or the paper's learned BlockCompressor
    (compressor="mlp", separate ones for k and v), whose gradients flow back through nsa's k_cmp / v_cmp. With
    rope_theta, q and k get rotary position embeddings (positions restart at every sequence in varlen).
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int | None = None,
                 head_dim: int | None = None, head_dim_v: int | None = None, *, l: int = 32, d: int = 16,
                 lsel: int = 64, n: int = 16, w: int = 512, compressor: str = "mean",
                 compressor_hidden: int | None = None, qkv_bias: bool = False, rope_theta: float | None = None,
                 scale: float | None = None, device=None, dtype=None):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if num_heads % num_kv_heads != 0:
            raise ValueError(f"num_heads = {num_heads} must be a multiple of num_kv_heads = {num_kv_heads}")
        head_dim = head_dim or hidden_size // num_heads
        head_dim_v = head_dim_v or head_dim
        if compressor not in ("mean", "mlp"):
            raise ValueError(f"compressor must be 'mean' or 'mlp', not {compressor!r}")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim, self.head_dim_v = head_dim, head_dim_v
        self.l, self.d, self.lsel, self.n, self.w = l, d, lsel, n, w
        self.scale, self.rope_theta = scale, rope_theta
        kw = {"device": device, "dtype": dtype}
        self.qkv = nn.Linear(hidden_size, num_heads * head_dim + num_kv_heads * (head_dim + head_dim_v),
                             bias=qkv_bias, **kw)
        self.gate = nn.Linear(hidden_size, num_heads * 3, **kw)
        self.o_proj = nn.Linear(num_heads * head_dim_v, hidden_size, bias=False, **kw)
        self.compressor = compressor
        if compressor == "mlp":
            self.k_compress = BlockCompressor(l, d, head_dim, compressor_hidden, **kw)
            self.v_compress = BlockCompressor(l, d, head_dim_v, compressor_hidden, **kw)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                max_seqlen: int | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        HQ, H, dk, dv = self.num_heads, self.num_kv_heads, self.head_dim, self.head_dim_v
        if cu_seqlens is not None:
            max_seqlen = _max_seqlen(cu_seqlens, max_seqlen)
        qkv = self.qkv(x)
        q = qkv[..., : HQ * dk].unflatten(-1, (HQ, dk))
        k = qkv[..., HQ * dk: (HQ + H) * dk].unflatten(-1, (H, dk))
        v = qkv[..., (HQ + H) * dk:].unflatten(-1, (H, dv))
        if self.rope_theta is not None:
            if cu_seqlens is None:
                pos = torch.arange(T, device=x.device)[None, :]
            else:
                t = torch.arange(T, device=x.device)
                seq = torch.searchsorted(cu_seqlens[1:].to(torch.int64), t, right=True)
                pos = (t - cu_seqlens.to(torch.int64)[seq])[None, :]
            q, k = _rotary(q, pos, self.rope_theta), _rotary(k, pos, self.rope_theta)
        g = torch.sigmoid(self.gate(x)).unflatten(-1, (HQ, 3))
        g_cmp, g_slc, g_win = g.unbind(-1)
        k_cmp = v_cmp = None
        if self.compressor == "mlp":
            k_cmp = self.k_compress(k, cu_seqlens, max_seqlen)
            v_cmp = self.v_compress(v, cu_seqlens, max_seqlen)
        o = nsa(q, k, v, g_cmp, g_slc, g_win if self.w > 0 else None, l=self.l, d=self.d, lsel=self.lsel, n=self.n,
                w=self.w, scale=self.scale, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, k_cmp=k_cmp, v_cmp=v_cmp)
        return self.o_proj(o.flatten(-2))
