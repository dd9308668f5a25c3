"""The one bit convention of sdbnn-deploy. Every packer, kernel and test uses these helpers.

- A binary value is +1 or -1. Bit 1 means -1 (the IEEE sign bit), bit 0 means +1.
- Words are uint64. Channel c lives in word c // 64, bit c % 64 (least significant bit first).
- Channels are packed innermost: activations (N, H, W, ceil(C/64)), weights (Cout, kh, kw, ceil(Cin/64)).
- Channels past C (the padding of the last word) hold bit 0 (+1) in both activations and weights.
  A padded channel then contributes XOR 0 to the popcount, so with K = C*kh*kw real taps
  dot = K - 2 * popcount(a XOR w) counts the real channels only.
"""
import numpy as np

WORD_BITS = 64
WORD_DTYPE = np.uint64


def words_for(channels: int) -> int:
    """Number of uint64 words that hold `channels` bits."""
    return (channels + WORD_BITS - 1) // WORD_BITS


def pack_signs(signs: np.ndarray) -> np.ndarray:
    """Pack +-1 values along the last axis into uint64 words (bit 1 = -1). Shape (..., C) -> (..., words)."""
    signs = np.asarray(signs)
    if not np.all((signs == 1) | (signs == -1)):
        raise ValueError("pack_signs takes only +1 and -1 values")
    c = signs.shape[-1]
    n = words_for(c)
    bits = np.zeros(signs.shape[:-1] + (n * WORD_BITS,), dtype=np.uint8)
    bits[..., :c] = signs < 0
    bits = bits.reshape(signs.shape[:-1] + (n, WORD_BITS)).astype(WORD_DTYPE)
    weights = np.left_shift(np.uint64(1), np.arange(WORD_BITS, dtype=WORD_DTYPE))
    return np.bitwise_or.reduce(bits * weights, axis=-1).astype(WORD_DTYPE)


def unpack_signs(words: np.ndarray, channels: int) -> np.ndarray:
    """Inverse of pack_signs: uint64 words (..., n) -> int8 +-1 values (..., channels)."""
    words = np.asarray(words, dtype=WORD_DTYPE)
    shifts = np.arange(WORD_BITS, dtype=WORD_DTYPE)
    bits = (words[..., None] >> shifts) & np.uint64(1)
    bits = bits.reshape(words.shape[:-1] + (words.shape[-1] * WORD_BITS,))[..., :channels]
    return (1 - 2 * bits.astype(np.int8)).astype(np.int8)
