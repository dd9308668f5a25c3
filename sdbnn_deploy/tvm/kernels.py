"""TVM tensor-expression (TE) computes of the sdbnn custom operators, one function per operator.

Each compute implements exactly the rule in the docstring of its sdbnn_deploy.ops module and is tested
against that module's numpy `reference`. They describe WHAT is computed; the per-target schedules
(sdbnn_deploy.tvm.schedule_x86, schedule_arm) decide HOW, working on the stages named in BLOCKS.

BinaryConv2d takes its weights as compile-time constants, prepared in numpy by `prepare_conv_weights`:
- re-laid out as [ceil(Cout/V)][kh][kw][Cw][V] (V = the schedule's `lanes`), so that one input word meets
  V output channels in one vector; output channels past Cout get zero words (they are never written out);
- the zero-padding correction: the kernel pads the activation words with 0 (bit 0 = +1), so each padded
  tap adds the sum of that tap's +-1 weights. `correction[row class][column class][o]` holds that sum over
  the padded taps of an output position, and y = Cin*kh*kw - 2*popcount - correction. Output rows (and
  columns) with the same padded taps share a class: see `border_class`.
Popcounts accumulate in uint64 and are narrowed to int32 once per output (never int16), except in mode
"bits_limits" (the importer's "bits" with kernels: relax_import.compute_mode), where the thresholds are
folded into the correction at prepare time (fold_thresholds) and the counts are compared unnarrowed.
"""
import numpy as np
import tvm
from tvm import te, tirx

from sdbnn_deploy.bits import WORD_BITS, unpack_signs, words_for

# Stage (block) names of each compute, in the order they run; schedules look blocks up by these names.
BLOCKS = {
    "BinarizePack": ("binarize_pack",),
    "BinaryConv2d": ("pad", "popcount", "conv", "output"),
    "PackedMaxPool2d": ("pool", "output"),
}


def _u64(value):
    return tirx.const(value, "uint64")


def _rounded(product):
    """A float32 product, rounded before anything is added to it.

    TVM's LLVM backend allows floating-point contraction everywhere, so y * scale + bias would become one
    fused multiply-add (one rounding), unlike the reference and onnxruntime (two roundings). An LLVM
    arithmetic fence keeps the two operations apart; it costs nothing at run time.
    """
    return tirx.call_llvm_pure_intrin("float32", "llvm.arithmetic.fence", product)


def binarize_pack(x: te.Tensor, shift: te.Tensor) -> te.Tensor:
    """X float32 (N,C,H,W) and shift (C,) or (N,C) -> uint64 (N,H,W,ceil(C/64)); bit 1 iff not X+shift > 0."""
    n, c, h, w = (int(d) for d in x.shape)
    per_sample = len(shift.shape) == 2
    bit = te.reduce_axis((0, WORD_BITS), name="bit")

    def word(i, y, xx, k):
        ch = k * WORD_BITS + bit
        # Channels past C (the last word's padding bits) must not be read: the test ch < c below does not
        # guard the loads (both sides of the And and of the Select are evaluated), so they read channel
        # min(ch, C-1). Select, not if_then_else: TVM scalarises an if_then_else in a vectorised loop.
        # The bit is set where NOT (X + shift > 0), written as the Select's else branch: TVM's simplifier
        # rewrites Not(a > 0) into a <= 0, which is false for NaN (the reference's NaN gives -1, bit 1).
        # X + shift > 0 is computed as X > -shift, one vector instruction fewer per value: the same for
        # every pair of floats (the rounded sum has the sign of the exact one and is 0 only where that is;
        # negation is exact; inf - inf and NaN give false on both sides).
        read = tirx.min(ch, c - 1)
        s = shift[i, read] if per_sample else shift[read]
        clear = tirx.any(ch >= c, x[i, read, y, xx] > -s)
        set_bit = tirx.Select(clear, _u64(0), _u64(1) << bit.var.astype("uint64"))
        return te.sum(set_bit, axis=bit)

    return te.compute((n, h, w, words_for(c)), word, name="binarize_pack")


def border_bounds(in_size: int, k: int, s: int, p: int):
    """(out_size, top, bottom_start): output positions < top or >= bottom_start have a tap on the padding."""
    out = (in_size + 2 * p - k) // s + 1
    top = min(-(-p // s), out)
    bottom_start = max(0, min(-(-(in_size + p - k + 1) // s), out))
    return out, top, bottom_start


def border_class(i, top: int, bottom_start: int, minimum=min, maximum=max):
    """Class of output position i along one axis: positions of one class have the same padded taps.

    min(i, top) + max(i - bottom_start + 1, 0) is non-decreasing in i and flat only across the interior,
    so every border position gets its own class and all interior positions share one.
    Works on ints (the defaults), numpy arrays (np.minimum, np.maximum) and TIR (tirx.min, tirx.max).
    """
    return minimum(i, top) + maximum(i - bottom_start + 1, 0)


def _axis_classes(in_size: int, k: int, s: int, p: int):
    """Per class along one axis: a (classes, k) bool table, True where tap t falls on the padding."""
    out, top, bottom_start = border_bounds(in_size, k, s, p)
    idx = np.arange(out)
    cls = border_class(idx, top, bottom_start, np.minimum, np.maximum)
    pos = idx[:, None] * s - p + np.arange(k)[None, :]
    on_pad = (pos < 0) | (pos >= in_size)
    table = np.zeros((cls.max() + 1, k), dtype=bool)
    table[cls] = on_pad
    assert np.array_equal(table[cls], on_pad), "border classes must not mix different padded taps"
    return table


def prepare_conv_weights(w: np.ndarray, in_channels: int, in_hw, pads, strides, lanes: int):
    """Packed weights (Cout,kh,kw,Cw) -> (blocked weights [ceil(Cout/V)][kh][kw][Cw][V], correction).

    correction is int32 (row classes, column classes, ceil(Cout/V)*V): the sum of the +-1 weights on the
    padded taps of an output position (see border_class), 0 for the padded output channels.
    """
    w = np.asarray(w, dtype=np.uint64)
    cout, kh, kw, cw = w.shape
    blocks = -(-cout // lanes)
    padded = np.zeros((blocks * lanes, kh, kw, cw), dtype=np.uint64)
    padded[:cout] = w
    blocked = np.ascontiguousarray(padded.reshape(blocks, lanes, kh, kw, cw).transpose(0, 2, 3, 4, 1))

    tap_sums = np.zeros((blocks * lanes, kh, kw), dtype=np.int64)
    tap_sums[:cout] = unpack_signs(w, in_channels).astype(np.int64).sum(axis=-1)
    rows = _axis_classes(in_hw[0], kh, strides[0], pads[0])
    cols = _axis_classes(in_hw[1], kw, strides[1], pads[1])
    on_pad = rows[:, None, :, None] | cols[None, :, None, :]  # (R, C, kh, kw)
    correction = np.einsum("abij,oij->abo", on_pad.astype(np.int64), tap_sums).astype(np.int32)
    return blocked, correction


def fold_thresholds(correction: np.ndarray, thresholds: np.ndarray, taps: int) -> np.ndarray:
    """The count limits of mode "bits_limits": int32 like correction, limit = floor((taps - correction -
    threshold) / 2) clipped to [-1, taps]; an output's bit is 1 (y < threshold) iff its count > limit.

    y < t  <=>  taps - 2*count - correction < t  <=>  2*count > L = taps - correction - t  <=>
    count > floor(L / 2); counts lie in [0, taps], so limits below -1 or above taps give the same bits.
    Computed in int64: no threshold overflows. Output channels past the thresholds get threshold 0 (never
    written out)."""
    padded = np.zeros(correction.shape[-1], dtype=np.int64)
    padded[:len(thresholds)] = thresholds
    limits = (taps - correction.astype(np.int64) - padded) // 2
    return np.clip(limits, -1, taps).astype(np.int32)


def binary_conv2d(x: te.Tensor, weights: te.Tensor, correction: te.Tensor, *extra: te.Tensor,
                  in_channels: int, out_channels: int, strides, pads, mode: str) -> te.Tensor:
    """BinaryConv2d on packed words; weights and correction as made by prepare_conv_weights.

    extra: () for modes "int" and "int_nhwc", (scale, bias) for "affine", (thresholds,) for "bits", () for
    "bits_limits" (the bits of "bits", its correction replaced by fold_thresholds' count limits).
    """
    n, h, w, cw = (int(d) for d in x.shape)
    blocks, kh, kw, _, lanes = (int(d) for d in weights.shape)
    sh, sw = strides
    ph, pw = pads
    oh, _, _ = border_bounds(h, kh, sh, ph)
    ow, _, _ = border_bounds(w, kw, sw, pw)

    def padded(i, y, xx, k):
        inside = tirx.all(y >= ph, y < h + ph, xx >= pw, xx < w + pw)
        return tirx.if_then_else(inside, x[i, y - ph, xx - pw, k], _u64(0))

    xp = te.compute((n, h + 2 * ph, w + 2 * pw, cw), padded, name="pad")
    r = te.reduce_axis((0, kh), name="r")
    s = te.reduce_axis((0, kw), name="s")
    k = te.reduce_axis((0, cw), name="k")
    counts = te.compute(
        (n, oh, ow, blocks, lanes),
        lambda i, y, xx, b, v: te.sum(
            tirx.popcount(xp[i, y * sh + r, xx * sw + s, k] ^ weights[b, r, s, k, v]), axis=[r, s, k]),
        name="popcount")
    return conv_output_stage(counts, correction, *extra, in_channels=in_channels, out_channels=out_channels,
                             in_hw=(h, w), kernel=(kh, kw), strides=strides, pads=pads, mode=mode)


def _clamped_threshold(thresholds: te.Tensor, o, out_channels: int, taps: int):
    """thresholds[o] clamped to [-taps-1, taps+1] (see conv_output_stage); lanes past Cout read the last."""
    return tirx.max(tirx.min(thresholds[tirx.min(o, out_channels - 1)], taps + 1), -taps - 1)


def conv_output_stage(counts: te.Tensor, correction: te.Tensor, *extra: te.Tensor, in_channels: int,
                      out_channels: int, in_hw, kernel, strides, pads, mode: str,
                      offsets: bool = False) -> te.Tensor:
    """Stages "conv" and "output" of BinaryConv2d from counts (N, OH, OW, blocks, lanes), the popcount of
    (input XOR weights) of every output in any unsigned dtype: y = taps - 2*count - correction, then the
    output of `mode` (see binary_conv2d). With `offsets` (kernels_arm's form) the correction array holds
    taps - correction and the counts hold twice the popcount: y = offset - counts, one subtraction and one
    constant fewer per output vector in the tile, and the doubling where it is free (kernels_arm's pixel
    trees: for one column a widening multiply, which LLVM merges with the subtraction into `umlsl`; for a
    pair of columns one `uqadd .8h`, subtracted with `usubw`/`usubw2`); for "bits" a stage
    "offsets_bits" subtracts the clamped thresholds from the offsets once per call (in the tile, their
    loads and clamps took 7 instructions of a Cin 128 tile's 266). Not with "bits_limits", whose array
    holds count limits.

    For "bits" the "conv" stage gives y - threshold, in the vectors of its lanes, so that the output stage
    compares with 0: comparing with thresholds[o] there, LLVM kept the 64 thresholds of a word as scalars
    and rebuilt vectors from them for every tile (ResNet-18's 64->64 32x32 bits conv, one core: 23.9 ->
    21.8 us). Thresholds are clamped to [-taps-1, taps+1] (|y| <= taps: the same bits), so that y - threshold
    cannot overflow int32. Lanes past Cout read the last threshold; their bits are never set.

    For "bits_limits" (correction: fold_thresholds' count limits) the "conv" stage gives each output's bit
    already shifted to its place in the word (count > limit: one vector compare of the counts, in their
    own width, per block), so that the output stage only adds a word's 64 values: one vertical sum of
    vectors and one horizontal. The sign tests of "bits" unrolled into shifts by 63 - bit that LLVM
    vectorised in misaligned groups (ResNet-18's 64->64 32x32, one core: 22.3 -> 21.2 us; 64->128 s2
    10.3 -> 9.3 us)."""
    n, oh, ow, blocks, lanes = (int(d) for d in counts.shape)
    h, w = in_hw
    kh, kw = kernel
    sh, sw = strides
    ph, pw = pads
    _, top_h, bot_h = border_bounds(h, kh, sh, ph)
    _, top_w, bot_w = border_bounds(w, kw, sw, pw)
    taps = in_channels * kh * kw
    if mode == "bits_limits" and WORD_BITS % lanes:
        raise ValueError(f"BinaryConv2d mode 'bits_limits' needs lanes that divide {WORD_BITS}, not {lanes}")
    if mode == "bits_limits" and offsets:
        raise ValueError("BinaryConv2d mode 'bits_limits' takes count limits, not offsets")
    if mode == "bits" and offsets:  # the thresholds subtracted from the offsets once per call, not per tile
        correction = te.compute(correction.shape, lambda a, c, o: correction[a, c, o] - _clamped_threshold(
            extra[0], o, out_channels, taps), name="offsets_bits")

    def conv(i, y, xx, b, v):
        corr = correction[border_class(y, top_h, bot_h, tirx.min, tirx.max),
                          border_class(xx, top_w, bot_w, tirx.min, tirx.max), b * lanes + v]
        if mode == "bits_limits":  # the output's bit, already in its place of the word (see fold_thresholds)
            wide = "int64" if str(counts.dtype) == "uint64" else "int32"
            place = (b % (WORD_BITS // lanes)) * lanes + v
            return tirx.Select(counts[i, y, xx, b, v].astype(wide) > corr.astype(wide),
                               _u64(1) << place.astype("uint64"), _u64(0))
        if mode == "bits" and not offsets:  # y - threshold: the output stage then only tests signs (see below)
            corr = corr + _clamped_threshold(extra[0], b * lanes + v, out_channels, taps)
        if offsets:
            return corr - counts[i, y, xx, b, v].astype("int32")
        return taps - 2 * counts[i, y, xx, b, v].astype("int32") - corr

    y_blocked = te.compute((n, oh, ow, blocks, lanes), conv, name="conv")

    def at(i, o, y, xx):
        return y_blocked[i, y, xx, o // lanes, o % lanes]

    if mode == "int":
        return te.compute((n, out_channels, oh, ow), at, name="output")
    if mode == "int_nhwc":  # int, channels last: the results' own order, stored without a transposition
        return te.compute((n, oh, ow, out_channels), lambda i, y, xx, o: at(i, o, y, xx), name="output")
    if mode == "affine":
        scale, bias = extra
        return te.compute((n, out_channels, oh, ow),
                          lambda i, o, y, xx: _rounded(at(i, o, y, xx).astype("float32") * scale[o]) + bias[o],
                          name="output")
    if mode == "bits_limits":  # the OR (sum) of the bits that the "conv" stage has put in place
        bit = te.reduce_axis((0, WORD_BITS), name="bit")
        return te.compute((n, oh, ow, words_for(out_channels)), lambda i, y, xx, wd: te.sum(
            tirx.if_then_else(wd * WORD_BITS + bit < out_channels, at(i, wd * WORD_BITS + bit, y, xx), _u64(0)),
            axis=bit), name="output")
    if mode == "bits":  # bit 1 where y < threshold: where the "conv" stage is negative
        bit = te.reduce_axis((0, WORD_BITS), name="bit")

        def word(i, y, xx, wd):
            o = wd * WORD_BITS + bit
            negative = tirx.if_then_else(o < out_channels, at(i, o, y, xx) < 0, False)
            return te.sum(tirx.Select(negative, _u64(1) << bit.var.astype("uint64"), _u64(0)), axis=bit)

        return te.compute((n, oh, ow, words_for(out_channels)), word, name="output")
    raise ValueError(f"BinaryConv2d mode must be 'int', 'int_nhwc', 'affine', 'bits' or 'bits_limits', "
                     f"not {mode!r}")


def packed_max_pool2d(x: te.Tensor, min_mask: te.Tensor, *, kernel_shape, strides) -> te.Tensor:
    """Max-pool (AND of bits) or, where min_mask has bit 1, min-pool (OR of bits) of packed words.

    With m the mask word: OR(x) = ~AND(~x), so both are m ^ AND(x ^ m) over the window.
    """
    n, h, w, cw = (int(d) for d in x.shape)
    kh, kw = kernel_shape
    sh, sw = strides
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    all_and = te.comm_reducer(lambda a, b: a & b, lambda dtype: tirx.bitwise_not(tirx.const(0, dtype)),
                              name="all_and")
    r = te.reduce_axis((0, kh), name="r")
    s = te.reduce_axis((0, kw), name="s")
    pooled = te.compute((n, oh, ow, cw),
                        lambda i, y, xx, k: all_and(x[i, y * sh + r, xx * sw + s, k] ^ min_mask[k], axis=[r, s]),
                        name="pool")
    return te.compute((n, oh, ow, cw), lambda i, y, xx, k: pooled[i, y, xx, k] ^ min_mask[k], name="output")
