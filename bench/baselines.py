"""Baselines on the same GPU, same run: torch SDPA full causal attention and flex_attention with a sliding window
of w keys (what PERFORMANCE.md compares against). bf16, B = 1, HQ query heads over H KV heads.

Usage: python3 bench/baselines.py --seqs 8192,65536 [--dk 128 --dv 128 --heads 64 --kv-heads 4 --window 512]
Prints one line per (T, baseline) with the median milliseconds, and writes JSON with --json FILE.
"""
import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from triton.testing import do_bench


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", default="8192,16384,32768,65536")
    ap.add_argument("--dk", type=int, default=128)
    ap.add_argument("--dv", type=int, default=128)
    ap.add_argument("--heads", type=int, default=64)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    flex = torch.compile(flex_attention)
    for T in [int(s) for s in a.seqs.split(",")]:
        q = torch.randn(1, a.heads, T, a.dk, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, a.kv_heads, T, a.dk, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(1, a.kv_heads, T, a.dv, device="cuda", dtype=torch.bfloat16)
        sdpa = do_bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                        warmup=100, rep=500, return_mode="median")
        w = a.window

        def sliding(b, h, qi, ki):
            return (qi >= ki) & (qi - ki < w)

        mask = create_block_mask(sliding, None, None, T, T, device="cuda")
        win = do_bench(lambda: flex(q, k, v, block_mask=mask, enable_gqa=True), warmup=100, rep=500,
                       return_mode="median")
        for name, ms in (("torch SDPA full causal", sdpa), (f"torch flex_attention window {w}", win)):
            rows.append({"T": T, "baseline": name, "median_ms": ms})
            print(f"{T:>7}  {name:<34} {ms:8.3f} ms", flush=True)
        del q, k, v
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
