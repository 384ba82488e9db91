"""fla's Triton NSA (compressed + top-n + selected branches) plus torch flex_attention's sliding window: the
fwd and fwd+bwd baseline of PERFORMANCE.md, measured in the same device call as nsajit's bench.

Config fla (dk = dv = 128, block 64, n = 16, w = 512), bf16, B = 1, HQ = 64 over H = 4 (fla needs G >= 16, a power
of two). fla at the version of the wheel carried in .whl (printed). Gates are sigmoids of random logits.

Usage: python3 bench/fla_baseline.py --seqs 16384,65536 [--json FILE]
"""
import argparse
import json

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from triton.testing import do_bench


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", default="16384,65536")
    ap.add_argument("--heads", type=int, default=64)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--topn", type=int, default=16)
    ap.add_argument("--json")
    a = ap.parse_args()
    import fla
    from fla.ops.nsa import parallel_nsa

    print(f"fla {getattr(fla, '__version__', '?')}, torch {torch.__version__}", flush=True)
    flex = torch.compile(flex_attention)
    rows = []
    for T in [int(s) for s in a.seqs.split(",")]:
        dev, dt = "cuda", torch.bfloat16
        q = torch.randn(1, T, a.heads, a.dim, device=dev, dtype=dt, requires_grad=True)
        k = torch.randn(1, T, a.kv_heads, a.dim, device=dev, dtype=dt, requires_grad=True)
        v = torch.randn(1, T, a.kv_heads, a.dim, device=dev, dtype=dt, requires_grad=True)
        g = torch.sigmoid(torch.randn(1, T, a.heads, 3, device=dev, dtype=dt)).requires_grad_(True)
        do = torch.randn(1, T, a.heads, a.dim, device=dev, dtype=dt)

        def nsa():
            return parallel_nsa(q, k, v, g[..., 0], g[..., 1], None, block_counts=a.topn, block_size=64,
                                window_size=0)

        w = a.window

        def sliding(b, h, qi, ki):
            return (qi >= ki) & (qi - ki < w)

        mask = create_block_mask(sliding, None, None, T, T, device=dev)
        qt, kt, vt = (x.transpose(1, 2).detach().requires_grad_(True) for x in (q, k, v))
        dot = do.transpose(1, 2).contiguous()

        def win():
            return flex(qt, kt, vt, block_mask=mask, enable_gqa=True)

        def step(fn, grad):
            def run():
                o = fn()
                o.backward(grad)
            return run

        with torch.no_grad():
            f_nsa = do_bench(nsa, warmup=50, rep=300, return_mode="median")
            f_win = do_bench(win, warmup=50, rep=300, return_mode="median")
        b_nsa = do_bench(step(nsa, do), warmup=50, rep=300, return_mode="median", grad_to_none=[q, k, v, g])
        b_win = do_bench(step(win, dot), warmup=50, rep=300, return_mode="median", grad_to_none=[qt, kt, vt])
        for name, ms in (("fla NSA (cmp + top-n + slc) fwd", f_nsa), ("fla NSA fwd+bwd", b_nsa),
                         (f"flex window {w} fwd", f_win), (f"flex window {w} fwd+bwd", b_win),
                         ("fla + flex fwd", f_nsa + f_win), ("fla + flex fwd+bwd", b_nsa + b_win),
                         ("fla + flex bwd (fwd+bwd - fwd)", b_nsa + b_win - f_nsa - f_win)):
            rows.append({"T": T, "baseline": name, "median_ms": ms})
            print(f"{T:>7}  {name:<34} {ms:9.3f} ms", flush=True)
        del q, k, v, g, do, qt, kt, vt, dot
        torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
