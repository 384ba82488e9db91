"""Where the Python op's host time goes on a tiny problem (the per-call overhead of bench/py_overhead.py): the
C ABI's calls timed one by one (ctypes wrappers around libnsajit.so's functions), then cProfile's top entries for
forward + backward calls. Host time only; the GPU work of this problem is negligible.

    NSAJIT_LIBRARY=build/libnsajit.so PYTHONPATH=python python3 bench/py_profile.py [--calls 300]
"""
import argparse
import cProfile
import io
import pstats
import time
from collections import defaultdict

import torch

import nsajit
from nsajit import _lib


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    a = ap.parse_args()
    dev, dt = "cuda", torch.bfloat16
    B, T, HQ, H, D = 1, 256, 16, 1, 64
    cfg = dict(l=32, d=16, lsel=64, n=8, w=64)
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(B, T, h, D, device=dev, dtype=dt, generator=g).requires_grad_() for h in (HQ, H, H))
    gates = [torch.rand(B, T, HQ, device=dev, dtype=dt, generator=g).requires_grad_() for _ in range(3)]
    do = torch.randn(B, T, HQ, D, device=dev, dtype=dt, generator=g)

    def step():
        o = nsajit.nsa(q, k, v, *gates, **cfg)
        o.backward(do)

    for _ in range(20):
        step()
    torch.cuda.synchronize()

    # The C ABI's functions, each timed on the host.
    lib = _lib.load()
    spent, calls = defaultdict(float), defaultdict(int)
    originals = {}
    for name in ["nsajit_forward", "nsajit_backward", "nsajit_forward_workspace_size",
                 "nsajit_backward_workspace_size"]:
        fn = getattr(lib, name)
        originals[name] = fn

        def timed(*args, _fn=fn, _name=name):
            t0 = time.perf_counter()
            r = _fn(*args)
            spent[_name] += time.perf_counter() - t0
            calls[_name] += 1
            return r
        setattr(lib, name, timed)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.calls):
        step()
    total = time.perf_counter() - t0
    torch.cuda.synchronize()
    for name, fn in originals.items():
        setattr(lib, name, fn)
    print(f"forward + backward: {1e6 * total / a.calls:.1f} us per step on the host ({a.calls} steps)")
    for name in sorted(spent, key=spent.get, reverse=True):
        print(f"  {name}: {1e6 * spent[name] / a.calls:.1f} us per step ({calls[name] / a.calls:.0f} calls)")

    pr = cProfile.Profile()
    pr.enable()
    for _ in range(a.calls):
        step()
    torch.cuda.synchronize()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25)
    print(s.getvalue())


if __name__ == "__main__":
    main()
