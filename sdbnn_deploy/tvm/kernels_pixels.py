"""BinaryConv2d with output PIXELS in the vector lanes, for "affine" (NCHW floats) and "bits" outputs on x86.

The same rule as kernels.binary_conv2d (y = Cin*kh*kw - 2*popcount - correction, then y * scale + bias in
float32 with two roundings) and the same two functions (prepare_conv_weights, binary_conv2d), so that
the importer can emit either. What differs is what shares a vector: kernels puts V output CHANNELS of one
pixel in the lanes, so an NCHW output transposes every tile (as costly as the popcounts of a conv with one
or two input words per tap); here V consecutive output PIXELS of one channel share a vector, which is a
piece of the output row as it is stored:

- stage "pad" lays the padded input out word-planar per stride phase, xp[n, row, k, p, j] = input word k
  at padded column j*sw + p, so that the words of output pixels x .. x+V-1 at tap (r, s) are one
  contiguous run xp[n, y*sh + r, k, s % sw, x + s // sw + 0 .. V-1] for any stride; zero on the padding
  and past the input (bit 0 = +1, undone by the correction as in kernels);
- the weights stay as the ONNX node holds them, (Cout, kh, kw, Cw) uint64: one word is broadcast
  against V pixels;
- the output width is padded to whole vectors (OWp, a multiple of V): "affine" stores rows of OWp
  columns (the importer slices the OW columns off), "bits" needs OW = OWp (applies);
- the correction varies along the lanes (the padded taps of each column), so it is laid out per column,
  already subtracted from the taps: offsets[row class][channel][column] = Cin*kh*kw - correction as
  float32 (OWp columns), so that y = offsets - 2*count is one multiply-subtract of floats per vector, exact
  (every value is an integer below 2**24), then y * scale + bias as kernels computes it.
"""
import numpy as np
from tvm import te, tirx

from sdbnn_deploy.bits import WORD_BITS, words_for
from sdbnn_deploy.tvm import kernels
from sdbnn_deploy.tvm.kernels import border_bounds, border_class

PADDED_WIDTH = "sdbnn.padded_width"  # the "pad" stage's annotation: W + 2*pw
MODES = ("affine", "bits_limits")  # the computes' modes (relax_import.compute_mode: ONNX "bits" -> "bits_limits")
# Input words per pixel up to which a conv is emitted with pixel lanes (applies): with more, the channel
# lanes' costs around the popcounts are small against them (Bi-Real-18's 256->256 14x14: 80%).
MAX_WORDS = 2


def applies(mode: str, words: int, out_width: int, lanes: int) -> bool:
    """Whether a conv with ONNX `mode`, `words` input words per pixel and output width `out_width` gets
    pixel lanes (where the target asks for them): "affine" and "bits" outputs of at most MAX_WORDS words;
    for "bits" the output width a whole number of vectors; "affine" stores whole vectors of a padded row
    (see binary_conv2d), where the padding is less than half the row (one core, AVX-512, against channel
    lanes: 128->128 at width 4, half padding, 1.25 -> 1.84 us; width 12 4.05 -> 3.16, 7 4.35 -> 3.26)."""
    if mode == "affine":
        return words <= MAX_WORDS and 2 * out_width > padded_width(out_width, lanes)
    return mode == "bits" and words <= MAX_WORDS and out_width % lanes == 0


def padded_width(out_width: int, lanes: int) -> int:
    """OWp: the output width rounded up to whole vectors of `lanes` pixels."""
    return -(-out_width // lanes) * lanes


def prepare_conv_weights(w: np.ndarray, in_channels: int, in_hw, pads, strides, lanes: int):
    """Packed weights (Cout,kh,kw,Cw) -> (the same words as uint64, offsets (row classes, Cout, OWp)).

    offsets[a, o, x] = Cin*kh*kw - kernels' correction of row class a and the class of column x (the sum
    of the +-1 weights of output channel o on the padded taps), float32; columns past OW repeat the last
    column's."""
    w = np.ascontiguousarray(w, dtype=np.uint64)
    _, per_class = kernels.prepare_conv_weights(w, in_channels, in_hw, pads, strides, 1)  # (R, C, Cout)
    kw, sw, pw = w.shape[2], strides[1], pads[1]
    ow, top, bottom = border_bounds(in_hw[1], kw, sw, pw)
    columns = np.minimum(np.arange(padded_width(ow, lanes)), ow - 1)
    classes = border_class(columns, top, bottom, np.minimum, np.maximum)
    taps = in_channels * w.shape[1] * kw
    return w, np.ascontiguousarray((taps - per_class[:, classes, :].transpose(0, 2, 1)).astype(np.float32))


def fold_thresholds(offsets: np.ndarray, thresholds: np.ndarray, taps: int) -> np.ndarray:
    """The count limits of mode "bits_limits", kernels.fold_thresholds' rule on prepare_conv_weights'
    offsets (row classes, Cout, columns), as int64 like the counts they are compared with."""
    correction = (taps - offsets).astype(np.int32).transpose(0, 2, 1)  # channels last, as kernels lays them
    return np.ascontiguousarray(kernels.fold_thresholds(correction, thresholds, taps).transpose(0, 2, 1),
                                dtype=np.int64)


def binary_conv2d(x: te.Tensor, weights: te.Tensor, offsets: te.Tensor, *extra: te.Tensor,
                  in_channels: int, out_channels: int, strides, pads, mode: str) -> te.Tensor:
    """BinaryConv2d of packed words x (N,H,W,Cw) with weights and offsets from prepare_conv_weights;
    mode "affine" (extra: scale, bias; output NCHW float32 with rows of the padded width OWp: the
    importer slices the OW columns off, a slice that Relax fuses into the consumer, so that every tile
    stores whole vectors; a last vector stored in part made the output stage a separate pass with a guard
    per value: Bi-Real-18's 128->128 28x28 53 -> 84 us, one core) or "bits_limits" (no extra, `offsets`
    holds fold_thresholds' count limits; output NHWC words, OW columns)."""
    if mode not in MODES:
        raise ValueError(f"BinaryConv2d with pixel lanes has modes {MODES}, not {mode!r}")
    n, h, w, cw = (int(d) for d in x.shape)
    cout, kh, kw, _ = (int(d) for d in weights.shape)
    _, _, owp = (int(d) for d in offsets.shape)
    sh, sw = strides
    ph, pw = pads
    oh, top, bottom = border_bounds(h, kh, sh, ph)
    ow, _, _ = border_bounds(w, kw, sw, pw)
    span = owp + (kw - 1) // sw  # columns j of one phase that the padded output width reads

    def padded(i, row, k, p, j):
        y, xx = row - ph, j * sw + p - pw
        inside = tirx.all(y >= 0, y < h, xx >= 0, xx < w)
        return tirx.if_then_else(inside, x[i, y, xx, k], kernels._u64(0))

    # The padded width, which the layout does not show, for the schedule's shape key (schedule_x86.conv_key).
    xp = te.compute((n, h + 2 * ph, cw, sw, span), padded, name="pad", attrs={PADDED_WIDTH: w + 2 * pw})
    r, s, k = te.reduce_axis((0, kh), name="r"), te.reduce_axis((0, kw), name="s"), te.reduce_axis((0, cw), name="k")
    counts = te.compute(
        (n, cout, oh, owp),
        lambda i, o, y, xx: te.sum(tirx.popcount(xp[i, y * sh + r, k, s % sw, xx + s // sw] ^ weights[o, r, s, k]),
                                   axis=[r, s, k]),
        name="popcount")
    if mode == "bits_limits":
        return _bits_output(counts, offsets, out_channels, ow, top, bottom)
    two = tirx.const(2, "float32")
    conv = te.compute(
        (n, cout, oh, owp),
        lambda i, o, y, xx: offsets[border_class(y, top, bottom, tirx.min, tirx.max), o, xx]
        - two * counts[i, o, y, xx].astype("float32"),
        name="conv")
    scale, bias = extra
    return te.compute((n, out_channels, oh, owp),
                      lambda i, o, y, xx: kernels._rounded(conv[i, o, y, xx] * scale[o]) + bias[o],
                      name="output")


def _bits_output(counts: te.Tensor, limits: te.Tensor, out_channels: int, out_width: int, top: int, bottom: int):
    """Stages "conv" and "output" of mode "bits_limits": each output's bit in its place of the word
    (count > limit, limits from fold_thresholds), then each word the OR (sum) of its 64 channels' bits,
    NHWC words (N, OH, OW, ceil(Cout/64)) like kernels' bits output."""
    n, cout, oh, owp = (int(d) for d in counts.shape)

    def in_place(i, o, y, xx):
        limit = limits[border_class(y, top, bottom, tirx.min, tirx.max), o, xx]
        place = (o % WORD_BITS).astype("uint64")
        return tirx.Select(counts[i, o, y, xx].astype("int64") > limit, kernels._u64(1) << place, kernels._u64(0))

    conv = te.compute((n, cout, oh, owp), in_place, name="conv")
    # A single word of fewer than 64 channels adds only those (the others would be computed and dropped).
    bit = te.reduce_axis((0, min(WORD_BITS, out_channels)), name="bit")
    return te.compute(
        (n, oh, out_width, words_for(out_channels)),
        lambda i, y, xx, wd: te.sum(tirx.if_then_else(wd * WORD_BITS + bit < out_channels,
                                                      conv[i, wd * WORD_BITS + bit, y, xx], kernels._u64(0)),
                                    axis=bit),
        name="output")
