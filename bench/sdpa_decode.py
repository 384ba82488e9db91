"""torch's SDPA decode beside `nsajit bench --pass decode`: one query token per sequence against a dense cache of T
tokens (B sequences, HQ query heads over H KV heads, enable_gqa), bf16, median of 20 timed steps with the L2 flushed
before each (a 256 MB write), as nsajit's timing does.

    python3 bench/sdpa_decode.py [--batch 64] [--seq 65536] [--heads 64] [--kv-heads 4] [--dim 128]
"""
import argparse

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=65536)
    ap.add_argument("--heads", type=int, default=64)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128)
    a = ap.parse_args()
    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(a.batch, a.heads, 1, a.dim, device=dev, dtype=dt)
    k = torch.randn(a.batch, a.kv_heads, a.seq, a.dim, device=dev, dtype=dt)
    v = torch.randn(a.batch, a.kv_heads, a.seq, a.dim, device=dev, dtype=dt)
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    for _ in range(3):
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    times = []
    for _ in range(20):
        flush.fill_(1)
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    ms = times[len(times) // 2]
    gb = 2 * k.numel() * 2 / 1e9
    print(f"torch SDPA decode B={a.batch} T={a.seq} HQ={a.heads} H={a.kv_heads} d={a.dim}: median {ms * 1e3:.1f} us, "
          f"{gb:.2f} GB of K/V -> {gb / ms * 1e3:.0f} GB/s")


if __name__ == "__main__":
    main()
