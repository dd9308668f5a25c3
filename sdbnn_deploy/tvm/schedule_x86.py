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

Params read here (defaults in DEFAULTS; sdbnn_deploy.tune measures and stores them in targets/x86-*.toml):
    lanes         V: 8 uint64 = one zmm, 4 = one ymm, 2 = one xmm
    accumulators  the register budget of the default tile rule (tile pixels x tile blocks at most this)
    tile_pixels, tile_blocks
                  the register tile for every conv (0: the default rule, see default_tile)
    epilogue      where the output stage runs: "pixels" (after each tile of pixels, all channels),
                  "row" (after each output row) or "auto" (the default: "row" for the NCHW outputs of modes
                  int and affine, "pixels" for bits; see default_epilogue)
    channel_parts the output channels' blocks split into this many parts, each a parallel task with its
                  output row (0: the default rule, see default_channel_parts)
    row_layout    with epilogue "row" and an NCHW output (int, affine): the row of conv results kept
                  "pixels"-major as the tiles make them (the output stage reads each channel's pixels
                  one by one: a scalar load per output) or "channels"-major (each tile stores its
                  results transposed, in shuffles of the unrolled tile; the output stage reads vectors).
                  "channels" in a shape's entry that has another epilogue or output is an error; as a
                  global param it applies to the shapes where it can (and not where the output stage
                  is a separate pass, see _output_fits_at)
    tile_scope    the storage scope of the register tile (the popcount accumulators): "local" (TVM
                  takes a local buffer on the CPU from its workspace allocator, so LLVM stores and
                  reloads the accumulators around every tile) or "global" (a buffer of the function,
                  a stack array below TVM's 1024 bytes, which LLVM keeps in registers; larger ones come
                  from the workspace too). One core, ResNet-18's bits convs 128->128 16x16 16.8 ->
                  15.4 us, 64->128 s2 9.4 -> 8.9 us; its 64->64 32x32 took 21-29 us with "global"
                  from run to run, 21 us with "local": a search parameter (tile_scope_candidates)
    pixel_lanes   read by the importer (relax_import.conv_module), not here: "affine" and "bits" convs of
                  1-2 input words emitted with output pixels in the lanes (kernels_pixels), scheduled by
                  schedule_pixel_lanes, whose shape entries take tile_pixels (pixels, whole vectors),
                  tile_blocks (output channels) and tile_scope
    shapes        per-layer-shape overrides {conv_key(...): {tile_pixels, tile_blocks, epilogue,
                  channel_parts, row_layout, tile_scope}} (another name is an error): the winners of the search
                  for the shapes it measured; other shapes use the values above

The conv, as measured (tvm-notes.md, "What made a binary conv fast", and sdbnn_deploy.tune):
- padded NHWC input words; a register tile of tile_pixels output pixels x tile_blocks blocks of V output
  channels in a buffer of scope tile_scope (registers where "global" and below STACK_BYTES), the
  reduction loops (kh, then kw and the input words fused into one loop: both are contiguous in memory)
  outside the tile, one input word broadcast against V weight lanes, popcounts accumulated in uint64 lanes;
- the narrowing to int32 and the padding correction ("conv"; for bits the compare with the folded
  limits of kernels.fold_thresholds) right after each tile, into a local buffer; the output stage
  (int/affine NCHW, or bits) once per tile of pixels or per row, from that buffer: without this the
  separate output pass over a global buffer cost up to 45% of the layer; an NCHW output transposes the
  tile's channel vectors into rows of pixels, cheapest in the tile's registers (row_layout "channels");
  a bits output adds a word's 64 bits, put in place by the "conv" stage, in vectors;
- the padded input copied on one thread where it is small (starting a parallel region costs more);
- rows (batch x output rows) run in parallel, or rows x parts of the output channels where the rows are
  too few to share evenly between threads (Bi-Real-18's 7x7 outputs); a conv too small to pay for a
  parallel loop runs on one thread (serial_conv: ResNet-20's 8x8 layers);
- with 1-2 input words per pixel (Cin <= 128) the popcounts of an output are few (9-18 per 3x3 output)
  and whatever the tile does besides them weighs: there (target param pixel_lanes) the importer emits
  kernels_pixels' compute, output PIXELS in the lanes, scheduled by schedule_pixel_lanes: an NCHW
  output row is stored as it comes out of the tile, and a bits word collects its 64 channels in a
  register (ResNet-18's Cin 64 convs, one core: 52-70% of the ceiling with channel lanes, 72-87% so);
  where the output width is not whole vectors, on the flat plane (vectors across the ends of rows, the
  plane padded to whole vectors: kernels_pixels.flat_layout; one core, against rows padded to whole
  vectors: Bi-Real-18's 64->128 s2 28x28 33.1 -> 29.0 us, 128->128 28x28 56.4 -> 50.5 us, 128->256 s2
  14x14 27.2 -> 25.2 us, the whole net 4.17 -> 3.96 ms; "bits" outputs, which took channel lanes there,
  128->256 s2 14x14 29.6 -> 24.4 us, 64->64 7x7 1.64 -> 0.86 us, 4x4 0.56 -> 0.25 us).
"""
import math

import tvm
from tvm import s_tir

from sdbnn_deploy.bits import WORD_BITS
from sdbnn_deploy.tvm import ScheduleParamError, kernels_pixels, largest_divisor, register_scope

DEFAULTS = {"lanes": 8, "accumulators": 16, "tile_pixels": 0, "tile_blocks": 0, "epilogue": "auto",
            "channel_parts": 0, "row_layout": "pixels", "tile_scope": "local", "pixel_lanes": False, "shapes": {}}
EPILOGUES = ("pixels", "row")
ROW_LAYOUTS = ("pixels", "channels")
NCHW_MODES = ("int", "affine")  # the output modes whose rows row_layout "channels" lays out
TILE_SCOPES = ("local", "global")
SHAPE_PARAMS = ("tile_pixels", "tile_blocks", "epilogue", "channel_parts", "row_layout", "tile_scope")
# Rows (batch x output rows) below which an odd count is split further by output channels: 2 threads
# over 7 rows do 4 and 3 (at most 1.75x); over 27 rows, 14 and 13 (1.93x).
FEW_ROWS = 24
# Padded input words up to which the conv's pad stage runs on one thread (_schedule_pad).
SERIAL_PAD_WORDS = 8192
# Output words per pixel from which the bits output stage unrolls its word loop (_schedule_conv_output).
UNROLLED_WORDS = 3
# Popcounted words below which a conv runs on one thread (serial_conv).
SERIAL_CONV_WORDS = 65536
# The default register tile of a pixel-lanes conv per output (schedule_pixel_lanes): vectors of pixels x
# channels (one core, AVX-512: affine 1 x 8, bits 2 x 4 measured fastest on ResNet-18's Cin 64 and 128;
# strided affine convs 2 x 4, against 1 x 8: Bi-Real-18's 64->128 s2 28x28 29.4 -> 26.4 us, ResNet-18
# dynamic's 64->128 s2 16x16 8.9 -> 8.4, ResNet-20's 16->32 s2 16x16 2.34 -> 2.24).
PIXEL_TILES = {"affine": (1, 8), "affine-strided": (2, 4), "bits": (2, 4)}
# Pixels per "row" of a flat-plane conv (_pixel_rows), at most: about a row of Bi-Real-18's 28x28 outputs.
FLAT_GROUP_PIXELS = 32


def _param(params, name):
    """params[name], else its default; a name this module does not know is an error, not ignored."""
    unknown = sorted(set(params or {}) - set(DEFAULTS))
    if unknown:
        raise ScheduleParamError(f"schedule_x86: unknown schedule parameters {unknown}; "
                                 f"known: {sorted(DEFAULTS)}")
    return (params or {}).get(name, DEFAULTS[name])


def conv_lanes(params) -> int:
    return int(_param(params, "lanes"))


def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def default_tile(width: int, blocks: int, accumulators: int):
    """(pixels, blocks) of the register tile when no measured one is given: divisors of the extents with
    the most accumulators that fit, the squarest on ties (4 x 4 on AVX-512: 4 broadcast words and 4
    weight vectors loaded per 16 popcounts)."""
    best, best_score = (1, 1), (1, 0)
    for tb in range(1, blocks + 1):
        for tw in range(1, width + 1):
            if blocks % tb or width % tw or tw * tb > accumulators:
                continue
            score = (tw * tb, -abs(tw - tb))
            if score > best_score:
                best, best_score = (tw, tb), score
    return best


def conv_key(sch: s_tir.Schedule) -> str:
    """The shape key of a BinaryConv2d PrimFunc: padded input (H x W x words) > output (OH x OW x blocks),
    kernel, output mode, e.g. "34x34x2>32x32x16:3x3:bits". The stride follows from these for strides 1
    and 2 (a stride-3 and a stride-4 conv may share a key, and so a tuned entry).
    With pixel lanes (kernels_pixels): the same, with output channels for blocks and the mode followed
    by "-pixels" on rows or "-flat" on the flat plane, e.g. "34x34x1>32x32x64:3x3:affine-pixels"."""
    if pixel_lanes(sch):
        return _pixel_key(sch)
    pad = sch.get(sch.get_sblock("pad"))
    _, hp, wp, cw = (int(iv.dom.extent) for iv in pad.iter_vars)
    _, oh, ow, blocks, _, kh, kw, _ = (int(iv.dom.extent) for iv in sch.get(sch.get_sblock("popcount")).iter_vars)
    return f"{hp}x{wp}x{cw}>{oh}x{ow}x{blocks}:{kh}x{kw}:{_mode(sch)}"


def _mode(sch: s_tir.Schedule) -> str:
    out = sch.get(sch.get_sblock("output"))
    if len(out.iter_vars) == 5:  # n, oh, ow, word, bit
        return "bits"
    if str(out.writes[0].source.dtype) == "float32":
        return "affine"
    # int (n, o, y, x) or int_nhwc (n, y, x, o): which output index picks the conv results' row
    return "int_nhwc" if out.reads[0].region[1].min.same_as(out.iter_vars[1].var) else "int"


def default_epilogue(mode: str) -> str:
    """"row" for the NCHW outputs (int, affine), "pixels" for bits.

    An NCHW output stage after each tile of pixels stores a few pixels into each of the Cout channel rows
    of the output, rows H*W*4 bytes apart, so every tile touches Cout lines of the same L1 set and evicts
    them again (VGG-Small's 128->128 32x32 int conv: 250 us with a 4x4 tile, 83 us once per row, measured
    here; the bits conv of the same shape takes 70 us). Once per row, each channel's row is stored whole.
    int_nhwc (channels last, stored in the conv's own order) also gets "row", a default not measured
    against "pixels": the convs of our models have tuned entries (targets/*.toml)."""
    return "pixels" if mode == "bits" else "row"


def default_channel_parts(rows: int, tiles: int, halves_whole_words: bool = True) -> int:
    """2 where an odd number of rows, fewer than FEW_ROWS, would leave one thread a row more than the
    other and the `tiles` (blocks of tile_blocks) split in two, into halves of whole output words for
    "bits" (else its output stage would be a separate pass); else 1. The parts are the outer parallel
    loop, so with 2 threads each thread reads the whole input but only its half of the weights."""
    return 2 if rows % 2 and rows < FEW_ROWS and tiles % 2 == 0 and halves_whole_words else 1


def conv_choice(sch: s_tir.Schedule, params) -> dict:
    """tile_pixels, tile_blocks, epilogue, channel_parts, row_layout, tile_scope for this conv: its entry in
    `shapes`, else the global params, else the default rules; a tile that does not divide the extents
    falls back to the rule, and so do channel parts that do not divide the tiles of blocks."""
    chosen = {name: _param(params, name) for name in SHAPE_PARAMS}
    entry = (_param(params, "shapes") or {}).get(conv_key(sch), {})
    unknown = sorted(set(entry) - set(SHAPE_PARAMS))
    if unknown:
        raise ScheduleParamError(f"schedule_x86: shapes.{conv_key(sch)}: unknown parameters {unknown}; "
                         f"known: {list(SHAPE_PARAMS)}")
    chosen.update(entry)
    n, oh, ow, b, *_ = sch.get_loops(sch.get_sblock("popcount"))
    width, blocks = _extent(sch, ow), _extent(sch, b)
    tw, tb = int(chosen["tile_pixels"]), int(chosen["tile_blocks"])
    if tw <= 0 or tb <= 0 or width % tw or blocks % tb:
        tw, tb = default_tile(width, blocks, int(_param(params, "accumulators")))
    if chosen["epilogue"] == "auto":
        chosen["epilogue"] = default_epilogue(_mode(sch))
    if chosen["epilogue"] not in EPILOGUES:
        raise ScheduleParamError(f"schedule_x86: {conv_key(sch)}: epilogue must be one of {EPILOGUES}, "
                                 f"not {chosen['epilogue']!r}")
    if chosen["row_layout"] not in ROW_LAYOUTS:
        raise ScheduleParamError(f"schedule_x86: {conv_key(sch)}: row_layout must be one of {ROW_LAYOUTS}, "
                                 f"not {chosen['row_layout']!r}")
    if chosen["tile_scope"] not in TILE_SCOPES:
        raise ScheduleParamError(f"schedule_x86: {conv_key(sch)}: tile_scope must be one of {TILE_SCOPES}, "
                                 f"not {chosen['tile_scope']!r}")
    if entry.get("row_layout") == "channels" and (chosen["epilogue"] != "row" or _mode(sch) not in NCHW_MODES):
        raise ScheduleParamError(f"schedule_x86: shapes.{conv_key(sch)}: row_layout 'channels' needs epilogue "
                                 f"'row' and an NCHW output {NCHW_MODES}, not {chosen['epilogue']!r} and "
                                 f"{_mode(sch)!r}")
    parts = int(chosen["channel_parts"])
    if parts <= 0 or (blocks // tb) % parts:
        half = blocks // 2 * conv_lanes(params)
        whole_words = _mode(sch) != "bits" or half % 64 == 0
        rows = _extent(sch, n) * _extent(sch, oh)
        parts = 1 if serial_conv(sch) else default_channel_parts(rows, blocks // tb, whole_words)  # (one thread)
    return {"tile_pixels": tw, "tile_blocks": tb, "epilogue": chosen["epilogue"], "channel_parts": parts,
            "row_layout": chosen["row_layout"], "tile_scope": chosen["tile_scope"]}


def tile_scope_candidates(tile_pixels: int, tile_blocks: int, lanes: int) -> tuple:
    """The tile scopes worth measuring for a tile: "global" only where its uint64 accumulators fit
    under STACK_BYTES (else it comes from the workspace like "local")."""
    return TILE_SCOPES if register_scope(tile_pixels * tile_blocks * lanes * 8) == "global" else ("local",)


def _parallel_rows(sch: s_tir.Schedule, block, count: int = 2):
    """Fuse the first `count` loops of a block (batch and rows) and run them in parallel."""
    loops = sch.get_loops(block)[:count]
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    sch.parallel(fused)
    return fused


def schedule_binary_conv2d(sch: s_tir.Schedule, params) -> None:
    if pixel_lanes(sch):
        return schedule_pixel_lanes(sch, params)
    choice = conv_choice(sch, params)
    pad = sch.get_sblock("pad")
    counts = sch.get_sblock("popcount")
    conv = sch.get_sblock("conv")
    out = sch.get_sblock("output")

    _schedule_pad(sch, pad)

    n, oh, ow, b, v, r, s, k = sch.get_loops(counts)
    owo, owi = sch.split(ow, [None, choice["tile_pixels"]])
    part, bo, bi = sch.split(b, [choice["channel_parts"], None, choice["tile_blocks"]])
    taps = sch.fuse(s, k)  # kw and the input words: one run of contiguous words in input and weights
    # The parallel tasks: rows, or channel parts x rows, parts outermost: split evenly between threads,
    # each thread reads only its part's weights (Bi-Real-18's 512->512 7x7, 2 threads: 25.6 -> 24.5 us).
    sch.reorder(part, n, oh, owo, bo, r, taps, owi, bi, v)
    rows = sch.fuse(part, n, oh)
    serial = serial_conv(sch)
    if not serial:
        sch.parallel(rows)
    sch.unroll(owi)
    sch.unroll(bi)
    sch.vectorize(v)
    sch.set_scope(counts, 0, choice["tile_scope"])
    attach = owo if choice["epilogue"] == "pixels" else rows
    fused_epilogue = _output_fits_at(sch, conv, out, bo, attach)
    if fused_epilogue:
        sch.set_scope(conv, 0, "local")
    sch.reverse_compute_at(conv, bo)
    if fused_epilogue:
        sch.reverse_compute_at(out, attach)
    elif not serial:
        _parallel_rows(sch, out)
    sch.decompose_reduction(counts, r)
    sch.vectorize(sch.get_loops(conv)[-1])
    if (fused_epilogue and choice["epilogue"] == "row" and choice["row_layout"] == "channels"
            and _mode(sch) in NCHW_MODES):
        _channel_major_row(sch, conv)
    _schedule_conv_output(sch, out)


def serial_conv(sch: s_tir.Schedule) -> bool:
    """Whether the conv runs all its rows on one thread: below SERIAL_CONV_WORDS popcounted words
    (output pixels x output channels x kh x kw x input words), where a parallel loop costs more than the
    second thread gives back.

    TVM allocates a parallel loop's buffers in its body: each row then allocates and frees the row's conv
    results and, with tile_scope "local", the tile's accumulators (TVMBackendAllocWorkspace: every "local"
    buffer, whatever its size; a "global" one from STACK_BYTES on), where a serial loop does it once per
    call; about 30-45 ns per row on one thread (starting the region 0.01 us), a fifth of ResNet-20's 64->64
    8x8 conv (8 rows, 36864 words). One core, AVX-512, interleaved medians, us,
    parallel -> serial: 1 thread 64->64 8x8 1.75 -> 1.46, 32->64 s2 to 8x8 1.87 -> 1.57; 2 threads
    64->64 8x8 1.64-1.71 -> 1.53-1.56, 32->64 s2 1.68-1.79 -> 1.65-1.67 (serial is faster there too).
    From 73728 words the second thread wins: 2 threads 32->32 16x16 2.45-2.54 parallel, 2.85-2.89
    serial; 16->32 s2 to 16x16 2.64-2.84 parallel, 2.94-2.98 serial; these stay parallel."""
    words = 1
    for iv in sch.get(sch.get_sblock("popcount")).iter_vars:
        words *= int(iv.dom.extent)
    return words < SERIAL_CONV_WORDS


def _schedule_pad(sch: s_tir.Schedule, pad) -> None:
    """The padded copy of the input: serial up to SERIAL_PAD_WORDS words, else its outer axes in parallel
    (_parallel_rows: batch and rows; batch and input words for kernels_pixels' flat plane).

    A parallel region costs more to start than a small copy: Bi-Real-18's 512->512 7x7 conv (a 9x9x8 word
    input) on 2 threads 26.3 -> 25.4 us with a serial pad (1.80x -> 1.86x over one thread), ResNet-18's
    64->64 32x32 12.8 -> 12.2 us; a 58x58x1 input (Bi-Real's 56x56 layers) took the same time either way."""
    words = 1
    for iv in sch.get(pad).iter_vars:
        words *= int(iv.dom.extent)
    if words > SERIAL_PAD_WORDS:
        _parallel_rows(sch, pad)


def _channel_major_row(sch: s_tir.Schedule, conv) -> None:
    """The conv results of a row stored channel-major (n, y, block, lane, x), so that the NCHW output
    stage reads each channel's pixels as vectors; the tile's pixels and blocks unrolled, so that LLVM
    builds the transposed vectors from the tile's registers with shuffles, not one scalar per output
    (Bi-Real-18's 64->64 56x56 affine conv 79.5 -> 69.2 us with a 4x4 tile, one core)."""
    sch.transform_layout(conv, ("write", 0), lambda i, y, x, b, v: (i, y, b, v, x))
    for loop in sch.get_loops(conv)[-3:-1]:
        sch.unroll(loop)


def _output_fits_at(sch: s_tir.Schedule, conv, out, bo, attach) -> bool:
    """Whether the output stage can run under `attach` with every one of its iterations kept.

    reverse_compute_at infers the stage's loops from the region that the conv stage writes there; for
    "bits" with Cout not a multiple of 64 it drops iterations of the bit loop (seen in TVM 0.27), and for a
    part of the output channels that ends inside a word its loops get extents that are not constants; so
    this tries it on a copy and compares the iteration counts. False: the output stage stays a separate pass."""
    trial = sch.copy()
    trial.reverse_compute_at(conv, bo)
    trial.reverse_compute_at(out, attach)
    block = trial.get(out)
    total = 1
    for iv in block.iter_vars:
        total *= int(iv.dom.extent)
    loops = 1
    for loop in trial.get_loops(out):
        extent = trial.get(loop).extent
        if not isinstance(extent, tvm.tirx.IntImm):
            return False
        loops *= int(extent)
    return loops == total


def _schedule_conv_output(sch: s_tir.Schedule, out) -> None:
    """bits and bits_limits: the 64 values of a word unrolled (bits compares them, in vectors; bits_limits
    adds the bits its "conv" stage has put in place), and from UNROLLED_WORDS words on the words of a pixel
    unrolled too: left a loop, LLVM vectorises it across the words, one gather per bit (measured with
    "bits", before bits_limits; one core: VGG-Small's 128->256 16x16 50 -> 39 us, 256->512 8x8 44 -> 33 us,
    512->512 8x8 73 -> 62 us; with 2 words the loop was faster: 128->128 32x32 68 vs 77 us);
    int/affine (NCHW): the pixels of a channel row vectorised."""
    loops = sch.get_loops(out)
    iter_vars = sch.get(out).iter_vars
    if len(iter_vars) == 5:
        sch.unroll(loops[-1])
        words = int(iter_vars[3].dom.extent)
        if words >= UNROLLED_WORDS and _extent(sch, loops[-2]) == words:
            sch.unroll(loops[-2])
    elif _extent(sch, loops[-1]) > 1:
        sch.vectorize(loops[-1])


def pixel_lanes(sch: s_tir.Schedule) -> bool:
    """Whether the conv is kernels_pixels' (output pixels in the lanes): its "pad" stage carries the
    geometry annotation."""
    return kernels_pixels.GEOMETRY in sch.get(sch.get_sblock("pad")).annotations


def _pixel_mode(sch: s_tir.Schedule) -> str:
    """"bits" (NHWC words, the bit reduced) or "affine" (NCHW floats)."""
    reduces = any(iv.iter_type == tvm.tirx.IterVar.CommReduce for iv in sch.get(sch.get_sblock("output")).iter_vars)
    return "bits" if reduces else "affine"


def _flat(sch: s_tir.Schedule) -> bool:
    """Whether a pixel-lanes conv runs on the flat plane (kernels_pixels._flat_counts): counts (n, o, q)."""
    return len(sch.get(sch.get_sblock("popcount")).iter_vars) == 6


def _pixel_key(sch: s_tir.Schedule) -> str:
    hp, wp, oh, ow, *_ = _geometry(sch)
    _, cout, *_, kh, kw, cw = (int(iv.dom.extent) for iv in sch.get(sch.get_sblock("popcount")).iter_vars)
    return f"{hp}x{wp}x{cw}>{oh}x{ow}x{cout}:{kh}x{kw}:{_pixel_mode(sch)}-{'flat' if _flat(sch) else 'pixels'}"


def _geometry(sch: s_tir.Schedule) -> list[int]:
    """(H + 2*ph, W + 2*pw, OH, OW, sh, sw) of a pixel-lanes conv (kernels_pixels.GEOMETRY)."""
    return [int(d) for d in sch.get(sch.get_sblock("pad")).annotations[kernels_pixels.GEOMETRY]]


def _default_pixel_tile(sch: s_tir.Schedule):
    """PIXEL_TILES' (vectors, channels) for this conv's mode and stride."""
    mode = _pixel_mode(sch)
    return PIXEL_TILES["affine-strided" if mode == "affine" and max(_geometry(sch)[4:]) > 1 else mode]


def pixel_tile_extents(sch: s_tir.Schedule, lanes: int):
    """(vectors, channels) that a pixel-lanes tile's sides must divide: the vectors of an output
    row (of the plane on the flat layout), and the output channels (bits: those of one output word,
    gcd(Cout, 64), as a word's channels are split into whole tiles)."""
    _, cout, *pixels = (int(iv.dom.extent) for iv in sch.get(sch.get_sblock("popcount")).iter_vars[:-3])
    return pixels[-1] // lanes, math.gcd(cout, WORD_BITS) if _pixel_mode(sch) == "bits" else cout


def pixel_choice(sch: s_tir.Schedule, params) -> dict:
    """tile_pixels (output pixels, whole vectors of lanes), tile_blocks (here: output CHANNELS) and
    tile_scope of a pixel-lanes conv: its `shapes` entry, else PIXEL_TILES of its mode and stride, in scope
    "global" where it fits under STACK_BYTES; a side of the entry's tile that is not whole vectors or
    does not divide the extents falls back to the largest divisor within the default's side."""
    entry = (_param(params, "shapes") or {}).get(conv_key(sch), {})
    unknown = sorted(set(entry) - {"tile_pixels", "tile_blocks", "tile_scope"})
    if unknown:
        raise ScheduleParamError(f"schedule_x86: shapes.{conv_key(sch)}: unknown parameters {unknown} for a "
                                 "pixel-lanes conv; known: ['tile_pixels', 'tile_blocks', 'tile_scope']")
    lanes = conv_lanes(params)
    width, cout = pixel_tile_extents(sch, lanes)
    default = _default_pixel_tile(sch)
    pixels, channels = int(entry.get("tile_pixels", default[0] * lanes)), int(entry.get("tile_blocks", 0))
    vectors = pixels // lanes
    if vectors <= 0 or pixels % lanes or width % vectors:
        vectors = largest_divisor(width, default[0])
    if channels <= 0 or cout % channels:
        channels = largest_divisor(cout, default[1])
    scope = entry.get("tile_scope", register_scope(vectors * channels * lanes * 8))  # (uint64 accumulators)
    if scope not in TILE_SCOPES:
        raise ScheduleParamError(f"schedule_x86: {conv_key(sch)}: tile_scope must be one of {TILE_SCOPES}, "
                                 f"not {scope!r}")
    return {"tile_pixels": vectors * lanes, "tile_blocks": channels, "tile_scope": scope}


def schedule_pixel_lanes(sch: s_tir.Schedule, params) -> None:
    """A conv of kernels_pixels (output pixels in the lanes): a register tile of tile_pixels pixels x
    tile_blocks channels, the reduction (kh, then kw and the input words, unrolled) outside it, each
    input vector of pixels XORed with one broadcast weight word per channel (LLVM folds the broadcast
    into vpxorq's memory operand); rows (batch x output rows; on the flat plane groups of pixel tiles,
    _pixel_rows) in parallel unless serial_conv.

    affine: the tiles run per row, channel tile and pixel tile, each ending in its registers: y =
    offsets - 2*count in floats, * scale + bias, stored as a piece of each channel's output plane.
    bits: per row and pixel tile, the output words of those pixels are the outer loop; each word's
    channels (64, or Cout where fewer) run as tiles of tile_blocks, each comparing its counts with the
    limits and ORing the bits into the word's vector of pixels, which stays in a register until stored.
    One core, AVX-512, against the channel-lane conv with its tuned entry: ResNet-18's 64->64 32x32
    affine 24.2 -> 16.7 us, bits 18.3 -> 15.0 us, 128->256 s2 bits 8.9 -> 7.7 us; Bi-Real's 64->64
    56x56 affine 65.4 -> 50.4 us; VGG-Small dynamic's 128->256 16x16 affine 39.6 -> 29.1 us."""
    choice = pixel_choice(sch, params)
    lanes = conv_lanes(params)
    pad = sch.get_sblock("pad")
    if _flat(sch):
        _plane_rows(sch, pad)
    _schedule_pad(sch, pad)
    counts = sch.get_sblock("popcount")
    sch.compute_inline(sch.get_sblock("conv"))
    if _pixel_mode(sch) == "bits":
        _pixel_bits_tiles(sch, counts, choice, lanes)
    else:
        _pixel_affine_tiles(sch, counts, choice, lanes)
    sch.set_scope(counts, 0, choice["tile_scope"])


def _plane_rows(sch: s_tir.Schedule, pad) -> None:
    """The flat plane's pad stage as rows of OW words: its index m split into (m // OW, m % OW), which
    the simplifier then leaves out of each word's address and padding test."""
    ow = _geometry(sch)[3]
    sch.split(sch.get_loops(pad)[-1], [None, ow])


def _pixel_rows(sch: s_tir.Schedule, pixels: list, tile_pixels: int):
    """(row, x): the loops over output rows and over the pixels of a row, from a pixel-lanes conv's pixel
    loops (y, x); on the flat plane (q) a "row" is a group of whole tiles, at most FLAT_GROUP_PIXELS
    pixels where the tiles allow (the unit of parallel work, as a row elsewhere)."""
    if len(pixels) == 2:
        return pixels
    (q,) = pixels
    tiles = _extent(sch, q) // tile_pixels
    group = largest_divisor(tiles, max(1, FLAT_GROUP_PIXELS // tile_pixels))
    return sch.split(q, [None, group * tile_pixels])


def _pixel_affine_tiles(sch: s_tir.Schedule, counts, choice: dict, lanes: int) -> None:
    out = sch.get_sblock("output")
    n, o, *pixels, r, s, k = sch.get_loops(counts)
    y, x = _pixel_rows(sch, pixels, choice["tile_pixels"])
    xo, xi, xv = sch.split(x, [None, choice["tile_pixels"] // lanes, lanes])
    oo, oi = sch.split(o, [None, choice["tile_blocks"]])
    sch.reorder(n, y, oo, xo, r, s, k, oi, xi, xv)
    rows = sch.fuse(n, y)
    if not serial_conv(sch):
        sch.parallel(rows)
    for loop in (s, k, oi, xi):
        sch.unroll(loop)
    sch.vectorize(xv)
    sch.reverse_compute_at(out, xo)
    sch.decompose_reduction(counts, r)
    *_, channels, pixels = sch.get_loops(out)
    sch.unroll(channels)
    vectors, lane = sch.split(pixels, [None, lanes])
    sch.unroll(vectors)
    sch.vectorize(lane)


def _pixel_bits_tiles(sch: s_tir.Schedule, counts, choice: dict, lanes: int) -> None:
    out = sch.get_sblock("output")
    n, *pixels, word, bit = sch.get_loops(out)
    y, x = _pixel_rows(sch, pixels, choice["tile_pixels"])
    xo, xi, xv = sch.split(x, [None, choice["tile_pixels"] // lanes, lanes])
    bo, bi = sch.split(bit, [None, choice["tile_blocks"]])
    sch.reorder(n, y, xo, word, bo, bi, xi, xv)
    rows = sch.fuse(n, y)
    if not serial_conv(sch):
        sch.parallel(rows)
    sch.compute_at(counts, bo)
    # The tile's own loops below rows, xo, word and bo, made by compute_at: channels, pixels, then r, s, k;
    # compute_at leaves out those of extent 1.
    *_, kh, kw, cw = (int(iv.dom.extent) for iv in sch.get(counts).iter_vars)
    extents = {"channels": choice["tile_blocks"], "pixels": choice["tile_pixels"], "r": kh, "s": kw, "k": cw}
    loops = dict(zip([name for name, extent in extents.items() if extent > 1], sch.get_loops(counts)[4:]))
    vectors, lane = sch.split(loops["pixels"], [None, lanes])
    reduction = [loops[name] for name in ("r", "s", "k") if name in loops]
    channels = [loops["channels"]] if "channels" in loops else []
    sch.reorder(*reduction, *channels, vectors, lane)
    for loop in (*reduction[1:], *channels, vectors, bi, xi):
        sch.unroll(loop)
    sch.vectorize(lane)
    sch.vectorize(xv)
    if reduction:
        sch.decompose_reduction(counts, reduction[0])


def schedule_binarize_pack(sch: s_tir.Schedule, params) -> None:
    """Per chunk of pixels (H and W fused: an NCHW channel plane is contiguous) and word: the 64 channels'
    runs of those pixels, each compared in float vectors and added into the chunk's words, which stay in
    registers (lanes x accumulators uint64), then stored once.

    A vector holds 2 x lanes floats (one register of float32; its bits fill two registers of uint64), a
    chunk lanes x accumulators pixels: AVX-512 compares 16 pixels per instruction and keeps 128 pixels'
    words in 16 zmm. Long chunks matter on big planes: each visit of a channel reads 512 contiguous bytes,
    not one line 4 KB away from the last (VGG-Small 128x32x32: 9.7 -> 4.6 us, 256x16x16: 18 -> 2.4 us,
    one core; the row-wise schedule before compared one image row at a time and LLVM turned it into gathers).
    """
    block = sch.get_sblock("binarize_pack")
    n, h, w, k, bit = sch.get_loops(block)
    lanes = conv_lanes(params)
    chunk = _row_chunk(_extent(sch, h), _extent(sch, w), lanes * int(_param(params, "accumulators")))
    vector = largest_divisor(chunk, 2 * lanes)
    pixels = sch.fuse(h, w)
    outer, vectors, inner = sch.split(pixels, [None, chunk // vector, vector])
    sch.reorder(n, outer, k, bit, vectors, inner)
    sch.parallel(sch.fuse(n, outer))
    store = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(store, k)
    sch.vectorize(inner)
    sch.unroll(vectors)
    sch.unroll(bit)
    sch.decompose_reduction(block, bit)


def _row_chunk(height: int, width: int, limit: int) -> int:
    """The most pixels, at most limit, in a chunk of an H x W plane that is whole rows or a part of one
    row (a chunk that ends inside a row makes TVM store the words of a bounding box of rows: wrong)."""
    return max(d for d in range(1, height * width + 1)
               if d <= limit and (width % d == 0 or (d % width == 0 and height * width % d == 0)))


def schedule_packed_max_pool2d(sch: s_tir.Schedule, params) -> None:
    pool = sch.get_sblock("pool")
    out = sch.get_sblock("output")
    fused = _parallel_rows(sch, out)
    sch.compute_at(pool, fused)
