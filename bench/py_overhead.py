"""The Python op's per-call overhead: host microseconds per call on a problem so small that the GPU work is
negligible, so the launch path (Python wrapper, torch.library dispatch, ctypes, the C ABI's checks and kernel
lookup, the driver's launches) is what is timed. Beside it, torch's own calls on the same tensors.

Each line: calls issued back to back (no synchronization inside the loop), host time / calls; then the same with a
synchronization after each call (host + GPU latency of one call). Kernels are compiled and loaded before timing.

    NSAJIT_LIBRARY=build/libnsajit.so PYTHONPATH=python python3 bench/py_overhead.py [--calls 2000] [--json F]
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

import nsajit


def per_call_us(fn, calls, sync_each):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
        if sync_each:
            torch.cuda.synchronize()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return 1e6 * (t1 - t0) / calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--json")
    a = ap.parse_args()
    dev, dt = "cuda", torch.bfloat16
    B, T, HQ, H, D = 1, a.seq, 16, 1, 64
    cfg = dict(l=32, d=16, lsel=64, n=8, w=64)
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, T, HQ, D, device=dev, dtype=dt, generator=g)
    k = torch.randn(B, T, H, D, device=dev, dtype=dt, generator=g)
    v = torch.randn(B, T, H, D, device=dev, dtype=dt, generator=g)
    gates = [torch.rand(B, T, HQ, device=dev, dtype=dt, generator=g) for _ in range(3)]
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    gg = [t.clone().requires_grad_() for t in gates]
    do = torch.randn(B, T, HQ, D, device=dev, dtype=dt, generator=g)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    qtg, ktg, vtg = (t.transpose(1, 2).detach().requires_grad_() for t in (q, k, v))
    dot = do.transpose(1, 2)

    def nsa_fwd():
        with torch.no_grad():
            return nsajit.nsa(q, k, v, *gates, **cfg)

    def nsa_fwd_bwd():
        o = nsajit.nsa(qg, kg, vg, *gg, **cfg)
        o.backward(do)

    def sdpa_fwd():
        with torch.no_grad():
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)

    def sdpa_fwd_bwd():
        o = F.scaled_dot_product_attention(qtg, ktg, vtg, is_causal=True, enable_gqa=True)
        o.backward(dot)

    def add():
        return q + q

    graph = torch.cuda.CUDAGraph()
    nsa_fwd()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        nsa_fwd()

    rows = []
    print(f"torch {torch.__version__}, libnsajit {nsajit.library_version()}, {torch.cuda.get_device_name()}; "
          f"bf16 B={B} T={T} HQ={HQ} H={H} dk=dv={D} {cfg}; {a.calls} calls each", flush=True)
    print(f"{'call':44} {'host us/call':>13} {'synced us/call':>15}")
    for name, fn in [("nsajit.nsa forward (no grad)", nsa_fwd), ("nsajit.nsa forward + backward", nsa_fwd_bwd),
                     ("CUDA graph replay of nsajit.nsa forward", graph.replay),
                     ("torch SDPA forward (no grad)", sdpa_fwd), ("torch SDPA forward + backward", sdpa_fwd_bwd),
                     ("torch q + q (one elementwise kernel)", add)]:
        calls = a.calls if "backward" not in name else a.calls // 4
        host = per_call_us(fn, calls, False)
        synced = per_call_us(fn, calls, True)
        rows.append({"call": name, "host_us": host, "synced_us": synced})
        print(f"{name:44} {host:13.1f} {synced:15.1f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
