"""fla's Triton NSA decode beside `nsajit bench --pass decode`: `fla.ops.nsa.parallel.parallel_nsa` with the last
token of each sequence as the query (q [B, 1, HQ, D], k and v [B, T, H, D], TQ < TK: fla >= 0.6 treats q as the last
TQ tokens), the compressed and selected branches gated (window_size = 0: fla's window branch needs the flash_attn
package, absent here; the window is the smallest branch), bf16, median of 20 steps with the L2 flushed before each
(a 256 MB write), as nsajit's timing does. fla keeps no compressed cache: every call mean-pools the whole K and V.

    PYTHONPATH=/tmp/flasite python3 bench/fla_decode.py [--batch 64] [--seq 65536] [--heads 64] [--kv-heads 4]
"""
import argparse
import warnings

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=65536)
    ap.add_argument("--heads", type=int, default=64)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--topn", type=int, default=16)
    a = ap.parse_args()
    import fla
    from fla.ops.nsa.parallel import parallel_nsa

    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(1)
    q = torch.randn(a.batch, 1, a.heads, a.dim, device=dev, dtype=dt, generator=g)
    k = torch.randn(a.batch, a.seq, a.kv_heads, a.dim, device=dev, dtype=dt, generator=g)
    v = torch.randn(a.batch, a.seq, a.kv_heads, a.dim, device=dev, dtype=dt, generator=g)
    g_cmp, g_slc = (torch.rand(a.batch, 1, a.heads, device=dev, dtype=dt, generator=g) for _ in range(2))
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)

    def step():
        return parallel_nsa(q, k, v, g_cmp, g_slc, None, block_counts=a.topn, block_size=64, window_size=0)

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            step()
        times = []
        for _ in range(20):
            flush.fill_(1)
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            step()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
    times.sort()
    print(f"fla {fla.__version__} parallel_nsa decode (cmp + slc, no window), B={a.batch} T={a.seq} HQ={a.heads} "
          f"H={a.kv_heads} d={a.dim} n={a.topn}: median {times[10] * 1e3:.1f} us (p20 {times[4] * 1e3:.1f}, "
          f"p80 {times[16] * 1e3:.1f})")


if __name__ == "__main__":
    main()
