"""End-to-end training with the NSA layer (examples/train_retrieval.py) on the GPU: the loss must fall well below
what a model that cannot retrieve reaches (ln 16 = 2.77 nats: a uniform guess over the values; after 400 steps it
must be under 0.75 of that), so the forward and every gradient that retrieval depends on (through the compressed
and selected branches; the facts are outside the window) have to be right. Not a timing test: the wall time beside
SDPA is logged by running the example itself.
"""
import importlib.util
import math
import os

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(os.environ.get("NSAJIT_TEST_DEVICE", "cuda") != "cuda",
                                                  reason="trains on the CUDA kernels")]

_EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "train_retrieval.py")


def _example():
    spec = importlib.util.spec_from_file_location("train_retrieval", _EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_facts_lie_outside_every_querys_window():
    ex = _example()
    gen = torch.Generator(device="cuda").manual_seed(3)
    tokens, targets = ex.make_batch(4, 1024, 32, 128, gen, "cuda")
    facts = (tokens < ex.QUERY0).nonzero()
    assert facts.shape[0] == 4 * ex.KEYS
    assert int(facts[:, 1].max()) < 1024 - 32 - 128
    asked = tokens[:, -32:] - ex.QUERY0
    fact_tok = tokens.gather(1, (tokens < ex.QUERY0).long().argsort(dim=1, descending=True)[:, :ex.KEYS])
    by_key = torch.full((4, ex.KEYS), -1, device="cuda", dtype=torch.long)
    by_key.scatter_(1, fact_tok // ex.VALUES, fact_tok % ex.VALUES)
    assert torch.equal(targets[:, -32:], by_key.gather(1, asked))
    assert bool((targets[:, :-32] == -100).all())


def test_nsa_model_learns_long_range_retrieval():
    ex = _example()
    # T = 1024: n = 16 selects every block (see the example's docstring on T >= 2048).
    r = ex.train("nsa", steps=400, batch=8, seq=1024, log_every=50)
    print(f"nsa: loss {r['first']:.3f} -> {r['last']:.3f}, accuracy {r['acc']:.3f}, {r['ms_per_step']:.2f} ms/step")
    assert r["first"] > 0.9 * math.log(ex.VALUES)  # starts at chance
    # Below ln 16 only with information about the value, which only the (far) fact carries: retrieval.
    assert r["last"] < 0.75 * math.log(ex.VALUES), f"the loss did not fall: {r['first']:.3f} -> {r['last']:.3f}"
    assert r["acc"] > 0.3  # chance: 1/16
