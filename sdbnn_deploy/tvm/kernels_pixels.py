"""BinaryConv2d with output PIXELS in the vector lanes, for "affine" (NCHW floats) and "bits" outputs on x86.

The same rule as kernels.binary_conv2d (y = Cin*kh*kw - 2*popcount - correction, then y * scale + bias in
float32 with two roundings) and the same two functions (prepare_conv_weights, binary_conv2d), so that
the importer can emit either. What differs is what shares a vector: kernels puts V output CHANNELS of one
pixel in the lanes, so an NCHW output transposes every tile (as costly as the popcounts of a conv with one
or two input words per tap); here V consecutive output PIXELS of one channel share a vector, which is a
piece of the output plane as it is stored. Two layouts of the pixels:

- rows, where the output width is whole vectors: stage "pad" lays the padded input out word-planar per
  stride phase, xp[n, row, k, p, j] = input word k at padded column j*sw + p, so that the words of output
  pixels x .. x+V-1 at tap (r, s) are one contiguous run xp[n, y*sh + r, k, s % sw, x + s // sw + 0 ..
  V-1] for any stride; zero on the padding and past the input (bit 0 = +1, undone by the correction as in
  kernels);
- the flat plane, where it is not (_flat_counts): pixel q = y*OW + x, the plane padded to whole vectors
  (QP pixels), vectors running across the ends of rows, so that only the last vector of the plane holds
  padding (Bi-Real-18's 28x28 outputs: none; rows padded from 28 to 32 columns threw 12.5% of the
  popcounts away, 14x14: 2% against 12.5%);
- the weights stay as the ONNX node holds them, (Cout, kh, kw, Cw) uint64: one word is broadcast
  against V pixels;
- the correction varies along the lanes (the padded taps of each pixel), so it is laid out per pixel,
  already subtracted from the taps: offsets = Cin*kh*kw - correction as float32, per row class, channel
  and column on rows, per channel and pixel on the flat plane, so that y = offsets - 2*count is one
  multiply-subtract of floats per vector, exact (every value is an integer below 2**24), then
  y * scale + bias as kernels computes it.
"""
import numpy as np
from tvm import te, tirx

from sdbnn_deploy.bits import WORD_BITS, words_for
from sdbnn_deploy.tvm import kernels
from sdbnn_deploy.tvm.kernels import border_bounds, border_class

# The "pad" stage's annotation (H + 2*ph, W + 2*pw, OH, OW, sh, sw), which its layout does not show, for
# the schedule's shape key and default tile (schedule_x86.conv_key, pixel_choice).
GEOMETRY = "sdbnn.geometry"
MODES = ("affine", "bits_limits")  # the computes' modes (relax_import.compute_mode: ONNX "bits" -> "bits_limits")
# Input words per pixel up to which a conv is emitted with pixel lanes (applies): with more, the channel
# lanes' costs around the popcounts are small against them (Bi-Real-18's 256->256 14x14: 80%).
MAX_WORDS = 2


def applies(mode: str, words: int, out_hw, lanes: int) -> bool:
    """Whether a conv with ONNX `mode`, `words` input words per pixel and output size `out_hw` (OH, OW)
    gets pixel lanes (where the target asks for them): "affine" and "bits" outputs of at most MAX_WORDS
    words where less than half of the padded plane is padding (one core, AVX-512, against channel lanes,
    rows padded to whole vectors, 128->128: width 4, half padding, 1.25 -> 1.84 us; width 12 4.05 ->
    3.16, 7 4.35 -> 3.26; a 64->64 4x4 bits conv on the flat plane 0.56 -> 0.25 us)."""
    oh, ow = out_hw
    return mode in ("affine", "bits") and words <= MAX_WORDS and 2 * oh * ow > plane_size(out_hw, lanes)


def flat_layout(out_hw, lanes: int) -> bool:
    """Whether a conv runs on the flat output plane (_flat_counts): where its width is not whole vectors."""
    return out_hw[1] % lanes != 0


def plane_size(out_hw, lanes: int) -> int:
    """The pixels a conv computes per channel: OH*OW on rows, rounded up to whole vectors on the flat plane."""
    return -(-out_hw[0] * out_hw[1] // lanes) * lanes


def prepare_conv_weights(w: np.ndarray, in_channels: int, in_hw, pads, strides, lanes: int):
    """Packed weights (Cout,kh,kw,Cw) -> (the same words as uint64, offsets), offsets = Cin*kh*kw -
    kernels' correction (the sum of the +-1 weights of output channel o on the padded taps), float32:
    per row class, channel and column (row classes, Cout, OW) on rows; per channel and pixel (Cout, QP)
    on the flat plane (flat_layout), the pixels past OH*OW repeating the last one's."""
    w = np.ascontiguousarray(w, dtype=np.uint64)
    _, per_class = kernels.prepare_conv_weights(w, in_channels, in_hw, pads, strides, 1)  # (R, C, Cout)
    (kh, kw), taps = w.shape[1:3], in_channels * w.shape[1] * w.shape[2]
    oh, rows_top, rows_bottom = border_bounds(in_hw[0], kh, strides[0], pads[0])
    ow, top, bottom = border_bounds(in_hw[1], kw, strides[1], pads[1])
    columns = border_class(np.arange(ow), top, bottom, np.minimum, np.maximum)
    if not flat_layout((oh, ow), lanes):
        return w, np.ascontiguousarray((taps - per_class[:, columns, :].transpose(0, 2, 1)).astype(np.float32))
    rows = border_class(np.arange(oh), rows_top, rows_bottom, np.minimum, np.maximum)
    per_pixel = per_class[rows[:, None], columns[None, :], :].reshape(oh * ow, -1)  # (OH*OW, Cout)
    pixels = np.minimum(np.arange(plane_size((oh, ow), lanes)), oh * ow - 1)
    return w, np.ascontiguousarray((taps - per_pixel[pixels].T).astype(np.float32))


def fold_thresholds(offsets: np.ndarray, thresholds: np.ndarray, taps: int) -> np.ndarray:
    """The count limits of mode "bits_limits", kernels.fold_thresholds' rule on prepare_conv_weights'
    offsets (channels on the second axis from the end, either layout), as int64 like the counts they are
    compared with."""
    correction = np.moveaxis((taps - offsets).astype(np.int32), -2, -1)  # channels last, as kernels lays them
    return np.ascontiguousarray(np.moveaxis(kernels.fold_thresholds(correction, thresholds, taps), -1, -2),
                                dtype=np.int64)


def binary_conv2d(x: te.Tensor, weights: te.Tensor, offsets: te.Tensor, *extra: te.Tensor,
                  in_channels: int, out_channels: int, strides, pads, mode: str) -> te.Tensor:
    """BinaryConv2d of packed words x (N,H,W,Cw) with weights and offsets from prepare_conv_weights;
    mode "affine" (extra: scale, bias; output float32 NCHW) or "bits_limits" (no extra, `offsets` holds
    fold_thresholds' count limits; output NHWC words). On the flat plane (offsets per pixel) the outputs
    are (N, Cout, QP) and (N, QP, words): the importer keeps the first OH*OW pixels and reshapes them
    (relax_import._pixel_output), so that every tile stores whole vectors (a last
    vector stored in part made the output stage a separate pass with a guard per value: Bi-Real-18's
    128->128 28x28 53 -> 84 us, one core)."""
    if mode not in MODES:
        raise ValueError(f"BinaryConv2d with pixel lanes has modes {MODES}, not {mode!r}")
    n, h, w, cw = (int(d) for d in x.shape)
    cout, kh, kw, _ = (int(d) for d in weights.shape)
    (oh, top, bottom), (ow, _, _) = border_bounds(h, kh, strides[0], pads[0]), border_bounds(w, kw, strides[1], pads[1])
    geometry = {GEOMETRY: [h + 2 * pads[0], w + 2 * pads[1], oh, ow, *strides]}
    if len(offsets.shape) == 2:
        counts = _flat_counts(x, weights, strides, pads, oh, ow, int(offsets.shape[1]), geometry)
        return _output_stages(counts, lambda o, q: offsets[o, q], extra, out_channels, mode)
    counts = _row_counts(x, weights, strides, pads, oh, ow, geometry)
    return _output_stages(counts, lambda o, y, xx: offsets[border_class(y, top, bottom, tirx.min, tirx.max), o, xx],
                          extra, out_channels, mode)


def _padded_word(x: te.Tensor, i, y, xx, k):
    """x[i, y, xx, k] of packed words x (N,H,W,Cw), zero outside the input (bit 0 = +1, undone by the
    correction)."""
    _, h, w, _ = (int(d) for d in x.shape)
    inside = tirx.all(y >= 0, y < h, xx >= 0, xx < w)
    return tirx.if_then_else(inside, x[i, y, xx, k], kernels._u64(0))


def _row_counts(x: te.Tensor, weights: te.Tensor, strides, pads, oh: int, ow: int, geometry: dict) -> te.Tensor:
    """Stages "pad" (the module docstring's xp) and "popcount": counts (N, Cout, OH, OW)."""
    n, h, _, cw = (int(d) for d in x.shape)
    cout, kh, kw, _ = (int(d) for d in weights.shape)
    (sh, sw), (ph, pw) = strides, pads
    span = ow + (kw - 1) // sw  # columns j of one phase that the output reads

    def padded(i, row, k, p, j):
        return _padded_word(x, i, row - ph, j * sw + p - pw, k)

    xp = te.compute((n, h + 2 * ph, cw, sw, span), padded, name="pad", attrs=geometry)
    r, s, k = te.reduce_axis((0, kh), name="r"), te.reduce_axis((0, kw), name="s"), te.reduce_axis((0, cw), name="k")
    return te.compute(
        (n, cout, oh, ow),
        lambda i, o, y, xx: te.sum(tirx.popcount(xp[i, y * sh + r, k, s % sw, xx + s // sw] ^ weights[o, r, s, k]),
                                   axis=[r, s, k]),
        name="popcount")


def _flat_counts(x: te.Tensor, weights: te.Tensor, strides, pads, oh: int, ow: int, qp: int,
                 geometry: dict) -> te.Tensor:
    """Stages "pad" and "popcount" on the flat output plane: counts (N, Cout, QP), pixel q = y*OW + x.

    "pad" holds, per input word k, kernel column s and row phase a, a plane of rows of exactly OW words:
    xf[n, k, s, a, i*OW + j] = the padded input at row i*sh + a, column j*sw + s. Pixel q's input at tap
    (r, s) is then xf[n, k, s, r % sh, q + (r // sh) * OW], one contiguous run for V consecutive pixels
    wherever the rows end (kw copies of the input, against the popcounts' Cout*kh uses of each word); the
    pixels past OH*OW read rows past the input (zero words). The offsets are per pixel: the border
    classes change within a vector."""
    n, _, _, cw = (int(d) for d in x.shape)
    cout, kh, kw, _ = (int(d) for d in weights.shape)
    (sh, sw), (ph, pw) = strides, pads
    rows = -(-qp // ow) + (kh - 1) // sh  # plane rows i that the padded plane reads
    phases = min(sh, kh)  # row phases a = r % sh that taps read

    def plane(i, k, s, a, m):
        return _padded_word(x, i, (m // ow) * sh + a - ph, (m % ow) * sw + s - pw, k)

    xf = te.compute((n, cw, kw, phases, rows * ow), plane, name="pad", attrs=geometry)
    r, s, k = te.reduce_axis((0, kh), name="r"), te.reduce_axis((0, kw), name="s"), te.reduce_axis((0, cw), name="k")
    return te.compute(
        (n, cout, qp),
        lambda i, o, q: te.sum(tirx.popcount(xf[i, k, s, r % sh, q + (r // sh) * ow] ^ weights[o, r, s, k]),
                               axis=[r, s, k]),
        name="popcount")


def _output_stages(counts: te.Tensor, offset, extra, out_channels: int, mode: str) -> te.Tensor:
    """Stages "conv" and "output" after counts (N, Cout, *pixels), `offset(o, *pixel)` the offsets' (or
    the limits') element of output channel o at a pixel.

    "affine": y = offsets - 2*count in floats (exact: integers below 2**24), then y * scale + bias as
    kernels computes it; output (N, Cout, *pixels). "bits_limits": each output's bit in its place of the
    word (count > limit), then each word the OR (sum) of its 64 channels' bits; output (N, *pixels,
    ceil(Cout/64)), NHWC words like kernels' bits output."""
    n, cout, *pixels = (int(d) for d in counts.shape)
    if mode == "affine":
        scale, bias = extra
        two = tirx.const(2, "float32")
        conv = te.compute((n, cout, *pixels),
                          lambda i, o, *p: offset(o, *p) - two * counts[(i, o, *p)].astype("float32"), name="conv")
        return te.compute((n, out_channels, *pixels),
                          lambda i, o, *p: kernels._rounded(conv[(i, o, *p)] * scale[o]) + bias[o], name="output")

    def in_place(i, o, *p):
        place = (o % WORD_BITS).astype("uint64")
        return tirx.Select(counts[(i, o, *p)].astype("int64") > offset(o, *p), kernels._u64(1) << place,
                           kernels._u64(0))

    conv = te.compute((n, cout, *pixels), in_place, name="conv")
    # A single word of fewer than 64 channels adds only those (the others would be computed and dropped).
    bit = te.reduce_axis((0, min(WORD_BITS, out_channels)), name="bit")

    def word(i, *p_wd):
        *p, wd = p_wd
        return te.sum(tirx.if_then_else(wd * WORD_BITS + bit < out_channels, conv[(i, wd * WORD_BITS + bit, *p)],
                                        kernels._u64(0)), axis=bit)

    return te.compute((n, *pixels, words_for(out_channels)), word, name="output")
