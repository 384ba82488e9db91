"""A small end-to-end training run with nsajit's NSA layer on a task that needs long-range retrieval, next to the
same model with torch's SDPA full causal attention.

The task (multi-query associative recall over one fact token per key). Each sequence of T tokens is filler noise with
K = 16 "fact" tokens placed at random positions; a fact token encodes a (key, value) pair, K keys x V = 16 values.
The last Q positions hold query tokens, one key each; the target at a query position is the value that key's fact
carries (no loss elsewhere). Facts lie at least `w + Q` tokens before every query, so the sliding window never sees
them: the model must find them through the compressed and selected branches. Knowing the task without retrieving
gives ln(V) = 2.77 nats (a uniform guess over the values); a model that retrieves drives the loss towards 0.

Model: a factored input embedding (each token's own, plus a key embedding shared by a fact and the queries of its
key, plus a value embedding shared by the facts of that value: what an upstream encoder would give, so that the
work is the retrieval, not learning 256 unrelated fact tokens), `layers` x [LayerNorm, attention, residual, LayerNorm, MLP, residual], LayerNorm, a linear
head. Attention is nsajit.nn.NativeSparseAttention (mean-pool compressor) or the same projections around
F.scaled_dot_product_attention(is_causal=True). bf16 autocast over fp32 parameters, AdamW.

    python examples/train_retrieval.py                    # both models, prints loss, accuracy and ms per step
    python examples/train_retrieval.py --attn nsa --steps 1000 --seq 4096 --compressor mlp

At the default T = 1024 the 16 selected blocks (n = 16, l' = 64) are all of them, so the facts are reached through the
selected branch without the selection having to find them; on the H200 NSA then learns the task in 400 steps
(loss 2.905 -> 0.139). At T >= 2048 the selection must find the fact's block, and there the NSA model had not learned
within 1000 steps (while full attention learns at T = 4096 in under 400): see bench/RESULTS.md, an open question.

Needs a CUDA GPU and libnsajit.so (NSAJIT_LIBRARY, or the installed package). python/tests/test_train.py runs it as
a GPU test.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

KEYS, VALUES, FILLER = 16, 16, 64
FACT0, QUERY0, FILLER0 = 0, KEYS * VALUES, KEYS * VALUES + KEYS
VOCAB = FILLER0 + FILLER


def make_batch(batch: int, seq: int, queries: int, window: int, gen: torch.Generator, device):
    """tokens [B, T] int64 and targets [B, T] (-100 where there is no loss), drawn with `gen` on `device`."""
    span = seq - queries - window  # facts go in [0, span): outside every query's window
    if span < KEYS:
        raise ValueError(f"seq = {seq} leaves no room for {KEYS} facts before {queries} queries and window {window}")
    tokens = torch.randint(FILLER0, FILLER0 + FILLER, (batch, seq), generator=gen, device=device)
    values = torch.randint(0, VALUES, (batch, KEYS), generator=gen, device=device)
    pos = torch.rand(batch, span, generator=gen, device=device).argsort(dim=1)[:, :KEYS]
    keys = torch.arange(KEYS, device=device).expand(batch, KEYS)
    tokens.scatter_(1, pos, FACT0 + keys * VALUES + values)
    asked = torch.randint(0, KEYS, (batch, queries), generator=gen, device=device)
    tokens[:, seq - queries:] = QUERY0 + asked
    targets = torch.full_like(tokens, -100)
    targets[:, seq - queries:] = values.gather(1, asked)
    return tokens, targets


class SdpaAttention(nn.Module):
    """The NSA layer's projections (fused qkv, GQA) around full causal attention."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, dim, bias=False)

    def forward(self, x):
        B, T, _ = x.shape
        HQ, H, D = self.heads, self.kv_heads, self.head_dim
        q, k, v = self.qkv(x).split([HQ * D, H * D, H * D], dim=-1)
        q, k, v = (t.unflatten(-1, (-1, D)).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o_proj(o.transpose(1, 2).flatten(2))


class Block(nn.Module):
    def __init__(self, dim: int, attn: nn.Module):
        super().__init__()
        self.n1, self.attn = nn.LayerNorm(dim), attn
        self.n2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        return x + self.mlp(self.n2(x))


class Model(nn.Module):
    def __init__(self, attn: str, dim: int = 256, layers: int = 2, heads: int = 4, kv_heads: int = 1,
                 head_dim: int = 64, window: int = 128, topn: int = 16, compressor: str = "mean"):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.key_embed = nn.Embedding(KEYS + 1, dim)  # KEYS: no key
        self.value_embed = nn.Embedding(VALUES + 1, dim)  # VALUES: no value

        def attention():
            if attn == "sdpa":
                return SdpaAttention(dim, heads, kv_heads, head_dim)
            from nsajit.nn import NativeSparseAttention
            return NativeSparseAttention(dim, heads, kv_heads, head_dim, l=32, d=16, lsel=64, n=topn, w=window,
                                         compressor=compressor)

        self.blocks = nn.ModuleList(Block(dim, attention()) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VALUES)

    def forward(self, tokens):
        fact = tokens < QUERY0
        query = (tokens >= QUERY0) & (tokens < FILLER0)
        key = torch.where(fact, tokens // VALUES, torch.where(query, tokens - QUERY0, KEYS))
        value = torch.where(fact, tokens % VALUES, VALUES)
        x = self.embed(tokens) + self.key_embed(key) + self.value_embed(value)
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))


def train(attn: str, *, steps: int = 400, batch: int = 8, seq: int = 1024, queries: int = 64, window: int = 128,
          lr: float = 2e-3, seed: int = 0, device="cuda", log_every: int = 0, compressor: str = "mean"):
    """Trains one model; returns a dict: losses (per step), acc (query accuracy of the last 20 steps), ms_per_step
    (median wall time of a step after the first 10, synchronized), first/last (mean loss of the first/last 20)."""
    torch.manual_seed(seed)
    model = Model(attn, compressor=compressor).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    losses, accs, times = [], [], []
    for step in range(steps):
        tokens, targets = make_batch(batch, seq, queries, window, gen, device)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(tokens)
        mask = targets >= 0
        loss = F.cross_entropy(logits[mask].float(), targets[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
        accs.append((logits[mask].argmax(-1) == targets[mask]).float().mean().item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"  {attn} step {step:4d}  loss {losses[-1]:.3f}  acc {accs[-1]:.3f}", flush=True)
        if not math.isfinite(losses[-1]):
            raise RuntimeError(f"{attn}: the loss is {losses[-1]} at step {step}")
    steady = sorted(times[10:]) or times
    return {"losses": losses, "first": sum(losses[:20]) / len(losses[:20]), "last": sum(losses[-20:]) / 20,
            "acc": sum(accs[-20:]) / 20, "ms_per_step": 1e3 * steady[len(steady) // 2]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--attn", choices=["nsa", "sdpa", "both"], default="both")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compressor", choices=["mean", "mlp"], default="mean")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("train_retrieval: needs a CUDA GPU")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}; T = {a.seq}, B = {a.batch}, {a.steps} steps; "
          f"chance (no retrieval) = ln {VALUES} = {math.log(VALUES):.3f}", flush=True)
    for attn in (["nsa", "sdpa"] if a.attn == "both" else [a.attn]):
        t0 = time.perf_counter()
        r = train(attn, steps=a.steps, batch=a.batch, seq=a.seq, lr=a.lr, seed=a.seed, log_every=50,
                  compressor=a.compressor)
        print(f"{attn}: loss {r['first']:.3f} (first 20 steps) -> {r['last']:.3f} (last 20), query accuracy "
              f"{r['acc']:.3f}, {r['ms_per_step']:.2f} ms per step (median), {time.perf_counter() - t0:.1f} s in all",
              flush=True)


if __name__ == "__main__":
    main()
