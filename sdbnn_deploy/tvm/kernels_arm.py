"""BinaryConv2d with byte lanes, for NEON: uint8 partial sums, widened before a byte can overflow.

The same rule as kernels.binary_conv2d (y = Cin*kh*kw - 2*popcount - correction, then the output stage,
shared through kernels.conv_output_stage), the same two functions with the same signatures
(prepare_conv_weights, binary_conv2d), so the importer can use either module. What differs is how the
popcount is accumulated, so that LLVM emits `eor`, `cnt .16b` and `add .16b` and nothing else per 16 bytes,
and that the correction comes already subtracted from the taps (offsets = Cin*kh*kw - correction) and the
counts doubled (stage "popcount" holds 2*popcount), so that y = offset - counts (kernels.conv_output_stage
with offsets): in a Cin 64 3x3 conv's tile loop that saved 10 of 262 instructions (the taps' vector and
two instructions per pixel; the freed register ended 7 reloads of spilled inputs; rpi4 artifact):

- a "quad" is 16 bytes = 2 consecutive uint64 words of one pixel (input) or one output channel (weights);
  the word count is padded to whole quads with zero words, which XOR to 0 and count nothing;
- stage "pad" turns the input words into bytes (N, H+2ph, W+2pw, quads, 16), byte l of a quad being byte
  l%8 (bits 8(l%8)..8(l%8)+7) of word l//8, zero on the spatial padding;
- the weights are constants already laid out as bytes [ceil(Cout/V)][kh][kw][quads][V][16] (V output
  channels per block, the register tile's channel count);
- stage "popcount_bytes" sums popcount(input byte ^ weight byte) over a CHUNK of the reduction in uint8:
  one quad adds at most 8 to a byte lane, so a chunk holds at most MAX_QUADS_PER_CHUNK = 31 quads
  (31 * 8 = 248 <= 255) and a byte never wraps;
- stage "widen" (only where there are several chunks) adds each chunk's 16 uint8 partial sums, in
  adjacent pairs, into 8 uint16 lanes: NEON `uadalp` (pairwise add and accumulate long), one instruction
  per output and chunk (16 uint16 lanes took `uaddw` + `uaddw2` per chunk and two `uaddlv` at the end);
- stage "popcount" adds the lanes of each output into its count (int32, doubled) with one NEON `uaddlv`,
  the across-lanes add, of 16 uint8 lanes ("popcount_bytes" where there is one chunk) or 8 uint16 lanes
  ("widen"). It is called as the LLVM intrinsic: written as TE sums of halves, LLVM made a chain of
  halvings, lane moves and widenings of about 12 instructions per output, which for a one-quad tap
  (Cin <= 128, 9 popcounts per output at 3x3) cost more than the popcounts' adds. Where there is one chunk
  of at most 15 quads (Cin <= 128 at 3x3) and V = 4, the 4 channels of a pixel are summed together by a
  pairwise tree instead (_pixel_tree), which leaves their counts in one register; with an even output
  width or flattened pixels (below) one tree sums two pixels' (_pixel_pair_tree).

Where tiles of FLAT_TILE = 2 pixels do not divide the output width and there is more than one row
(flat_pixels: Bi-Real ResNet-18's 7x7 outputs, whose rows had 1-pixel tiles: 3.97 and 3.75 instructions
per 128 bit-MACs in the hot loop), the popcounts run on the flattened pixel axis p = y*OW + x,
padded to whole tiles (49 -> 50 pixels: 2% more popcounts): stage "planes" (_tap_planes) lays out, per
kernel row, the inputs of every pixel's taps, so that a tile reads pixels p and p + 1 the same way whether
or not they share a row; "popcount_bytes", "widen" and "popcount" have the axes (N, pixels, blocks, V, ...)
and stage "pixels" is the (N, OH, OW, blocks, V) view the output stage reads (each pixel's offsets from
its row and column's border classes, at the tile's end).

How the reduction (kh, kw, quads) is cut into chunks (`chunking`, the first that fits):
  "all":   kh*kw*quads <= 31: one chunk, nothing is widened before the end;
  "row":   kw*quads <= 31: one chunk per kernel row r;
  "quads": one chunk per tap (r, s) and group of at most 31 quads (quads padded to whole groups).
A uint16 lane sees at most 16 bits (two byte lanes) per quad and tap: kh*kw*quads*16 must stay <= 65535
(checked).
"""
import numpy as np
from tvm import te, tirx

from sdbnn_deploy.tvm.kernels import border_bounds, conv_output_stage
from sdbnn_deploy.tvm.kernels import prepare_conv_weights as prepare_word_weights

QUAD_BYTES = 16  # one 128-bit NEON register
WORDS_PER_QUAD = 2
MAX_QUADS_PER_CHUNK = 31  # 31 quads * at most 8 set bits per byte lane = 248 <= 255
HALF_QUAD_LANES = 8  # uint16 lanes in one 128-bit register: "widen" adds its 16 bytes in pairs into them
TREE_LANES = 4  # output channels per weight block that _pixel_tree sums together
FLAT_TILE = 2  # pixels per register tile on the flattened pixel axis (flat_pixels)


def chunking(kh: int, kw: int, quads: int):
    """(name, quads per group, groups): how the reduction is cut into uint8 chunks (module docstring)."""
    if kh * kw * 16 * quads > 0xFFFF:
        raise ValueError(f"binary conv {kh}x{kw} over {quads * 128} channels overflows uint16 byte-lane sums")
    if kh * kw * quads <= MAX_QUADS_PER_CHUNK:
        return "all", quads, 1
    if kw * quads <= MAX_QUADS_PER_CHUNK:
        return "row", quads, 1
    groups = -(-quads // MAX_QUADS_PER_CHUNK)
    per_group = -(-quads // groups)
    return "quads", per_group, groups


def padded_quads(kh: int, kw: int, words: int) -> int:
    """The number of quads the input and weights are laid out with (whole quads, whole chunk groups)."""
    quads = -(-words // WORDS_PER_QUAD)
    _, per_group, groups = chunking(kh, kw, quads)
    return per_group * groups


def prepare_conv_weights(w: np.ndarray, in_channels: int, in_hw, pads, strides, lanes: int):
    """Packed weights (Cout,kh,kw,Cw) -> (byte weights [ceil(Cout/V)][kh][kw][quads][V][16] uint8,
    offsets): offsets = Cin*kh*kw - the correction that kernels.prepare_conv_weights makes (V = lanes),
    so that the tile's end computes y = offset - 2*count (kernels.conv_output_stage with offsets)."""
    blocked, correction = prepare_word_weights(w, in_channels, in_hw, pads, strides, lanes)
    offsets = (in_channels * w.shape[1] * w.shape[2] - correction).astype(np.int32)
    blocks, kh, kw, cw, v = blocked.shape
    quads = padded_quads(kh, kw, cw)
    words = np.zeros((blocks, kh, kw, quads * WORDS_PER_QUAD, v), dtype="<u8")
    words[:, :, :, :cw] = blocked
    # (.., quad, word in quad, V) -> (.., quad, V, word in quad), then each word as its 8 bytes, low first.
    by_quad = words.reshape(blocks, kh, kw, quads, WORDS_PER_QUAD, v).transpose(0, 1, 2, 3, 5, 4)
    as_bytes = np.ascontiguousarray(by_quad).view(np.uint8)
    return as_bytes.reshape(blocks, kh, kw, quads, v, QUAD_BYTES), offsets


def _u8(value):
    return tirx.const(value, "uint8")


def _across_lanes(lanes: te.Tensor, idx: tuple, count: int):
    """Twice the int32 sum of lanes[idx + (0 .. count-1,)] (uint8 or uint16): one NEON `uaddlv`, doubled
    (stage "popcount" holds 2*popcount)."""
    bits = {"uint8": 8, "uint16": 16}[str(lanes.dtype)]
    return 2 * _intrin("int32", f"uaddlv.i32.v{count}i{bits}", lanes[idx + (tirx.Ramp(0, 1, count),)])


def _byte_pair(part: te.Tensor, idx: tuple, lane):
    """uint16 sum of bytes 2*lane and 2*lane+1 of part[idx]: lane `lane` of NEON `uaddlp` (pairwise add
    long) of the 16 bytes. The 8 lanes (unrolled by schedule_arm) extract from the same pure call, which
    LLVM computes once; summed into uint16 lanes it becomes one `uadalp`. Written as a sum of two strided
    byte loads, LLVM moved each byte through a general register (6.1 instead of 4.1 instructions per
    `cnt .16b` for a Cin 512 conv)."""
    pairs = _intrin("uint16x8", "uaddlp.v8i16.v16i8", part[idx + (tirx.Ramp(0, 1, QUAD_BYTES),)])
    return tirx.Shuffle([pairs], [lane])


def _pixel_tree(part: te.Tensor, i, y, x, b, v):
    """int32 twice the sum of the 16 byte lanes of part[i, y, x, b, v], one of the TREE_LANES channels of a
    weight block at one pixel, taken from a pairwise tree over all of them: _channel_pairs, then `addp .8h`
    of that with itself leaves the 4 counts in the low 4 lanes of one register (6 instructions, where one
    `uaddlv` per channel and 3 lane inserts to make the conv stage's vector took 7), doubled as a widening
    multiply by 2 (`umull`), which LLVM merges with the conv stage's subtraction from the offsets into one
    `umlsl` (the last pairwise add and the doubling had been a `uaddlp .4s` and an `add`). The channels
    extract lanes of the same pure calls, which LLVM computes once."""
    pairs = _channel_pairs(part, (i, y, x, b))
    counts = tirx.Shuffle([_intrin("uint16x8", "addp.v8i16", pairs, pairs)], list(range(TREE_LANES)))
    doubled = _intrin("int32x4", "umull.v4i32", counts, tirx.Broadcast(tirx.const(2, "uint16"), TREE_LANES))
    return tirx.Shuffle([doubled], [v])


def _pixel_pair_tree(part: te.Tensor, i, *pixel_b_v):
    """_pixel_tree's value for output column x from one tree over the two columns 2*(x//2) and
    2*(x//2) + 1 (the output width even, or x the flattened pixel; the schedule keeps them in one tile;
    pixel_b_v: (y, x, b, v), or flattened (x, b, v)): the last `addp .8h` adds
    the two pixels' _channel_pairs into one register, their 4 counts each in one half, where _pixel_tree
    takes one per pixel; one `uqadd .8h` of that with itself doubles all 8 (at most 2 * 2040: it never
    saturates), and LLVM subtracts each half from its pixel's offsets with `usubw` and `usubw2`. Per tile of
    2 pixels that is 2 instructions fewer than _pixel_tree's (ResNet-18's 64->64 3x3 conv, rpi4: 251 -> 250
    instructions per 72 `cnt .16b` in the tile loop, 64->128 stride 2 253 -> 251; LLVM made two `movi` of
    the 2 for `umlsl` and `umlsl2`, and split a plain add of the halves)."""
    *rows, x, b, v = pixel_b_v
    left = x // 2 * 2
    both = _intrin("uint16x8", "addp.v8i16", _channel_pairs(part, (i, *rows, left, b)),
                   _channel_pairs(part, (i, *rows, left + 1, b)))
    twice = _intrin("uint16x8", "uqadd.v8i16", both, both)
    halves = [tirx.Cast("int32x4", tirx.Shuffle([twice], list(range(k, k + TREE_LANES)))) for k in (0, TREE_LANES)]
    return tirx.if_then_else(x % 2 == 0, tirx.Shuffle([halves[0]], [v]), tirx.Shuffle([halves[1]], [v]))


def _channel_pairs(part: te.Tensor, idx: tuple):
    """uint16x8 of the halves of the counts of the TREE_LANES channels part[idx + (k,)] (lanes 2k and 2k+1:
    channel k): `addp .16b` of channels 0,1 and 2,3 (the caller makes sure a doubled byte cannot wrap),
    `uaddlp .8h` of each, then `addp .8h` of the two: 5 instructions."""
    a, b, c, d = (part[idx + (k, tirx.Ramp(0, 1, QUAD_BYTES))] for k in range(TREE_LANES))
    low = _intrin("uint16x8", "uaddlp.v8i16.v16i8", _intrin("uint8x16", "addp.v16i8", a, b))
    high = _intrin("uint16x8", "uaddlp.v8i16.v16i8", _intrin("uint8x16", "addp.v16i8", c, d))
    return _intrin("uint16x8", "addp.v8i16", low, high)


def _intrin(dtype: str, name: str, *args):
    """A pure call of the NEON intrinsic llvm.aarch64.neon.<name>."""
    return tirx.call_llvm_pure_intrin(dtype, f"llvm.aarch64.neon.{name}", *args)


def flat_pixels(out_hw) -> bool:
    """Whether binary_conv2d computes the popcounts on the flattened pixel axis (module docstring): an
    output width that tiles of FLAT_TILE pixels do not divide, and more than one row."""
    oh, ow = out_hw
    return ow % FLAT_TILE != 0 and oh > 1


def _tap_planes(xp: te.Tensor, out_hw, kernel, strides) -> te.Tensor:
    """Stage "planes" (N, kh, pixels, kw, quads, 16): element [i, r, p, s] is the input that tap (r, s) of
    flattened output pixel p = y*OW + x reads (padded input row y*sh + r, column x*sw + s; the pixels
    past OH*OW that pad them to whole tiles of FLAT_TILE read the padded input's rows clamped: their counts
    are never used, and zeros behind a guard took 24 instead of 19 instructions per pixel and kernel row
    at Cin 64). The taps of a kernel row are next to each other and so are two pixels', so that a tile's
    loads are `ldp` with immediate offsets, and the kernel row r is a constant stride. Planes per kernel column s and row phase r % sh (the padded input
    once, element p + (r // sh) * OW) made the hot loop compute each row's address (6 instructions per 48
    `cnt .16b`) and load one pixel's quads at a time (offsets past `ldp`'s range); read from stage "pad"
    (not inlined: its guards and byte shifts per element took 39 instructions per quad)."""
    n, hp, _, quads, _ = (int(d) for d in xp.shape)
    oh, ow = out_hw
    kh, kw = kernel
    sh, sw = strides
    pixels = -(-oh * ow // FLAT_TILE) * FLAT_TILE

    def element(i, r, p, s, q, byte):
        return xp[i, tirx.min(p // ow * sh + r, hp - 1), p % ow * sw + s, q, byte]

    return te.compute((n, kh, pixels, kw, quads, QUAD_BYTES), element, name="planes")


def binary_conv2d(x: te.Tensor, weights: te.Tensor, offsets: te.Tensor, *extra: te.Tensor,
                  in_channels: int, out_channels: int, strides, pads, mode: str) -> te.Tensor:
    """BinaryConv2d of packed words x (N,H,W,Cw) with byte weights and offsets from prepare_conv_weights."""
    n, h, w, cw = (int(d) for d in x.shape)
    blocks, kh, kw, quads, lanes, _ = (int(d) for d in weights.shape)
    name, per_group, groups = chunking(kh, kw, -(-cw // WORDS_PER_QUAD))
    assert per_group * groups == quads, "weights were not laid out by kernels_arm.prepare_conv_weights"
    sh, sw = strides
    ph, pw = pads
    oh, _, _ = border_bounds(h, kh, sh, ph)
    ow, _, _ = border_bounds(w, kw, sw, pw)
    tree = name == "all" and lanes == TREE_LANES and kh * kw * quads * 16 <= 0xFF  # a doubled byte lane fits
    flat = flat_pixels((oh, ow))

    def padded(i, y, xx, q, byte):
        word = q * WORDS_PER_QUAD + byte // 8
        inside = tirx.all(y >= ph, y < h + ph, xx >= pw, xx < w + pw, word < cw)
        value = x[i, y - ph, xx - pw, word] >> ((byte % 8) * 8).astype("uint64")
        return tirx.if_then_else(inside, value.astype("uint8"), _u8(0))

    xp = te.compute((n, h + 2 * ph, w + 2 * pw, quads, QUAD_BYTES), padded, name="pad")
    if flat:
        planes = _tap_planes(xp, (oh, ow), (kh, kw), strides)
        pixels = (int(planes.shape[2]),)

        def tap(i, pixel, r, s, q, byte):
            return planes[i, r, pixel[0], s, q, byte]
    else:
        pixels = (oh, ow)

        def tap(i, pixel, r, s, q, byte):
            return xp[i, pixel[0] * sh + r, pixel[1] * sw + s, q, byte]

    spatial = (n, *pixels, blocks, lanes)
    dims = len(spatial)

    def popcount(idx, r, s, q):  # idx: the spatial axes, then any of the chunk's, then the byte
        i, *pixel, b, v = idx[:dims]
        return tirx.popcount(tap(i, pixel, r, s, q, idx[-1]) ^ weights[b, r, s, q, v, idx[-1]])

    if name == "all":
        r, s, q = (te.reduce_axis((0, e), name=nm) for nm, e in (("r", kh), ("s", kw), ("q", quads)))
        part = te.compute(spatial + (QUAD_BYTES,), lambda *idx: te.sum(
            popcount(idx, r, s, q), axis=[r, s, q]), name="popcount_bytes")
        if tree:
            pixel_tree = _pixel_pair_tree if flat or ow % 2 == 0 else _pixel_tree
            counts = te.compute(spatial, lambda *idx: pixel_tree(part, *idx), name="popcount")
        else:
            counts = te.compute(spatial, lambda *idx: _across_lanes(part, idx, QUAD_BYTES), name="popcount")
    elif name == "row":
        s, q = te.reduce_axis((0, kw), name="s"), te.reduce_axis((0, quads), name="q")
        part = te.compute(spatial + (kh, QUAD_BYTES), lambda *idx: te.sum(
            popcount(idx, idx[dims], s, q), axis=[s, q]), name="popcount_bytes")
        r = te.reduce_axis((0, kh), name="r")
        widened = te.compute(spatial + (HALF_QUAD_LANES,), lambda *idx: te.sum(
            _byte_pair(part, idx[:dims] + (r,), idx[-1]), axis=[r]), name="widen")
    else:
        qq = te.reduce_axis((0, per_group), name="qq")
        part = te.compute(spatial + (kh, kw, groups, QUAD_BYTES), lambda *idx: te.sum(
            popcount(idx, idx[dims], idx[dims + 1], idx[dims + 2] * per_group + qq), axis=[qq]),
            name="popcount_bytes")
        r, s, g = (te.reduce_axis((0, e), name=nm) for nm, e in (("r", kh), ("s", kw), ("g", groups)))
        widened = te.compute(spatial + (HALF_QUAD_LANES,), lambda *idx: te.sum(
            _byte_pair(part, idx[:dims] + (r, s, g), idx[-1]), axis=[r, s, g]), name="widen")

    if name != "all":
        counts = te.compute(spatial, lambda *idx: _across_lanes(widened, idx, HALF_QUAD_LANES), name="popcount")
    if flat:  # the conv stage's (row, column) view of the flattened pixels (schedule_arm inlines it)
        counts = te.compute((n, oh, ow, blocks, lanes), lambda i, y, xx, b, v: counts[i, y * ow + xx, b, v],
                            name="pixels")
    return conv_output_stage(counts, offsets, *extra, in_channels=in_channels, out_channels=out_channels,
                             in_hw=(h, w), kernel=(kh, kw), strides=strides, pads=pads, mode=mode, offsets=True)
