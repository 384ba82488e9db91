"""The first call's host time in a fresh process: `import torch, nsajit`, tensors made, then the first
nsajit.nsa forward (tile configs looked up in the tuning database, kernels loaded from the CUBIN cache, or compiled
when the cache is cold), synchronized; then a second call for comparison. Run it twice to see a warm cache.

    NSAJIT_LIBRARY=build/libnsajit.so PYTHONPATH=python python3 bench/py_startup.py --preset fla --heads 32 --kv-heads 4
"""
import argparse
import time

import torch

import nsajit

PRESETS = {  # NSA.md's presets: dk, dv, l, d, l', n, w, HQ, H
    "fla": dict(dk=128, dv=128, l=64, d=64, lsel=64, n=16, w=512, heads=64, kv_heads=4),
    "paper": dict(dk=192, dv=128, l=32, d=16, lsel=64, n=16, w=512, heads=64, kv_heads=4),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=sorted(PRESETS), default="fla")
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--seq", type=int, default=8192)
    a = ap.parse_args()
    p = dict(PRESETS[a.preset])
    HQ, H = a.heads or p.pop("heads"), a.kv_heads or p.pop("kv_heads")
    p.pop("heads", None), p.pop("kv_heads", None)
    dk, dv = p.pop("dk"), p.pop("dv")
    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(1, a.seq, HQ, dk, device=dev, dtype=dt)
    k = torch.randn(1, a.seq, H, dk, device=dev, dtype=dt)
    v = torch.randn(1, a.seq, H, dv, device=dev, dtype=dt)
    g = [torch.rand(1, a.seq, HQ, device=dev, dtype=dt) for _ in range(3)]
    torch.cuda.synchronize()
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        with torch.no_grad():
            nsajit.nsa(q, k, v, *g, **p)
        torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t0))
    print(f"{a.preset} HQ={HQ} H={H} T={a.seq}: first call {times[0]:.1f} ms, second {times[1]:.1f} ms "
          f"(host + GPU, synchronized)")


if __name__ == "__main__":
    main()
