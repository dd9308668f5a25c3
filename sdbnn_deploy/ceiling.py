"""The popcount ceiling of this host: bit-MACs per second that one core sustains, measured now.

A binary conv does, per 64 bit-MACs, one XOR, one POPCNT and one ADD. The ceiling is that loop with
its operands in registers: a register tile of PIXELS broadcast input words against WEIGHT_VECTORS
weight vectors (16 independent accumulators, what a register-blocked conv keeps live), at the widest
popcount the CPU has:

    avx512-vpopcntq  AVX-512 VPOPCNTDQ: vpxorq + vpopcntq + vpaddq on 512-bit registers
    popcnt64         the POPCNT instruction on 64-bit general registers (AVX2 hosts, no vector popcount)

The loop is a small C program compiled on the fly with gcc and the matching -m flags, run on one core
(one process, one thread). Per iteration it loads PIXELS input words (the only memory traffic, from L1)
so the compiler cannot hoist the work out of the loop. Kernel efficiency (bench.py) is a layer's
achieved bit-MACs/s over this figure, measured in the same run.
"""
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from sdbnn_deploy.errors import UserError
from sdbnn_deploy.targets import _cpu_flags

PIXELS = 2
WEIGHT_VECTORS = 8

_PROLOGUE = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define PIXELS %(pixels)d
#define VECTORS %(vectors)d
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static uint64_t words[64];
"""

# Each body defines LANE_BITS and the loop; it prints "seconds bit_macs checksum".
_BODIES = {
    "avx512-vpopcntq": (["-mavx512f", "-mavx512vpopcntdq"], r"""
#include <immintrin.h>
int main(int argc, char **argv) {
    long iters = atol(argv[1]);
    for (int i = 0; i < 64; i++) words[i] = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1);
    __m512i w[VECTORS], acc[PIXELS * VECTORS];
    for (int v = 0; v < VECTORS; v++) w[v] = _mm512_set_epi64(v, 3 * v, 5 * v, 7 * v, 11 * v, 13 * v, 17 * v, ~(uint64_t)v);
    for (int a = 0; a < PIXELS * VECTORS; a++) acc[a] = _mm512_setzero_si512();
    double t0 = now();
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 4
        for (int p = 0; p < PIXELS; p++) {
            __m512i x = _mm512_set1_epi64((long long)words[(i * PIXELS + p) & 63]);
#pragma GCC unroll 16
            for (int v = 0; v < VECTORS; v++)
                acc[p * VECTORS + v] = _mm512_add_epi64(acc[p * VECTORS + v], _mm512_popcnt_epi64(_mm512_xor_si512(x, w[v])));
        }
    }
    double t = now() - t0;
    __m512i s = _mm512_setzero_si512();
    for (int a = 0; a < PIXELS * VECTORS; a++) s = _mm512_add_epi64(s, acc[a]);
    printf("%.9f %.0f %llu\n", t, (double)iters * PIXELS * VECTORS * 512, (unsigned long long)_mm512_reduce_add_epi64(s));
    return 0;
}
"""),
    "popcnt64": (["-mpopcnt", "-mno-avx", "-mno-sse4a"], r"""
int main(int argc, char **argv) {
    long iters = atol(argv[1]);
    for (int i = 0; i < 64; i++) words[i] = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1);
    uint64_t w[VECTORS], acc[PIXELS * VECTORS];
    for (int v = 0; v < VECTORS; v++) w[v] = 0xD1B54A32D192ED03ull * (uint64_t)(v + 1);
    for (int a = 0; a < PIXELS * VECTORS; a++) acc[a] = 0;
    double t0 = now();
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 4
        for (int p = 0; p < PIXELS; p++) {
            uint64_t x = words[(i * PIXELS + p) & 63];
#pragma GCC unroll 16
            for (int v = 0; v < VECTORS; v++) acc[p * VECTORS + v] += (uint64_t)__builtin_popcountll(x ^ w[v]);
        }
    }
    double t = now() - t0;
    uint64_t s = 0;
    for (int a = 0; a < PIXELS * VECTORS; a++) s += acc[a];
    printf("%.9f %.0f %llu\n", t, (double)iters * PIXELS * VECTORS * 64, (unsigned long long)s);
    return 0;
}
"""),
}
_LANE_BITS = {"avx512-vpopcntq": 512, "popcnt64": 64}


@dataclass(frozen=True)
class Ceiling:
    kind: str  # a key of _BODIES
    vector_bits: int
    accumulators: int
    bit_macs_per_s: float  # the best of the repeats: the sustainable peak
    median_bit_macs_per_s: float
    repeats: int

    def to_json(self) -> dict:
        return asdict(self)


def widest_kind(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """The widest XOR+POPCNT+ADD this host runs: avx512-vpopcntq, else popcnt64."""
    if platform.machine() not in ("x86_64", "AMD64"):
        raise UserError(f"the popcount ceiling is measured on x86-64 hosts only, not {platform.machine()}")
    flags = _cpu_flags(cpuinfo_path)
    if {"avx512f", "avx512_vpopcntdq"} <= flags:
        return "avx512-vpopcntq"
    if "popcnt" in flags:
        return "popcnt64"
    raise UserError("this x86-64 CPU has no POPCNT instruction: no popcount ceiling to measure")


def _build(kind: str, folder: Path) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise UserError("gcc not found: the popcount ceiling is compiled on the fly (apt-get install gcc)")
    flags, body = _BODIES[kind]
    source = folder / "ceiling.c"
    source.write_text(_PROLOGUE % {"pixels": PIXELS, "vectors": WEIGHT_VECTORS} + body)
    binary = folder / "ceiling"
    subprocess.run([gcc, "-O2", *flags, str(source), "-o", str(binary)], check=True, capture_output=True, text=True)
    return binary


def _run(binary: Path, iters: int) -> tuple[float, float]:
    out = subprocess.run([str(binary), str(iters)], check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def measure_ceiling(kind: str | None = None, seconds: float = 0.1, repeats: int = 5) -> Ceiling:
    """Measure the ceiling on one core: `repeats` runs of about `seconds` each; best and median."""
    kind = kind or widest_kind()
    with tempfile.TemporaryDirectory(prefix="sdbnn-ceiling-") as tmp:
        binary = _build(kind, Path(tmp))
        iters = 1 << 16
        while True:  # calibrate: about `seconds` per run
            elapsed, _ = _run(binary, iters)
            if elapsed >= seconds / 4 or iters >= 1 << 40:
                break
            iters *= 4
        iters = max(1, int(iters * seconds / max(elapsed, 1e-9)))
        rates = sorted(macs / t for t, macs in (_run(binary, iters) for _ in range(repeats)))
    return Ceiling(kind, _LANE_BITS[kind], PIXELS * WEIGHT_VECTORS, rates[-1], rates[len(rates) // 2], repeats)


if __name__ == "__main__":
    c = measure_ceiling()
    print(f"{c.kind}: {c.bit_macs_per_s / 1e12:.3f} T bit-MAC/s best, {c.median_bit_macs_per_s / 1e12:.3f} T median "
          f"(one core, {c.accumulators} accumulators, {os.cpu_count()} cores on this host)")
