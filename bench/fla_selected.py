"""fla's Triton selected-block attention on nsajit's own selection (issue 12's comparison): for each input kind,
nsajit's forward (through the Python package) produces o_slc, idx and cnt; fla's ParallelNSAFunction then runs on
the same q, k, v with those block indices and counts. Prints the selection's overlap (neighbour Jaccard, distinct
blocks per 64 positions), fla's selected branch time, nsajit's whole-forward time on the same tensors, and the
relative difference between fla's and nsajit's o_slc (the same indices give the same output up to rounding).

Inputs as `nsajit bench --inputs` (tuner/inputs.cpp, same recipe, torch's RNG): coherent = the queries of each
l'-token span share a base vector, plus 0.25 x noise; random = every element N(0, 1); k, v N(0, 1) for both.
Config fla (dk = dv = 128, l = d = l' = 64, n = 16, w = 512), bf16, B = 1, HQ = 64, H = 4.

    NSAJIT_LIBRARY=dev/libnsajit.so PYTHONPATH=python:/tmp/site python3 bench/fla_selected.py --seq 65536
"""
import argparse
import warnings

import torch
from triton.testing import do_bench

import nsajit  # noqa: F401  (registers torch.ops.nsajit)


def overlap(idx, cnt, nblocks):
    """(mean Jaccard of neighbouring positions' sets, mean distinct blocks per 64 positions), over t, h."""
    T, H, n = idx.shape
    sets = torch.zeros(T, H, nblocks + 1, dtype=torch.bool, device=idx.device)
    valid = torch.arange(n, device=idx.device)[None, None, :] < cnt[..., None]
    sets.scatter_(2, torch.where(valid, idx, nblocks).long(), True)
    sets = sets[..., :nblocks]
    inter = (sets[1:] & sets[:-1]).sum(-1).float()
    union = (sets[1:] | sets[:-1]).sum(-1).float()
    jac = (inter / union.clamp(min=1)).mean().item()
    spans = T // 64
    distinct = sets[: spans * 64].view(spans, 64, H, nblocks).any(1).sum(-1).float().mean().item()
    return jac, distinct


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=65536)
    ap.add_argument("--inputs", default="coherent,random")
    a = ap.parse_args()
    from fla.ops.nsa.parallel import ParallelNSAFunction
    import fla

    dev, dt = "cuda", torch.bfloat16
    B, T, HQ, H, D = 1, a.seq, 64, 4, 128
    cfg = dict(l=64, d=64, lsel=64, n=16, w=512)
    scale = D ** -0.5
    print(f"fla {fla.__version__}, torch {torch.__version__}, libnsajit {nsajit.library_version()}, "
          f"{torch.cuda.get_device_name()}; bf16 B={B} T={T} HQ={HQ} H={H} dk=dv={D} {cfg}", flush=True)
    print(f"{'inputs':9} {'Jaccard':>8} {'distinct/64':>12} {'fla slc ms':>11} {'nsajit fwd ms':>14} "
          f"{'o_slc rel diff':>15}")
    for kind in a.inputs.split(","):
        g = torch.Generator(device=dev).manual_seed(1)
        if kind == "coherent":
            spans = (T + cfg["lsel"] - 1) // cfg["lsel"]
            base = torch.randn(B, spans, HQ, D, device=dev, generator=g).repeat_interleave(cfg["lsel"], dim=1)[:, :T]
            q = (base + 0.25 * torch.randn(B, T, HQ, D, device=dev, generator=g)).to(dt)
        elif kind == "random":
            q = torch.randn(B, T, HQ, D, device=dev, generator=g).to(dt)
        else:
            raise SystemExit(f"fla_selected: bad input kind {kind!r}: expected coherent or random")
        k = torch.randn(B, T, H, D, device=dev, generator=g).to(dt)
        v = torch.randn(B, T, H, D, device=dev, generator=g).to(dt)
        gates = [torch.sigmoid(torch.randn(B, T, HQ, device=dev, generator=g)).to(dt) for _ in range(3)]
        args = (q, k, v, *gates, None, None, None, 0, cfg["l"], cfg["d"], cfg["lsel"], cfg["n"], cfg["w"], scale)
        with torch.no_grad():
            outs = torch.ops.nsajit.fwd(*args)
        o_slc, idx, cnt = outs[2], outs[7], outs[8]
        jac, distinct = overlap(idx[0], cnt[0], (T + 63) // 64)
        ours = do_bench(lambda: torch.ops.nsajit.fwd_infer(*args), warmup=5, rep=50)
        block_indices = idx.clamp(min=0).long()
        block_counts = cnt.long()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            o_fla = ParallelNSAFunction.apply(q, k, v, block_indices, block_counts, 64, scale, None)
            ms = do_bench(lambda: ParallelNSAFunction.apply(q, k, v, block_indices, block_counts, 64, scale, None),
                          warmup=5, rep=50)
        diff = ((o_fla.float() - o_slc.float()).norm() / o_slc.float().norm()).item()
        print(f"{kind:9} {jac:8.3f} {distinct:12.1f} {ms:11.2f} {ours:14.2f} {diff:15.2e}", flush=True)


if __name__ == "__main__":
    main()
