"""aarch64 NEON schedules of the sdbnn kernels (Raspberry Pi 3, 4, 5 and any ARMv8-A core).

The same four functions as schedule_x86 (its docstring says who calls them and how):
conv_lanes(params), schedule_binarize_pack(sch, params), schedule_binary_conv2d(sch, params),
schedule_packed_max_pool2d(sch, params), plus conv_kernels(params): the module with BinaryConv2d's
compute (prepare_conv_weights, binary_conv2d) that the importer must use. They only reorder work:
results are bit-identical.

Params read here (defaults in DEFAULTS; targets/rpi*.toml set them):
    byte_lanes    use kernels_arm (uint8 partial sums, below), else kernels (uint64 word lanes)
    tile_pixels   output pixels per register tile (an upper bound: the largest divisor of the output
                  width within it is used; kernels_arm's flattened pixels: its FLAT_TILE)
    tile_vectors  with byte lanes: V, the output channels per weight block, i.e. the weights' layout
                  (conv_lanes), and the tile's 16-byte accumulators per pixel; with word lanes: the
                  tile's blocks of 2 channels (an upper bound, as tile_pixels)
    shapes        per-layer-shape overrides {conv_key(...): {tile_pixels, tile_vectors}} as in
                  schedule_x86: the winners of the search on a board (sdbnn_deploy.tune over TVM RPC);
                  other shapes use the values above. A per-shape tile_vectors changes the register tile
                  only, never the layout (the importer lays out every conv's weights with the global V
                  before any schedule runs): with byte lanes the tile then takes the largest divisor of V
                  within it, and a weight block is covered by V / that many tiles.

With byte_lanes (kernels_arm, the default): one q register holds 16 bytes of ONE output channel's
words; V = tile_vectors output channels per weight block. Per tile of pixels x V channels the uint8
partial sums stay in registers while a chunk of the reduction (at most 31 quads) runs: per 16 bytes
`eor`, `cnt .16b`, `add .16b` plus the loads (ldp of two q), so the hot loop does about 3.4-3.5
instructions per 128 bit-MACs (sdbnn_deploy.asm_count). After each chunk one `uadalp` adds the bytes in
pairs into 8 uint16 lanes, at the end one `uaddlv` adds the lanes into the output's count (with one small
chunk, a pixel's 4 counts come from one pairwise tree: kernels_arm._pixel_tree). With one chunk (Cin <= 128
at 3x3) the tile loop is the innermost loop with `cnt` and holds the tile's end too: 3.47 instructions per
128 bit-MACs (250 per 72 `cnt .16b`; stride 2: 3.49) since kernels_arm lays out offsets, doubles the
counts and sums two columns in one tree (even widths: _sums_column_pairs) and the tile's loops come in
TILE_ORDER (3.64-3.72 before). Tried and dropped (rpi4, 2026-11): 4 x 4 tiles for Cin <= 256 and
7 x 2 tiles on rows of 7 lower that figure (3.31 and 3.55-3.62) only by leaving the tile's end outside the
counted loop (scalar, about 5 instructions per output); counted under qemu (QEMU_LOG=in_asm,exec,nochain,
executed blocks x their sizes) the whole conv does more per `cnt .16b`: 4.57 -> 4.88 (Cin 64, stride 1),
4.61 -> 5.27 (stride 2), 4.22 -> 4.31 (Cin 256), 4.49 -> 4.68 (7x7, Cin 512). Also dropped (rpi4,
2026-11-27, whole conv under qemu per `cnt .16b`, before -> with the change): 4 x 4 tiles with the taps
unrolled so that the tile's end stays in the loop: LLVM spills accumulators (Cin 64: 4.13 -> 4.47, stride
2: 4.16 -> 4.60); two tiles per loop iteration: LLVM interleaves and spills them (Cin 64: 4.13 -> 4.57);
1 pixel x two blocks on rows of 7 (4.22 -> 4.46 Cin 256 stride 2, 4.38 -> 4.85 Cin 512); after the
uadalp widening, 7 x 1 and 7 x 2 tiles on rows of 7 (Cin 512: 4.05 -> 4.29 and 4.10; Cin 256 stride 2:
4.22 -> 4.23 and 4.30: the uint16 lanes of 7-14 outputs spill), "row" chunks for Cin 256 (4.22 ->
4.44), the blocks' loop outside the pixel tiles' (the weights invariant instead of the inputs: Cin 64
4.09 -> 4.22, Cin 256 stride 2 4.22 -> 4.51) and, for "bits", kernels' "bits_limits" (Cin 128: 4.03 ->
4.07). Dropped later that day (same measure): on rows of 7, tiles of 2 pixels with the last guarded
and the pixel-tile loop annotated pragma_loop_partition_hint (the guards stay in the tile: 7x7 Cin 256
stride 2 4.20 -> 5.71); a tile's channels outside the reductions (Cin 64 3.94 -> 4.03, 7x7 Cin 256
stride 2 4.20 -> 5.10); the reductions in the order q, r, s (7x7 Cin 256 stride 2 4.20 -> 4.71: LLVM
keeps the q loop) or s, r, q (4.22); a 7x7 shape's tile_vectors 2 or 1 (Cin 256 stride 2 4.20 -> 5.00,
4.50; Cin 512 4.04 -> 4.39, 4.98); LLVM options through the target's cl-opt: misched and regalloc
switches changed nothing (string-valued ones do not parse in this TVM), -misched-cluster=false spilled
(Cin 64 3.94 -> 4.07). Landed 2026-11-27 for Bi-Real ResNet-18's 7x7 outputs (rows of 7 had 1-pixel
tiles): kernels_arm's flattened pixels, 2-pixel tiles that may span two rows (49 pixels padded to 50);
hot loop (asm_count, the Bi-Real rpi4 artifact) Cin 256 stride 2 3.97 -> 3.46 (166 per 48 `cnt .16b`, a
kernel row per iteration), Cin 512 3.75 -> 3.42 (328 per 96); whole conv under qemu per USEFUL `cnt
.16b` (49 pixels; Cout 512) 4.20 -> 4.08 (affine; bits 4.17 -> 4.05) and 4.04 -> 3.83 (affine; int 4.01
-> 3.80). Cin <= 128 at 7x7 (in no bench model; a pair tree per tile) 3.75 -> 3.58, whole conv 4.12 ->
4.05 (Cin 128 stride 2 bits), 4.17 -> 4.12 (Cin 64 affine): the tile's end, in that loop, keeps a guard
per pixel (the conv stage skips the padded 50th pixel). Shapes with even widths are unchanged. rpi5 the
same; rpi3 (a53 code) 3.74 -> 3.46 and 3.75 -> 3.50. Tried on the way: planes per kernel column and row
phase (kernels_arm._tap_planes: Cin 256 stride 2 hot loop 3.67, whole conv 4.31 per useful `cnt .16b`,
worse than the 1-pixel tiles' 4.20) and the pad stage inlined into the planes (whole conv 4.13 -> 4.08
once it was not). Not done: peeling the last tile (loop_partition) to drop the guards: `parallel` then
fails after decompose_reduction (the loop has no compact dataflow); the guards cost 4 of 258 per 72, 3
more reload spilled inputs (a tile's two pixels read 18 input quads from the planes, where in one row at
stride 1 they share 6 of them).
With 8 accumulators a Cin <= 128 3x3 tile takes 250 instructions per 72 `cnt .16b`: 208 eor, cnt and add,
18 ldp of weights (the inputs stay in registers), 14 for the tree of the two pixels, its
doubling and the `usubw` and `usubw2` from the offsets (y = offset - 2*count), 10 for the offsets' loads,
the stores and the loop.

Without byte_lanes (kernels.binary_conv2d): one q register holds V = 2 uint64 weight words (two output
channels); LLVM lowers the uint64 popcount to `cnt v.16b` and widens at every step (uaddlp .8h,
uaddlp .4s, uadalp .2d): about 6 instructions per 128 bit-MACs. Kept for comparison and as the fallback.
`Schedule.tensorize` is not used: it segfaults in this wheel pair (apache-tvm 0.27.0.post1 +
apache-tvm-ffi 0.1.15.post2, the save_json crash of tvm-notes.md).
"""
from tvm import s_tir, tirx

from sdbnn_deploy.tvm import ScheduleParamError, kernels, kernels_arm, largest_divisor
from sdbnn_deploy.tvm.schedule_x86 import _extent, _mode, _parallel_rows

DEFAULTS = {"byte_lanes": True, "tile_pixels": 2, "tile_vectors": 4, "shapes": {}}
SHAPE_PARAMS = ("tile_pixels", "tile_vectors")
LANES = 2  # uint64 words per 128-bit NEON register (word lanes)
OUTPUT_LANES = 8  # output values per vectorised step of the output stage (two q registers of 32-bit values)
ACCUMULATORS = 16  # q registers a register tile may hold (of 32: the rest for input and weight vectors)
# The tile's loops, outermost first: a weight vector's pixels next to each other, not a pixel's channels (the
# order LLVM receives the unrolled statements in; its register allocation spilled more the other way: Cin 64
# 3x3 tile loop 252 -> 251 instructions per 72 `cnt .16b`, stride 2 254 -> 253, Cin 512 2 x 4 330 -> 328 per
# 96; whole conv under qemu per `cnt .16b` 3.944 -> 3.928, 3.995 -> 3.981, 3.719 -> 3.698; rpi4)
TILE_ORDER = ("v", "owi", "lane", "byte")


def _param(params, name):
    """params[name], else its default; a name this module does not know is an error, not ignored."""
    unknown = sorted(set(params or {}) - set(DEFAULTS))
    if unknown:
        raise ScheduleParamError(f"schedule_arm: unknown schedule parameters {unknown}; "
                                 f"known: {sorted(DEFAULTS)}")
    value = (params or {}).get(name, DEFAULTS[name])
    return value if name == "shapes" else int(value)


def conv_key(sch: s_tir.Schedule) -> str:
    """The shape key of a BinaryConv2d PrimFunc (byte or word lanes), in schedule_x86.conv_key's format:
    padded input (H x W x words) > output (OH x OW x blocks), kernel, output mode."""
    params = sch.mod["main"].params  # x (N, H, W, words), weights (blocks, kh, kw, ...), ...
    _, hp, wp, *_ = (int(iv.dom.extent) for iv in sch.get(sch.get_sblock("pad")).iter_vars)
    _, oh, ow, blocks, _ = (int(iv.dom.extent) for iv in sch.get(sch.get_sblock("conv")).iter_vars)
    _, kh, kw = (int(d) for d in params[1].shape[:3])
    return f"{hp}x{wp}x{int(params[0].shape[3])}>{oh}x{ow}x{blocks}:{kh}x{kw}:{_mode(sch)}"


def tile_extents(sch: s_tir.Schedule) -> tuple[int, int]:
    """(output width, vectors) that a register tile of this conv spans parts of: tile_pixels divides the
    first; tile_vectors divides the second (byte lanes: V, the channels of a weight block; word lanes:
    the blocks). With flattened pixels (flat_tiles) the first is the fixed tile, FLAT_TILE."""
    _, _, width, blocks, lanes = (int(iv.dom.extent) for iv in sch.get(sch.get_sblock("conv")).iter_vars)
    return kernels_arm.FLAT_TILE if flat_tiles(sch) else width, lanes if _has_block(sch, "popcount_bytes") else blocks


def flat_tiles(sch: s_tir.Schedule) -> bool:
    """Whether the conv's pixels are flattened (kernels_arm.flat_pixels), its tiles FLAT_TILE pixels
    whatever tile_pixels says."""
    return _has_block(sch, "planes")


def conv_choice(sch: s_tir.Schedule, params) -> dict:
    """The per-shape params of this conv (SHAPE_PARAMS): its entry in `shapes`, else the global ones."""
    chosen = {name: _param(params, name) for name in SHAPE_PARAMS}
    entry = _param(params, "shapes").get(conv_key(sch), {})
    unknown = sorted(set(entry) - set(SHAPE_PARAMS))
    if unknown:
        raise ScheduleParamError(f"schedule_arm: shapes.{conv_key(sch)}: entries may set {list(SHAPE_PARAMS)}, "
                                 f"not {unknown}")
    chosen.update({name: int(value) for name, value in entry.items()})
    return chosen


def conv_kernels(params):
    """kernels_arm (byte lanes) or kernels (uint64 word lanes): the compute the importer emits."""
    return kernels_arm if _param(params, "byte_lanes") else kernels


def conv_lanes(params) -> int:
    """Output channels per weight block: the tile's vectors with byte lanes, else 2 words per q register."""
    return _param(params, "tile_vectors") if _param(params, "byte_lanes") else LANES


def schedule_binary_conv2d(sch: s_tir.Schedule, params) -> None:
    """The byte-lane schedule for kernels_arm's compute (it has a "popcount_bytes" block), else the word one."""
    if _has_block(sch, "popcount_bytes"):
        return _schedule_byte_lanes(sch, params)
    return _schedule_word_lanes(sch, params)


def _has_block(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
    except Exception:  # tvm raises a ScheduleError subclass that differs between versions
        return False
    return True


def _schedule_byte_lanes(sch: s_tir.Schedule, params) -> None:
    """kernels_arm's compute: a register tile of output pixels x V output channels (one 16-byte
    accumulator each; a divisor of V when the shape's tile_vectors asks for fewer, unless the lane sums
    read a whole block: _sums_whole_blocks) per parallel row. Per tile: uint16 sums ("widen", local; only
    with several chunks; its 8 lanes unrolled, see _tile_inside) over the chunks; per chunk the uint8 sums
    ("popcount_bytes", local) with the chunk's reduction loops outside the unrolled tile and the 16 bytes
    vectorised (the hot loop: eor, cnt .16b, add .16b), the taps of a kernel row unrolled (LLVM kept a loop
    over them in a chunk of one row: Cin 512, 2 x 4 tile, whole conv under qemu 4.08 -> 3.73 instructions
    per `cnt .16b`; elsewhere unchanged); then the lane sums (unrolled: the intrinsics take whole
    registers, so their loop cannot be vectorised), conv and output. With flattened pixels (a "planes"
    stage, kernels_arm.flat_pixels) the tiles are FLAT_TILE pixels of the conv stage's pixel axis
    (_flatten_pixels; the last tile's conv stage guarded where the pixels are odd, its popcounts not)."""
    tw, tv = register_tile(sch, params)
    pad, part, counts, conv, out = (sch.get_sblock(name) for name in ("pad", "popcount_bytes", "popcount", "conv",
                                                                      "output"))
    flat = flat_tiles(sch)
    if flat:  # flattened pixels (kernels_arm.flat_pixels): tiles of FLAT_TILE of them
        n, ow, b, v = _flatten_pixels(sch, conv)
    else:
        n, oh, ow, b, v = sch.get_loops(conv)
    for stage in [pad, sch.get_sblock("planes")] if flat else [pad]:
        _parallel_rows(sch, stage)
        sch.vectorize(sch.get_loops(stage)[-1])
    owo, owi = sch.split(ow, [None, tw])
    rows = [n, owo] if flat else [n, oh, owo]  # flat: the tiles of pixels in parallel, else the rows
    if tv < _extent(sch, v):  # a tile of fewer channels than a weight block holds: blocks cut in parts
        tile_at, v = sch.split(v, [None, tv])
        sch.reorder(*rows, b, tile_at, owi, v)
    else:
        tile_at = b
        sch.reorder(*rows, b, owi, v)
    sch.parallel(sch.fuse(*rows[:2]))
    tile = {"owi": tw, "v": tv}

    sch.compute_at(counts, tile_at)
    for loop in _named_loops(sch, counts, tile).values():  # uaddlv per output: unrolled, not vectorised
        sch.unroll(loop)
    chunk_loop = tile_at
    if _has_block(sch, "widen"):  # several chunks
        widen = sch.get_sblock("widen")
        sch.compute_at(widen, tile_at)
        sch.set_scope(widen, 0, "local")
        chunks = _reductions(sch, widen)
        loops = _named_loops(sch, widen, {**tile, "lane": kernels_arm.HALF_QUAD_LANES, **chunks})
        chunk_loops = _tile_inside(sch, loops, list(chunks))
        sch.decompose_reduction(widen, chunk_loops[0])
        chunk_loop = chunk_loops[-1]

    sch.compute_at(part, chunk_loop)
    sch.set_scope(part, 0, "local")
    inner = _reductions(sch, part)
    loops = _named_loops(sch, part, {**tile, "byte": kernels_arm.QUAD_BYTES, **inner})
    inner_loops = _tile_inside(sch, loops, list(inner))
    sch.decompose_reduction(part, (inner_loops or list(loops.values()))[0])
    if "s" in loops:  # the taps of a kernel row: a row's chunk as one unrolled block
        sch.unroll(loops["s"])

    _parallel_rows(sch, out)
    _vectorize_planes(sch, out)


def register_tile(sch: s_tir.Schedule, params) -> tuple[int, int]:
    """(pixels, vectors) of the register tile the schedule gives this (unscheduled) conv: conv_choice's
    tile_pixels and tile_vectors made to fit. Byte lanes: FLAT_TILE pixels on flattened pixels, whole
    pairs of columns where a lane sum reads two (_sums_column_pairs), all V channels of a block where it
    reads the whole block (_sums_whole_blocks), else the largest divisors of the extents within the
    choice; word lanes: the largest divisors of the width and of the blocks."""
    choice = conv_choice(sch, params)
    width, vectors = tile_extents(sch)
    if not _has_block(sch, "popcount_bytes"):  # word lanes (no trees)
        return largest_divisor(width, choice["tile_pixels"]), largest_divisor(vectors, choice["tile_vectors"])
    counts = sch.get_sblock("popcount")
    if flat_tiles(sch):
        tw = kernels_arm.FLAT_TILE
    elif _sums_column_pairs(sch, counts):
        tw = 2 * largest_divisor(width // 2, max(1, choice["tile_pixels"] // 2))
    else:
        tw = largest_divisor(width, choice["tile_pixels"])
    return tw, vectors if _sums_whole_blocks(sch, counts) else largest_divisor(vectors, choice["tile_vectors"])


def _flatten_pixels(sch: s_tir.Schedule, conv) -> list:
    """kernels_arm's flattened pixels: the conv stage's (row, column) view of the counts inlined and its
    loops made (batch, pixel = row * OW + column, block, lane), returned."""
    sch.compute_inline(sch.get_sblock("pixels"))
    width = _extent(sch, sch.get_loops(conv)[2])
    sch.transform_block_layout(conv, lambda i, y, xx, b, v: (i, y * width + xx, b, v))
    return sch.get_loops(conv)


def _sums_whole_blocks(sch: s_tir.Schedule, counts) -> bool:
    """Whether each output's lane sum reads every channel of its weight block (kernels_arm._pixel_tree):
    then a tile of fewer channels would recompute the block's popcounts, so the tile takes them all."""
    lanes = len(sch.get(counts).iter_vars) - 1  # part's lanes axis: the last of the counts' axes
    return any(read.source.name == "popcount_bytes" and int(read.region[lanes].extent) > 1
               for read in sch.get(counts).reads)


def _sums_column_pairs(sch: s_tir.Schedule, counts) -> bool:
    """Whether each output's lane sum reads the popcounts of two output columns (kernels_arm's
    _pixel_pair_tree): then a tile takes whole pairs of columns (a tile of one column would compute its
    pair's popcounts too), even where tile_pixels asks for 1."""
    return any(read.source.name == "popcount_bytes" and not (isinstance(read.region[2].extent, tirx.IntImm)
                                                              and int(read.region[2].extent) == 1)  # columns
               for read in sch.get(counts).reads)


def _vectorize_planes(sch: s_tir.Schedule, out) -> None:
    """Vectorise the output stage along its last axis where it is an elementwise map (int and affine: the
    row of an NCHW plane, int_nhwc: the channels; not bits, whose words reduce over channels), by the
    largest divisor of that extent within OUTPUT_LANES. Unvectorised, the affine stage of a Cin 64 conv
    took 7 instructions per output (0.78 per `cnt .16b`); by 8 the whole conv does 4.13 instead of 4.57
    per `cnt .16b` (rpi4, counted under qemu: executed blocks x their sizes)."""
    loops = sch.get_loops(out)  # after _parallel_rows: the fused rows, then the two inner axes
    if len(loops) != 3:  # bits has a fourth loop, the bits of a word (a reduction): not elementwise
        return
    lanes = largest_divisor(_extent(sch, loops[-1]), OUTPUT_LANES)
    if lanes > 1:
        sch.vectorize(sch.split(loops[-1], [None, lanes])[1])


def _reductions(sch: s_tir.Schedule, block) -> dict:
    """{name: extent} of the block's reduction iter vars (without the "v_" prefix), in order."""
    return {iv.var.name.removeprefix("v_"): int(iv.dom.extent) for iv in sch.get(block).iter_vars
            if iv.iter_type == 2}


def _named_loops(sch: s_tir.Schedule, block, extents: dict) -> dict:
    """The innermost loops of a block after compute_at, named by `extents` ({name: extent}, loop order).
    compute_at leaves no loop of extent 1, so only the names with an extent above 1 get a loop."""
    present = [name for name, extent in extents.items() if extent > 1]
    return dict(zip(present, sch.get_loops(block)[-len(present):])) if present else {}


def _tile_inside(sch: s_tir.Schedule, loops: dict, outer: list) -> list:
    """Move the `outer` loops (reductions) outside the tile loops (those in TILE_ORDER), unroll the tile,
    vectorise the bytes ("popcount_bytes") or unroll the uint16 lanes ("widen": each lane extracts one lane
    of the same `uaddlp`, which LLVM computes once and adds into the lanes as one `uadalp`); returns the
    outer loops that exist (those of extent 1 have none)."""
    outer_loops = [loops[name] for name in outer if name in loops]
    sch.reorder(*outer_loops, *[loops[name] for name in TILE_ORDER if name in loops])
    for name in ("owi", "v", "lane"):
        if name in loops:
            sch.unroll(loops[name])
    if "byte" in loops:
        sch.vectorize(loops["byte"])
    return outer_loops


def _schedule_word_lanes(sch: s_tir.Schedule, params) -> None:
    tw, tb = register_tile(sch, params)  # pixels, blocks of LANES channels
    pad = sch.get_sblock("pad")
    counts = sch.get_sblock("popcount")
    conv = sch.get_sblock("conv")
    out = sch.get_sblock("output")

    _parallel_rows(sch, pad)

    n, oh, ow, b, v = sch.get_loops(conv)
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
    _vectorize_planes(sch, out)


def schedule_binarize_pack(sch: s_tir.Schedule, params) -> None:
    _parallel_rows(sch, sch.get_sblock("binarize_pack"))


def schedule_packed_max_pool2d(sch: s_tir.Schedule, params) -> None:
    pool = sch.get_sblock("pool")
    out = sch.get_sblock("output")
    fused = _parallel_rows(sch, out)
    sch.compute_at(pool, fused)
