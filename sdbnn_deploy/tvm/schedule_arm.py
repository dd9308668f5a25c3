"""aarch64 NEON schedules of the sdbnn kernels (Raspberry Pi 3, 4, 5 and any ARMv8-A core).

The same four functions as schedule_x86 (its docstring says who calls them and how):
conv_lanes(params), schedule_binarize_pack(sch, params), schedule_binary_conv2d(sch, params),
schedule_packed_max_pool2d(sch, params). They only reorder work: results are bit-identical.

Params read here (defaults in DEFAULTS; targets/rpi*.toml set them): tile_pixels and tile_vectors, the
register tile of the conv (output pixels x 128-bit vectors of output channels). NEON has 32 128-bit
registers, so the tile stays at or below 16 accumulators.

The conv: one q register holds V = 2 uint64 weight words (two output channels). A register tile of
output pixels x vectors (the largest divisors of the output width and of the vector count within the
params) accumulates in a "local" block, with the reduction loops (kh, kw, input words) outside the
tile: each input word is broadcast against the tile's weight vectors, XORed and counted. LLVM lowers the uint64
popcount to `cnt v.16b` and widens at every step (uaddlp .8h, uaddlp .4s, uadalp .2d): 5 instructions
per 128 bit-MACs. Rows (batch x output rows) run in parallel.

Not done, and why: byte lanes with uint8 partial sums (eor + cnt .16b + add .16b, widened once per
tap; exact while a byte lane sees at most 31 words) would cut that to about 3. A schedule cannot change
the accumulator's dtype, and `Schedule.tensorize` segfaults in this wheel pair (apache-tvm 0.27.0.post1
+ apache-tvm-ffi 0.1.15.post2: its DeepCopy goes through ToJSONGraph, the save_json crash of
tvm-notes.md), even with TVM's own NEON intrinsics. It needs a byte-lane variant of the compute.
"""
from tvm import s_tir

from sdbnn_deploy.tvm.schedule_x86 import _parallel_rows

DEFAULTS = {"tile_pixels": 2, "tile_vectors": 4}
LANES = 2  # uint64 words per 128-bit NEON register


def _param(params, name):
    return int((params or {}).get(name, DEFAULTS[name]))


def conv_lanes(params) -> int:
    return LANES


def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def schedule_binary_conv2d(sch: s_tir.Schedule, params) -> None:
    pad = sch.get_sblock("pad")
    counts = sch.get_sblock("popcount")
    conv = sch.get_sblock("conv")
    out = sch.get_sblock("output")

    _parallel_rows(sch, pad)

    n, oh, ow, b, v = sch.get_loops(conv)
    tw = _largest_divisor(_extent(sch, ow), _param(params, "tile_pixels"))
    tb = _largest_divisor(_extent(sch, b), _param(params, "tile_vectors"))
    owo, owi = sch.split(ow, [None, tw])
    bo, bi = sch.split(b, [None, tb])
    sch.reorder(n, oh, owo, bo, owi, bi, v)
    sch.parallel(sch.fuse(n, oh))
    sch.vectorize(v)

    # compute_at leaves no loop of extent 1, so name the loops it makes from the known extents.
    kh, kw, cw = (int(iv.dom.extent) for iv in sch.get(counts).iter_vars[-3:])
    extents = {"owi": tw, "bi": tb, "v": LANES, "r": kh, "s": kw, "k": cw}
    sch.compute_at(counts, bo)
    sch.set_scope(counts, 0, "local")
    present = [name for name, extent in extents.items() if extent > 1]
    loops = dict(zip(present, sch.get_loops(counts)[-len(present):]))
    order = [loops[name] for name in ("r", "s", "k", "owi", "bi", "v") if name in loops]
    sch.reorder(*order)
    for name in ("owi", "bi"):
        if name in loops:
            sch.unroll(loops[name])
    sch.vectorize(loops["v"])
    sch.decompose_reduction(counts, order[0])

    _parallel_rows(sch, out)


def schedule_binarize_pack(sch: s_tir.Schedule, params) -> None:
    _parallel_rows(sch, sch.get_sblock("binarize_pack"))


def schedule_packed_max_pool2d(sch: s_tir.Schedule, params) -> None:
    pool = sch.get_sblock("pool")
    out = sch.get_sblock("output")
    fused = _parallel_rows(sch, out)
    sch.compute_at(pool, fused)
