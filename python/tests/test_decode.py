"""nsajit.decode / nsajit.decode_append: the ops on the CPU against the prefill reference, their fake (meta) paths,
opcheck and refusals (anywhere); on the GPU (marker gpu) the CUDA kernels against the CPU path on the same cache,
CUDA-graph capture of append + decode replayed as the sequences grow, and torch.compile(fullgraph=True) of a step."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import nsajit
from nsajit import reference

L, D, LSEL, N, W = 32, 16, 32, 4, 40


def make_cache(B, H, dk, dv, lens, P=32, max_pages=8, device="cpu", dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    num_pages = B * max_pages + 2
    table = torch.randperm(num_pages, generator=g)[:B * max_pages].to(torch.int32).reshape(B, max_pages)
    kp = torch.zeros(num_pages, P, H, dk, dtype=dtype)
    vp = torch.zeros(num_pages, P, H, dv, dtype=dtype)
    max_cmp = nsajit.num_cmp_blocks(max_pages * P, L, D)
    kc = torch.zeros(B, max_cmp, H, dk, dtype=dtype)
    vc = torch.zeros(B, max_cmp, H, dv, dtype=dtype)
    ks = [torch.randn(n, H, dk, generator=g).to(dtype) for n in lens]
    vs = [torch.randn(n, H, dv, generator=g).to(dtype) for n in lens]
    to = dict(device=device)
    c = dict(kp=kp.to(**to), vp=vp.to(**to), table=table.to(**to), kc=kc.to(**to), vc=vc.to(**to))
    for b, n in enumerate(lens):  # appended 10 tokens at a time
        for s0 in range(0, n, 10):
            s1 = min(n, s0 + 10)
            nsajit.decode_append(ks[b][None, s0:s1].to(**to), vs[b][None, s0:s1].to(**to), c["kp"], c["vp"],
                                 c["table"][b:b + 1], torch.tensor([s0], dtype=torch.int32, device=device),
                                 c["kc"][b:b + 1], c["vc"][b:b + 1], l=L, d=D)
    c.update(ks=ks, vs=vs, lens=torch.tensor(lens, dtype=torch.int32, device=device))
    return c


def prefill_inputs(q, g, b, n, Tq):
    """Sequence b's queries and gates as a prefill of n tokens: the last Tq rows are the decode step's, the rest zero."""
    HQ, dk = q.shape[2], q.shape[3]
    qf = torch.zeros(1, n, HQ, dk, dtype=torch.float64)
    qf[0, n - Tq:] = q[b].double().cpu()
    gf = torch.zeros(1, n, HQ, dtype=torch.float64)
    gf[0, n - Tq:] = g[b].double().cpu()
    return qf, gf


def prefill_rows(q, g, ks, vs, lens, Tq):
    """Row t of the prefill reference for the last Tq tokens of each sequence: o, idx."""
    out = []
    for b, n in enumerate(lens):
        qf, gf = prefill_inputs(q, g, b, n, Tq)
        r = reference.forward(qf, ks[b][None].double(), vs[b][None].double(), gf, gf, gf, l=L, d=D, lsel=LSEL, n=N, w=W)
        out.append((r.o[0, n - Tq:], r.idx[0, n - Tq:]))
    return out


def test_decode_on_the_cpu_equals_the_prefill_rows():
    lens, Tq = [70, 130, 200], 2
    c = make_cache(3, 2, 32, 16, lens)
    for b, n in enumerate(lens):  # the compressed cache: the mean pool of the cache
        ref = reference.mean_pool(c["ks"][b].double(), L, D)
        assert torch.allclose(c["kc"][b, :ref.shape[0]].double(), ref, atol=2e-2)
    q = torch.randn(3, Tq, 8, 32).bfloat16()
    g = torch.rand(3, Tq, 8).bfloat16()
    o, idx, cnt = nsajit.decode(q, c["kp"], c["vp"], c["table"], c["lens"], c["kc"], c["vc"], g, g, g,
                                l=L, d=D, lsel=LSEL, n=N, w=W)
    assert o.shape == (3, Tq, 8, 16) and idx.shape == (3, Tq, 2, N) and cnt.shape == (3, Tq, 2)
    for b, (ro, ridx) in enumerate(prefill_rows(q, g, c["ks"], c["vs"], lens, Tq)):
        assert (o[b].double() - ro).abs().max() < 1e-2  # bf16 output, bf16 compressed cache
        assert torch.equal(idx[b], ridx)


def test_completed_entries():
    assert list(nsajit.completed_cmp_entries(0, 31, l=32, d=16)) == []
    assert list(nsajit.completed_cmp_entries(31, 32, l=32, d=16)) == [0]
    assert list(nsajit.completed_cmp_entries(32, 64, l=32, d=16)) == [1, 2]


def test_fake_paths_give_the_shapes_on_cuda():
    with FakeTensorMode():
        q = torch.empty(4, 3, 16, 64, device="cuda", dtype=torch.bfloat16)
        kp = torch.empty(40, 64, 2, 64, device="cuda", dtype=torch.bfloat16)
        vp = torch.empty(40, 64, 2, 32, device="cuda", dtype=torch.bfloat16)
        table = torch.empty(4, 10, device="cuda", dtype=torch.int32)
        lens = torch.empty(4, device="cuda", dtype=torch.int32)
        kc = torch.empty(4, 40, 2, 64, device="cuda", dtype=torch.bfloat16)
        vc = torch.empty(4, 40, 2, 32, device="cuda", dtype=torch.bfloat16)
        g = torch.empty(4, 3, 16, device="cuda", dtype=torch.bfloat16)
        o, idx, cnt = nsajit.decode(q, kp, vp, table, lens, kc, vc, g, g, g, l=16, d=16, lsel=64, n=8, w=64)
        assert o.shape == (4, 3, 16, 32) and o.dtype == torch.bfloat16 and o.device.type == "cuda"
        assert idx.shape == (4, 3, 2, 8) and cnt.shape == (4, 3, 2) and idx.dtype == torch.int32
        o, idx, cnt = nsajit.decode(q, kp, vp, table, lens, kc, vc, g, None, g, l=16, d=16, lsel=64, n=8, w=64)
        assert idx.numel() == 0


def test_opcheck_on_the_cpu():
    c = make_cache(2, 1, 16, 16, [40, 65])
    q = torch.randn(2, 1, 2, 16).bfloat16()
    g = torch.rand(2, 1, 2).bfloat16()
    torch.library.opcheck(torch.ops.nsajit.decode.default,
                          (q, c["kp"], c["vp"], c["table"], c["lens"], c["kc"], c["vc"], g, g, g, None, None, None,
                           None, L, D, LSEL, N, W, 0.0))
    kn = torch.randn(2, 3, 1, 16).bfloat16()
    torch.library.opcheck(torch.ops.nsajit.decode_append.default,
                          (kn, kn.clone(), c["kp"].clone(), c["vp"].clone(), c["table"], c["lens"], c["kc"].clone(),
                           c["vc"].clone(), L, D))


def test_bad_arguments_are_refused_with_a_message():
    c = make_cache(2, 1, 16, 16, [40, 65])
    q = torch.randn(2, 1, 2, 16).bfloat16()
    g = torch.rand(2, 1, 2).bfloat16()
    with pytest.raises(nsajit.NsajitUsageError, match="page_table must be int32"):
        nsajit.decode(q, c["kp"], c["vp"], c["table"].long(), c["lens"], c["kc"], c["vc"], g, g, g,
                      l=L, d=D, lsel=LSEL, n=N, w=W)
    with pytest.raises(nsajit.NsajitUsageError, match="seqlens must be int32"):
        nsajit.decode(q, c["kp"], c["vp"], c["table"], c["lens"].long(), c["kc"], c["vc"], g, g, g,
                      l=L, d=D, lsel=LSEL, n=N, w=W)
    with pytest.raises(nsajit.NsajitUsageError, match="give at least one gate"):
        nsajit.decode(q, c["kp"], c["vp"], c["table"], c["lens"], c["kc"], c["vc"], l=L, d=D, lsel=LSEL, n=N, w=W)


# ---- GPU ---------------------------------------------------------------------------------------------------------------


def judge_against_reference(q, g, ks, vs, kc, lens, Tq, o, idx, cnt):
    """Every decoded row against the prefill reference attended over the GPU's own selection and the GPU's compressed
    cache, and each selection row against the reference's by NSA.md's rule (a block swapped against the reference's
    set must be a near tie: within 1e-3 of the row's largest score). Returns the worst relative error of o."""
    worst = 0.0
    for b, n in enumerate(lens):
        qf, gf = prefill_inputs(q, g, b, n, Tq)
        nc = nsajit.num_cmp_blocks(n, L, D)
        kcb = kc["k"][b:b + 1, :nc].double().cpu()
        vcb = kc["v"][b:b + 1, :nc].double().cpu()
        args = dict(l=L, d=D, lsel=LSEL, n=N, w=W, k_cmp=kcb, v_cmp=vcb)
        own = reference.forward(qf, ks[b][None].double(), vs[b][None].double(), gf, gf, gf, **args)
        full_idx, full_cnt = own.idx.clone(), own.cnt.clone()
        full_idx[0, n - Tq:] = idx[b].cpu()
        full_cnt[0, n - Tq:] = cnt[b].cpu()
        scores = reference.selection_scores(qf[0], kcb[0], l=L, d=D, lsel=LSEL)
        for i in range(Tq):
            t = n - Tq + i
            for h in range(full_idx.shape[2]):
                mine = set(full_idx[0, t, h, :int(full_cnt[0, t, h])].tolist())
                ref = set(own.idx[0, t, h, :int(own.cnt[0, t, h])].tolist())
                assert int(full_cnt[0, t, h]) == int(own.cnt[0, t, h]), (b, t, h)
                if mine != ref:
                    sc = scores[t, h]
                    top = float(sc[:t // LSEL + 1].max())
                    unchosen = [j for j in range(t // LSEL + 1) if j not in mine]
                    best_unchosen = max(float(sc[j]) for j in unchosen)
                    for j in mine - ref:
                        assert float(sc[j]) >= best_unchosen - 1e-3 * top, (b, t, h, j, "not a near tie")
        r = reference.forward(qf, ks[b][None].double(), vs[b][None].double(), gf, gf, gf, idx=full_idx,
                              cnt=full_cnt, **args)
        ro = r.o[0, n - Tq:]
        worst = max(worst, float((o[b].double().cpu() - ro).norm() / ro.norm()))
    return worst


@pytest.mark.gpu
@pytest.mark.fwd_numeric
@pytest.mark.parametrize("Tq", [1, 3])
def test_cuda_decode_and_append_equal_the_cpu_path(Tq):
    lens = [40, 130, 256]
    cpu = make_cache(3, 2, 64, 32, lens, P=64, max_pages=5)
    gpu = make_cache(3, 2, 64, 32, lens, P=64, max_pages=5, device="cuda")
    # The CUDA append wrote the same cache (the compressed entries up to bf16 rounding).
    for b, n in enumerate(lens):
        rows = gpu["table"][b].long().cpu()
        assert torch.equal(gpu["kp"].cpu()[rows], cpu["kp"][rows])
    assert (gpu["kc"].cpu().float() - cpu["kc"].float()).abs().max() < 2e-2
    q = torch.randn(3, Tq, 8, 64).bfloat16()
    g = torch.rand(3, Tq, 8).bfloat16()
    args = dict(l=L, d=D, lsel=LSEL, n=N, w=W)
    o, idx, cnt = nsajit.decode(q.cuda(), gpu["kp"], gpu["vp"], gpu["table"], gpu["lens"], gpu["kc"], gpu["vc"],
                                g.cuda(), g.cuda(), g.cuda(), **args)
    worst = judge_against_reference(q, g, gpu["ks"], gpu["vs"], {"k": gpu["kc"], "v": gpu["vc"]}, lens, Tq, o, idx,
                                    cnt)
    assert worst < 1e-2, worst


@pytest.mark.gpu
@pytest.mark.fwd_numeric
def test_cuda_graph_of_append_and_decode_replays_as_sequences_grow():
    B, H, HQ, dk, dv, P, max_pages = 2, 2, 8, 64, 64, 64, 6
    dev = "cuda"
    table = torch.arange(B * max_pages, dtype=torch.int32, device=dev).reshape(B, max_pages)
    kp = torch.zeros(B * max_pages, P, H, dk, dtype=torch.bfloat16, device=dev)
    vp = torch.zeros(B * max_pages, P, H, dv, dtype=torch.bfloat16, device=dev)
    max_cmp = nsajit.num_cmp_blocks(max_pages * P, L, D)
    kc = torch.zeros(B, max_cmp, H, dk, dtype=torch.bfloat16, device=dev)
    vc = torch.zeros(B, max_cmp, H, dv, dtype=torch.bfloat16, device=dev)
    old = torch.zeros(B, dtype=torch.int32, device=dev)
    new = torch.ones(B, dtype=torch.int32, device=dev)
    kn = torch.randn(B, 1, H, dk, dtype=torch.bfloat16, device=dev)
    vn = torch.randn(B, 1, H, dv, dtype=torch.bfloat16, device=dev)
    q = torch.randn(B, 1, HQ, dk, dtype=torch.bfloat16, device=dev)
    g = torch.rand(B, 1, HQ, dtype=torch.bfloat16, device=dev)
    out = torch.empty(B, 1, HQ, dv, dtype=torch.bfloat16, device=dev)
    args = dict(l=L, d=D, lsel=LSEL, n=N, w=W)

    def step():
        nsajit.decode_append(kn, vn, kp, vp, table, old, kc, vc, l=L, d=D)
        o, _, _ = nsajit.decode(q, kp, vp, table, new, kc, vc, g, g, g, **args)
        out.copy_(o)

    steps = 300
    gen = torch.Generator(device=dev).manual_seed(1)
    ks = torch.randn(steps, B, 1, H, dk, device=dev, generator=gen).bfloat16()
    vs = torch.randn(steps, B, 1, H, dv, device=dev, generator=gen).bfloat16()
    qs = torch.randn(steps, B, 1, HQ, dk, device=dev, generator=gen).bfloat16()

    def stage(i):
        old.fill_(i), new.fill_(i + 1), kn.copy_(ks[i]), vn.copy_(vs[i]), q.copy_(qs[i])

    stage(0)
    step()  # eager: compiles and loads the kernels
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        with torch.cuda.graph(graph, stream=s):
            step()
    for i in range(1, steps):
        stage(i)
        graph.replay()
        if i in (1, 31, 32, 100, 299):
            torch.cuda.synchronize()
            keys = ks[:i + 1, :, 0].transpose(0, 1).cpu()  # [B, i + 1, H, dk]
            vals = vs[:i + 1, :, 0].transpose(0, 1).cpu()
            for b, (ro, _) in enumerate(prefill_rows(q.cpu(), g.cpu(), list(keys), list(vals), [i + 1] * B, 1)):
                err = (out[b].double().cpu() - ro).norm() / ro.norm()
                assert err < 1e-2, (i, b, err)


@pytest.mark.gpu
def test_compile_fullgraph_decode_step():
    c = make_cache(2, 2, 64, 32, [100, 200], P=64, max_pages=5, device="cuda")
    q = torch.randn(2, 1, 8, 64, dtype=torch.bfloat16, device="cuda")
    g = torch.rand(2, 1, 8, dtype=torch.bfloat16, device="cuda")

    def step(q, g):
        o, idx, cnt = nsajit.decode(q, c["kp"], c["vp"], c["table"], c["lens"], c["kc"], c["vc"], g, g, g,
                                    l=L, d=D, lsel=LSEL, n=N, w=W)
        return o * 2

    eager = step(q, g)
    compiled = torch.compile(step, fullgraph=True)(q, g)
    assert torch.equal(eager, compiled)
