#!/usr/bin/env python3
"""CUBIN identity check for changes that must not change the kernels (refactors of templates, codegen or the
parameter structs). Compiles a fixed set of specs with `nsajit compile` (every family, presets fla and paper: the
default config, a few other tiles, fp16) into a fresh CUBIN cache and writes one line per CUBIN: sha256 of the CUBIN
itself (not the cache entry, whose key hashes the source text), keyed by family and spec; then the exit status of
every compile. Run it with the binary built before and after the change, then `diff` the two files:
  scripts/cubin_hashes.py /tmp/nsajit-before before.txt && scripts/cubin_hashes.py build/nsajit after.txt
  diff before.txt after.txt
Copy the binaries first if a build may relink them while this runs (about 130 NVRTC compiles)."""
import hashlib, json, os, struct, subprocess, sys, tempfile, pathlib

nsajit, out = sys.argv[1], sys.argv[2]
TILES = {
    "pool": ["THREADS=128", "THREADS=512"],
    "cmp_fwd": ["BM=128,BN=32,QREGS=0,IMPL=0,STAGES=2", "BM=64,BN=128,IMPL=0,STAGES=2", "BM=64,BN=64,QREGS=1,IMPL=1",
                "BM=192,BN=64,QREGS=0,IMPL=1,STAGES=3", "BM=64,BN=64,QREGS=0,IMPL=2,STAGES=2"],
    "win_fwd": ["BM=128,BN=32,QREGS=0,IMPL=0,STAGES=2", "BM=64,BN=128,IMPL=0,STAGES=2", "BM=64,BN=64,QREGS=1,IMPL=1",
                "BM=192,BN=64,QREGS=0,IMPL=1,STAGES=3", "BM=64,BN=64,QREGS=0,IMPL=2,STAGES=2"],
    "select": ["W=4,KS=2,BN=64", "W=2,KS=1,BN=32,QREGS=0,OCC=1"],
    "slc_fwd": ["BM=32,BN=32,STAGES=3,IMPL=0", "BM=64,BN=16,QREGS=0,IMPL=0", "BM=128,BN=64,QREGS=0,IMPL=1"],
    "cmp_bwd_dq": ["BM=128,BN=32", "BM=64,BN=16"],
    "win_bwd_dq": ["BM=128,BN=32", "BM=64,BN=16"],
    "cmp_bwd_dkv": ["WARPS=2,BM=32,QSPLIT=2048", "WARPS=8,BM=64"],
    "slc_bwd_dq": ["BN=16", "BN=64"],
    "slc_bwd_dkv": ["BM=32,QCHUNK=1024", "BM=64"],
    "win_bwd_dkv": ["WARPS=2,BM=32", "WARPS=8,BM=64"],
    "fault_test": ["MODE=1", "MODE=2", "MODE=3"],
}
env = dict(os.environ, NSAJIT_TEST_FAMILIES="1")
fams = [l.strip() for l in subprocess.run([nsajit, "families"], env=env, capture_output=True, text=True,
                                          check=True).stdout.splitlines() if l and not l[0].isspace()]
cache = tempfile.mkdtemp(prefix="cubins-")
env["NSAJIT_CACHE_DIR"] = cache
outcomes = []
for fam in fams:
    for preset in ["fla", "paper"]:
        runs = [[]] + [["--tile", t] for t in TILES.get(fam, [])] + [["--dtype", "fp16"]]
        for extra in runs:
            cmd = [nsajit, "compile", "--arch", "sm_90a", "--family", fam, "--preset", preset] + extra
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            outcomes.append(f"rc={r.returncode} {fam} {preset} {' '.join(extra)}")
            print(outcomes[-1], flush=True)
lines = []
for p in pathlib.Path(cache).rglob("*.nsajitcb"):
    b = p.read_bytes()
    assert b[:8] == b"NSAJITCB"
    m, = struct.unpack_from("<I", b, 12)
    n, = struct.unpack_from("<Q", b, 16)
    meta = json.loads(b[120:120 + m])
    payload = b[120 + m:120 + m + n]
    lines.append(f"{hashlib.sha256(payload).hexdigest()}  {meta['family']} | {meta['spec']}")
with open(out, "w") as f:
    f.write("\n".join(sorted(lines, key=lambda s: s[66:])) + "\n")
    f.write("# outcomes\n" + "\n".join(outcomes) + "\n")
print(f"{len(lines)} cubins -> {out} (cache {cache})")
