"""x86-64 schedules of the sdbnn kernels (AVX-512 VPOPCNTDQ, AVX2, or plain x86-64).

Every schedule module (this one, schedule_arm) exposes the same four functions, all called by
sdbnn_deploy.tvm.apply_schedules with `params`, the TargetSpec.params dict of the target:

    conv_lanes(params) -> int
        V, the output channels per weight block: the importer lays BinaryConv2d weights out as
        [ceil(Cout/V)][kh][kw][Cw][V] (kernels.prepare_conv_weights) and the schedule vectorises over V.
    schedule_binarize_pack(sch: tvm.s_tir.Schedule, params) -> None
    schedule_binary_conv2d(sch: tvm.s_tir.Schedule, params) -> None
    schedule_packed_max_pool2d(sch: tvm.s_tir.Schedule, params) -> None

Each schedule_* takes a Schedule of one PrimFunc made from the matching compute of kernels.py (block
names in kernels.BLOCKS) and schedules it in place. They only reorder work: results are bit-identical.

Params read here (defaults in DEFAULTS): lanes (V: 8 uint64 = one zmm, 4 = one ymm), accumulators (the
register tile, output pixels x weight blocks; 16 zmm accumulators measured best on AVX-512).

The conv, as measured (tvm-notes.md, "What made a binary conv fast"): padded NHWC input words; a
register tile of a few output pixels x a few blocks of V output channels, kept in a "local" buffer,
with the reduction loops (kh, kw, input words) outside the tile; one input word is broadcast against V
weight lanes; popcounts accumulate in uint64 lanes and are narrowed to int32 once; rows run in parallel.
"""
from tvm import s_tir

DEFAULTS = {"lanes": 8, "accumulators": 16}


def _param(params, name):
    """params[name], else its default; a name this module does not know is an error, not ignored."""
    unknown = sorted(set(params or {}) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"schedule_x86: unknown schedule parameters {unknown}; known: {sorted(DEFAULTS)}")
    return (params or {}).get(name, DEFAULTS[name])


def conv_lanes(params) -> int:
    return int(_param(params, "lanes"))


def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def _tile(width: int, blocks: int, accumulators: int):
    """(pixels, blocks) of the register tile: divisors of the extents, the most accumulators that fit,
    wider in weight blocks on ties (one broadcast input word then feeds more vectors)."""
    best = (1, 1)
    for tb in range(1, blocks + 1):
        for tw in range(1, width + 1):
            if blocks % tb or width % tw or tw * tb > accumulators:
                continue
            if (tw * tb, tb) > (best[0] * best[1], best[1]):
                best = (tw, tb)
    return best


def _parallel_rows(sch: s_tir.Schedule, block, count: int = 2):
    """Fuse the first `count` loops of a block (batch and rows) and run them in parallel."""
    loops = sch.get_loops(block)[:count]
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    sch.parallel(fused)
    return fused


def _vectorize_innermost(sch: s_tir.Schedule, block, lanes: int):
    """Vectorise the innermost loop of a block if it runs over the `lanes` of a weight block."""
    loops = sch.get_loops(block)
    if lanes > 1 and _extent(sch, loops[-1]) == lanes:
        sch.vectorize(loops[-1])


def schedule_binary_conv2d(sch: s_tir.Schedule, params) -> None:
    pad = sch.get_sblock("pad")
    counts = sch.get_sblock("popcount")
    conv = sch.get_sblock("conv")
    out = sch.get_sblock("output")

    _parallel_rows(sch, pad)

    n, oh, ow, b, v, r, s, k = sch.get_loops(counts)
    tw, tb = _tile(_extent(sch, ow), _extent(sch, b), int(_param(params, "accumulators")))
    owo, owi = sch.split(ow, [None, tw])
    bo, bi = sch.split(b, [None, tb])
    sch.reorder(n, oh, owo, bo, r, s, k, owi, bi, v)
    sch.parallel(sch.fuse(n, oh))
    sch.unroll(owi)
    sch.unroll(bi)
    sch.vectorize(v)
    sch.set_scope(counts, 0, "local")
    sch.reverse_compute_at(conv, bo)
    sch.decompose_reduction(counts, r)
    _vectorize_innermost(sch, conv, _extent(sch, v))
    _schedule_conv_output(sch, out)


def _schedule_conv_output(sch: s_tir.Schedule, out) -> None:
    """int/affine (NCHW): channel rows in parallel, the width vectorised. bits: rows in parallel, the 64
    comparisons of a word unrolled (LLVM turns them into vector compares)."""
    loops = sch.get_loops(out)
    if len(loops) == 5:  # n, oh, ow, word, bit
        _parallel_rows(sch, out)
        sch.unroll(loops[-1])
    else:  # n, o, oh, ow
        _parallel_rows(sch, out)
        sch.vectorize(loops[-1])


def schedule_binarize_pack(sch: s_tir.Schedule, params) -> None:
    """Per row and word: 64 contiguous NCHW channel rows, each compared and OR-ed into a local row of
    words (vectorised along the width), then stored once."""
    block = sch.get_sblock("binarize_pack")
    n, h, w, k, bit = sch.get_loops(block)
    sch.reorder(n, h, k, bit, w)
    sch.parallel(sch.fuse(n, h))
    store = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(store, k)
    sch.vectorize(w)
    sch.decompose_reduction(block, bit)


def schedule_packed_max_pool2d(sch: s_tir.Schedule, params) -> None:
    pool = sch.get_sblock("pool")
    out = sch.get_sblock("output")
    fused = _parallel_rows(sch, out)
    sch.compute_at(pool, fused)
