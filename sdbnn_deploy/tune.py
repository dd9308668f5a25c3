"""tune: choose the binary conv's schedule parameters by measuring them (our own small search;
TVM's MetaSchedule crashes in this TVM build, see tvm-notes.md).

For each BinaryConv2d shape (the representative layers of VGG-Small and ResNet-18 for CIFAR in SHAPES, or
the layers of one model for `compile --tune`), every candidate of the target's schedule module's
per-shape parameters (SEARCH_SPACES) is scheduled, compiled for the target and timed on one thread:

    x86 (schedule_x86)  tile_pixels x tile_blocks   register tiles whose sides divide the output width and
                                                    the weight blocks, with between half and all of the
                                                    target's `accumulators`
                        epilogue                    "pixels" or "row" (where the output stage runs)
                        row_layout                  with "row" and an int/affine output, also "channels"
                        tile_scope                  "local", and "global" for tiles below
                                                    sdbnn_deploy.tvm.STACK_BYTES (tile_scope_candidates)
                        (pixel lanes, kernels_pixels: tile_pixels x tile_blocks = pixels x output channels
                        with between half and all of the accumulators, and both tile scopes:
                        pixel_candidates)
    arm (schedule_arm)  tile_pixels x tile_vectors  register tiles whose sides divide the output width and
                                                    a weight block's vectors (schedule_arm.tile_extents),
                                                    with a quarter to all of its ACCUMULATORS q registers

Where it is timed (Measure, one search for both): x86 targets this host's CPU runs, in this process; a
board (Raspberry Pi, or any device serving `python -m tvm.exec.rpc_server`) over TVM RPC (connected and
checked by sdbnn_deploy.remote), each candidate exported as a shared library with the target's compiler
(compile.export_library: aarch64-linux-gnu-gcc for the Pis), uploaded and timed there by time_evaluator.

Each candidate's output must equal the default schedule's output on the same random inputs (schedules
only reorder work; a candidate that differs is an error). Candidates are timed in interleaved rounds of
short repeats; on this host the minimum counts (on a shared machine other jobs only ever add time), on a
board the median. The winner per shape, keyed by the schedule module's conv_key, goes to the target's
[params.shapes] table (write_params, atomically), so that later compiles are reproducible and do not
search. An emulated board (sdbnn_deploy.board) gives exact results but times that mean nothing.
"""
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm import te

from sdbnn_deploy.compile import export_library
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.remote import DEFAULT_TIMEOUT, Session, connect
from sdbnn_deploy.targets import _cpu_flags, get_target, target_path, tomllib, user_shapes_path
from sdbnn_deploy.tvm import OP_ATTR, conv_kernels, kernels, pixel_lanes, schedule_arm, schedule_module, schedule_x86
from sdbnn_deploy.tvm.kernels import border_bounds
from sdbnn_deploy.tvm.relax_import import conv_constants, conv_module

# (Cin, Cout, kernel, stride, pad, input H=W, output mode): the binary convs of VGG-Small and ResNet-18 (CIFAR).
SHAPES = [
    (128, 128, 3, 1, 1, 32, "bits"), (128, 256, 3, 1, 1, 16, "bits"), (256, 256, 3, 1, 1, 16, "bits"),
    (256, 512, 3, 1, 1, 8, "bits"), (128, 128, 3, 1, 1, 32, "int"), (256, 256, 3, 1, 1, 16, "int"),
    (512, 512, 3, 1, 1, 8, "int"),
    (64, 64, 3, 1, 1, 32, "bits"), (64, 64, 3, 1, 1, 32, "affine"), (64, 128, 3, 2, 1, 32, "bits"),
    (128, 128, 3, 1, 1, 16, "affine"), (128, 256, 3, 2, 1, 16, "bits"), (256, 256, 3, 1, 1, 8, "bits"),
    (256, 256, 3, 1, 1, 8, "affine"), (256, 512, 3, 2, 1, 8, "bits"), (512, 512, 3, 1, 1, 4, "bits"),
    (512, 512, 3, 1, 1, 4, "affine"),
]
# Seconds a board keeps a search's RPC session (remote.SESSION_TIMEOUT is for one profile): a model's
# shapes times their candidates, each compiled here and uploaded, can take more than ten minutes.
SEARCH_SESSION_TIMEOUT = 3 * 3600
# What each x86 target needs from the CPU (/proc/cpuinfo flags) to run here.
REQUIRED_FLAGS = {"x86-avx512": {"avx512f", "avx512_vpopcntdq"}, "x86-avx2": {"avx2", "popcnt"}, "x86-generic": set()}


@dataclass
class Result:
    key: str  # the schedule module's conv_key
    params: dict  # the winner: x86 tile_pixels, tile_blocks, epilogue; arm tile_pixels, tile_vectors
    seconds: float  # the winner's time
    default_seconds: float  # the time with the target's global params (no shapes table)
    candidates: int


def runnable(target: str, cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """Whether this host's CPU runs code built for the x86 target `target`."""
    if target not in REQUIRED_FLAGS:
        raise UserError(f"--tune: only the x86 targets {', '.join(REQUIRED_FLAGS)} can be tuned on this host, "
                        f"not {target!r}")
    return REQUIRED_FLAGS[target] <= _cpu_flags(cpuinfo_path)


def conv_primfunc(cin, cout, k, stride, pad, hw, mode, lanes: int, conv=kernels, pixels: bool = False
                  ) -> tvm.tirx.PrimFunc:
    """The unscheduled BinaryConv2d PrimFunc of one shape (mode: the ONNX node's), as the importer emits
    and tags it; `conv` is the module with its compute (kernels, or kernels_arm for byte lanes:
    sdbnn_deploy.tvm.conv_kernels), `pixels` the target's pixel_lanes (relax_import.conv_module)."""
    words = np.zeros((cout, k, k, -(-cin // 64)), np.uint64)
    out = border_bounds(hw, k, stride, pad)[0]
    conv = conv_module(conv, mode, words.shape[3], (out, out), lanes, pixels)
    blocked, correction, compute = conv_constants(conv, words, cin, (hw, hw), (pad, pad), (stride, stride), lanes,
                                                  mode, np.zeros(cout, np.int32))
    shapes = [((1, hw, hw, words.shape[3]), "uint64"), (blocked.shape, str(blocked.dtype)),
              (correction.shape, str(correction.dtype))]
    shapes += {"affine": [((cout,), "float32")] * 2, "bits": [((cout,), "int32")]}.get(compute, [])
    tensors = [te.placeholder(s, d, f"a{i}") for i, (s, d) in enumerate(shapes)]
    out = conv.binary_conv2d(*tensors, in_channels=cin, out_channels=cout, strides=(stride, stride),
                             pads=(pad, pad), mode=compute)
    return te.create_prim_func(tensors + [out]).with_attr(OP_ATTR, "BinaryConv2d")


def random_arguments(func: tvm.tirx.PrimFunc, seed: int = 0) -> tuple[list[np.ndarray], tuple]:
    """Random arrays for the inputs of `func`, and (shape, dtype) of its output (the last parameter).

    For a bits output (uint64 words) the integer inputs (correction and thresholds, or the count limits of
    "bits_limits", int64 with pixel lanes) are drawn across [-taps, taps], taps the bits an output counts:
    the random words give counts near taps / 2, so the output channels get different bits and a candidate
    that puts a bit in the wrong place of its word changes the result (with a narrow range every bit was 1)."""
    rng = np.random.default_rng(seed)
    arrays = []
    *inputs, output = [([int(d) for d in p.shape], str(p.dtype)) for p in func.params]  # buffers in TVM 0.27
    (_, _, _, words), (_, kh, kw, *_) = inputs[0][0], inputs[1][0]  # x (N, H, W, words), weights (., kh, kw, ...)
    taps = 64 * words * kh * kw
    int_range = (-taps, taps + 1) if output[1] == "uint64" else (-20, 20)
    for shape, dtype in inputs:
        if dtype == "uint64":
            arrays.append(rng.integers(0, 2**63, size=shape, dtype=np.uint64) * 2 + 1)
        elif dtype in ("uint8", "int32", "int64"):
            low, high = (0, 256) if dtype == "uint8" else int_range
            arrays.append(rng.integers(low, high, size=shape).astype(dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays, output


def candidates(sch, params: dict) -> list[dict]:
    """Every per-shape parameter set to try for the conv scheduled by `sch` (see the module docstring)."""
    if schedule_x86.pixel_lanes(sch):
        return pixel_candidates(sch, params)
    _, _, ow, b, *_ = sch.get_loops(sch.get_sblock("popcount"))
    width, blocks = int(sch.get(ow).extent), int(sch.get(b).extent)
    most = int(params.get("accumulators", schedule_x86.DEFAULTS["accumulators"]))
    tiles = [(tw, tb) for tw in range(1, width + 1) for tb in range(1, blocks + 1)
             if width % tw == 0 and blocks % tb == 0 and most // 2 <= tw * tb <= most]
    tiles = tiles or [schedule_x86.default_tile(width, blocks, most)]
    # Where the output stage runs, and with "row" and an NCHW output, the layout of the row's results.
    places = [{"epilogue": e} for e in schedule_x86.EPILOGUES]
    if schedule_x86._mode(sch) in schedule_x86.NCHW_MODES:  # (int_nhwc is channels last already)
        places.append({"epilogue": "row", "row_layout": "channels"})
    lanes = schedule_x86.conv_lanes(params)
    return [{"tile_pixels": tw, "tile_blocks": tb, **place, **({"tile_scope": scope} if scope != "local" else {})}
            for tw, tb in tiles for place in places
            for scope in schedule_x86.tile_scope_candidates(tw, tb, lanes)]


def pixel_candidates(sch, params: dict) -> list[dict]:
    """The tiles to try for a pixel-lanes conv (schedule_x86.schedule_pixel_lanes): vectors of pixels x
    output channels with between half and all of the accumulators, in both tile scopes where they fit."""
    lanes = schedule_x86.conv_lanes(params)
    vectors, channels = schedule_x86.pixel_tile_extents(sch, lanes)
    most = int(params.get("accumulators", schedule_x86.DEFAULTS["accumulators"]))
    tiles = [(tv, tc) for tv in range(1, vectors + 1) for tc in range(1, channels + 1)
             if vectors % tv == 0 and channels % tc == 0 and most // 2 <= tv * tc <= most]
    if not tiles:
        choice = schedule_x86.pixel_choice(sch, params)
        tiles = [(choice["tile_pixels"] // lanes, choice["tile_blocks"])]
    return [{"tile_pixels": tv * lanes, "tile_blocks": tc, "tile_scope": scope}
            for tv, tc in tiles for scope in schedule_x86.tile_scope_candidates(tv, tc, lanes)]


def arm_candidates(sch, params: dict) -> list[dict]:
    """Every per-shape parameter set to try for the ARM conv scheduled by `sch`: register tiles
    tile_pixels x tile_vectors whose sides divide schedule_arm.tile_extents, with between a quarter and
    all of schedule_arm.ACCUMULATORS 16-byte accumulators (else the largest tile that fits), each as the
    tile the schedule makes of it (schedule_arm.register_tile: trees and flattened pixels fix a side),
    once."""
    width, vectors = schedule_arm.tile_extents(sch)
    most = schedule_arm.ACCUMULATORS
    fitting = [(tw, tv) for tw in range(1, width + 1) for tv in range(1, vectors + 1)
               if width % tw == 0 and vectors % tv == 0 and tw * tv <= most]
    tiles = [(tw, tv) for tw, tv in fitting if tw * tv >= most // 4] or [max(fitting, key=lambda t: t[0] * t[1])]
    key = schedule_arm.conv_key(sch)
    made = [schedule_arm.register_tile(sch, trial_params(params, key, {"tile_pixels": tw, "tile_vectors": tv}))
            for tw, tv in tiles]
    return [{"tile_pixels": tw, "tile_vectors": tv} for tw, tv in dict.fromkeys(made)]


# The search space of each schedule module (TargetSpec.schedule).
SEARCH_SPACES = {"x86": candidates, "arm": arm_candidates}


def _build(func, params: dict, spec):
    """One candidate: `func` scheduled with `params` by the target's schedule module, compiled for it."""
    sch = tvm.s_tir.Schedule(func)
    schedule_module(spec.schedule).schedule_binary_conv2d(sch, params)
    # A PrimFunc taken out of an imported Relax module has no global_symbol: give it one to build it alone.
    return tvm.compile(sch.mod["main"].with_attr("global_symbol", "main"), target=tvm.target.Target(spec.tvm_target))


def _global(params: dict) -> dict:
    return {k: v for k, v in params.items() if k != "shapes"}


class Measure:
    """Where the candidates run: this host (in-process libraries, the minimum over rounds: on a shared
    machine other jobs only ever add time) or a board over TVM RPC (each library exported with the
    target's compiler, uploaded and timed on the board, the median over rounds)."""

    def __init__(self, session: Session, spec, folder: Path):
        self.session, self.spec, self.folder = session, spec, Path(folder)
        self.count = 0

    def load(self, lib):
        """The runtime module of a built candidate, on the device."""
        if self.session.is_local:
            return lib.mod
        self.count += 1
        path = self.folder / f"sdbnn-tune-{os.getpid()}-{self.count}.so"  # a new name: dlopen caches by name
        export_library(lib, path, self.spec)
        return self.session.load_module(path)

    def summary(self, seconds: list[float]) -> float:
        return float(min(seconds) if self.session.is_local else np.median(seconds))


def trial_params(base: dict, key: str, trial: dict | None) -> dict:
    """The params a candidate is built with: `base` (the target's, without shapes) with the trial as
    the shape's entry, as it is stored if it wins (a pixel-lanes conv reads its tile from its entry
    only: given as global params, every trial built the default tile); None: `base` alone."""
    return base if trial is None else {**base, "shapes": {key: trial}}


def tune_primfunc(func, spec, measure: Measure, rounds: int = 3) -> Result:
    """Measure every candidate for one BinaryConv2d PrimFunc with `measure`; the fastest wins."""
    session = measure.session
    base = _global(spec.params)
    sch = tvm.s_tir.Schedule(func)
    key = schedule_module(spec.schedule).conv_key(sch)
    trials = [None] + SEARCH_SPACES[spec.schedule](sch, base)  # None: the global params (the reference output)
    inputs, (shape, dtype) = random_arguments(func)
    args = [session.tensor(a) for a in inputs] + [tvm.runtime.empty(shape, dtype, session.device())]
    timers, want = [], None
    for trial in trials:
        mod = measure.load(_build(func, trial_params(base, key, trial), spec))
        mod["main"](*args)
        got = args[-1].numpy()
        if want is None:
            want = got
        elif not np.array_equal(got, want):
            raise RuntimeError(f"schedule_{spec.schedule} with {trial} changes the result of {key}: a scheduling bug")
        timers.append(mod.time_evaluator("main", session.device(), number=1, repeat=3, min_repeat_ms=2))
    seconds = [[] for _ in trials]
    for _ in range(rounds):  # interleaved: a slow spell of the machine hits every candidate alike
        for i, timer in enumerate(timers):
            seconds[i] += list(timer(*args).results)
    times = [measure.summary(s) for s in seconds]
    i = 1 + int(np.argmin(times[1:]))
    return Result(key, trials[i], times[i], times[0], len(trials) - 1)


def measuring_session(spec, rpc_address=None, tracker=None, key=None, timeout=DEFAULT_TIMEOUT) -> Session:
    """Where `spec`'s candidates are measured: this host (x86 targets it runs), else the board at
    `rpc_address`, or one the tracker hands out for `key` (default: the target's rpc_key)."""
    if not (rpc_address or tracker or key):
        if spec.schedule != "x86":
            raise UserError(f"--tune: {spec.name} is a board: measure on it with --rpc HOST:PORT or --tracker "
                            f"HOST:PORT --key {spec.rpc_key or 'KEY'} (`sdbnn-deploy board emulate` serves an "
                            "emulated one, whose times mean nothing)")
        if not runnable(spec.name):
            raise UserError(f"--tune: this host's CPU cannot run {spec.name} code, so it cannot measure it")
        return connect()
    session = connect(rpc_address, tracker, key or (spec.rpc_key if tracker else None), timeout,
                      session_timeout=SEARCH_SESSION_TIMEOUT)
    if session.arch not in (spec.arch, "unknown"):  # a device that does not say is tried (as by profile)
        raise UserError(f"--tune: the device at {session.where} is {session.arch}, but {spec.name} "
                        f"code is {spec.arch}: tune {spec.name} on its own kind of board")
    return session


def _one_thread(session: Session) -> None:
    """Run TVM's parallel loops on one thread (the search measures single-thread speed).

    On this host TVM reads TVM_NUM_THREADS when its thread pool starts, at the first parallel call of the
    process, and runtime.config_threadpool does not shrink it afterwards (measured): so this holds in a
    fresh process (the CLI, `python -m sdbnn_deploy.tune`); in a process that already ran TVM code the
    search runs on that pool's threads (its choices are still exact, only less representative). A board's
    server is asked for one worker thread before the first candidate runs."""
    if session.is_local:
        os.environ["TVM_NUM_THREADS"] = "1"
    else:
        session.set_threads(1)


def tune_shapes(target: str, shapes=None, rounds: int = 3, progress=None, session: Session | None = None
                ) -> list[Result]:
    """tune_primfunc for each (Cin, Cout, kernel, stride, pad, H, mode) of `shapes` (default SHAPES),
    measured where `session` runs (default: this host, see measuring_session)."""
    spec = get_target(target)
    session = session or measuring_session(spec)
    lanes = schedule_module(spec.schedule).conv_lanes(spec.params)
    conv = conv_kernels(spec.schedule, spec.params)
    funcs = [(f"{shape}", conv_primfunc(*shape, lanes=lanes, conv=conv, pixels=pixel_lanes(spec.params)))
             for shape in shapes or SHAPES]
    return _tune_all(funcs, spec, session, rounds, progress)


def tune_module(mod: tvm.IRModule, spec, rounds: int = 3, progress=None, session: Session | None = None
                ) -> list[Result]:
    """tune_primfunc for each distinct BinaryConv2d PrimFunc of an imported model (compile --tune)."""
    session = session or measuring_session(spec)
    conv_key = schedule_module(spec.schedule).conv_key
    funcs, seen = [], set()
    for gvar, func in mod.functions.items():
        if not (isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None
                and str(func.attrs.get(OP_ATTR, "")) == "BinaryConv2d"):
            continue
        key = conv_key(tvm.s_tir.Schedule(func))
        if key not in seen:
            seen.add(key)
            funcs.append((f"{gvar.name_hint} ({key})", func))
    return _tune_all(funcs, spec, session, rounds, progress)


def _tune_all(funcs: list, spec, session: Session, rounds: int, progress) -> list[Result]:
    """tune_primfunc for each (name, PrimFunc), on one thread of the session's device."""
    _one_thread(session)
    out = []
    with tempfile.TemporaryDirectory(prefix="sdbnn-tune-") as folder:
        measure = Measure(session, spec, folder)
        for i, (name, func) in enumerate(funcs, 1):
            if progress:
                progress(f"tuning {spec.name} on {session.where}: {i}/{len(funcs)} {name}")
            out.append(tune_primfunc(func, spec, measure, rounds))
    return out


def shapes_table(results: list[Result], old: dict | None = None) -> dict:
    """The [params.shapes] table: `old` entries, updated with the winners."""
    table = dict(old or {})
    table.update({r.key: dict(r.params) for r in results})
    return dict(sorted(table.items()))


SHAPES_COMMENT = "# Per layer shape: measured by `python -m sdbnn_deploy.tune` / `compile --tune` (sdbnn_deploy.tune)."


def write_params(target: str, table: dict) -> str:
    """Store `table` as TARGET's [params.shapes], atomically; returns the file written. In place in the
    shipped targets/TARGET.toml (everything before the shapes kept as written), or, where that folder
    cannot be written (an installed package), the entries that differ from the shipped ones in the user's
    file of tuned shapes (sdbnn_deploy.targets.user_shapes_path), which get_target merges over them."""
    from sdbnn_deploy.convert import write_atomically

    source = target_path(target)
    text = source.read_text()
    if "\n[params]" not in text:
        raise UserError(f"{source}: no [params] table to write the tuned parameters into")
    if _writable(source.parent):
        path = source
        cuts = [i for i in (text.find("\n" + SHAPES_COMMENT), text.find("\n[params.shapes")) if i >= 0]
        lines = [text[:min(cuts, default=len(text))].rstrip("\n"), "", SHAPES_COMMENT]
    else:
        path = user_shapes_path(target)
        shipped = tomllib.loads(text).get("params", {}).get("shapes", {})
        table = {key: values for key, values in table.items() if shipped.get(key) != values}
        lines = [f"# Tuned shapes of {target}, merged over {source} (sdbnn_deploy.targets).", SHAPES_COMMENT]
    lines += _shape_lines(table)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, ("\n".join(lines) + "\n").encode())
        if path == source:
            _forget_user_shapes(target, table)
    except OSError as e:
        raise UserError(f"{path}: cannot write the tuned parameters ({e.strerror or e})") from None
    in_effect = get_target(target).params.get("shapes", {})  # the files must still parse, and say `table`
    assert all(in_effect.get(key) == values for key, values in table.items()), "tuned shapes not in effect"
    return str(path)


def _forget_user_shapes(target: str, table: dict) -> None:
    """Drop the entries of `table` from the user's file of TARGET's tuned shapes (merged over the shipped
    file, they would hide what was just written there); the file goes when nothing is left."""
    from sdbnn_deploy.convert import write_atomically

    path = user_shapes_path(target)
    if not path.is_file():
        return
    text = path.read_text()
    kept = {k: v for k, v in tomllib.loads(text).get("params", {}).get("shapes", {}).items() if k not in table}
    if not kept:
        path.unlink()
        return
    lines = [line for line in text.splitlines() if line.startswith("#")][:2]
    lines += _shape_lines(kept)
    write_atomically(path, ("\n".join(lines) + "\n").encode())


def _shape_lines(table: dict) -> list[str]:
    """{shape key: params} as toml lines, one [params.shapes."KEY"] table each."""
    return [line for key, values in table.items()
            for line in (f'[params.shapes."{key}"]', *(f"{k} = {_toml_value(v)}" for k, v in values.items()))]


def _writable(folder: Path) -> bool:
    """Whether a file can be created in folder (as write_atomically does), tried, not guessed."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _toml_value(value) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    raise TypeError(f"cannot write {value!r} into a target description")


@dataclass
class Tuning:
    """One search: the target, where it measured, and the winner of each shape."""
    target: str
    where: str  # "this host (load 1.20)", "rpc 192.168.1.20:9090", ...
    emulated: bool  # measured on an emulated board: the times mean nothing
    results: list[Result]
    stored: str  # the description the winners were written to (write_params)

    @classmethod
    def of(cls, target: str, session: Session, results: list[Result], stored: str) -> "Tuning":
        where = f"this host (load {os.getloadavg()[0]:.2f})" if session.is_local else session.where
        return cls(target, where, session.emulated, results, stored)

    def print(self) -> None:
        """The winners as a table: shape key, chosen params, their time, the global params' time."""
        from sdbnn_deploy.report import table as print_table

        note = ", EMULATED: the times mean nothing" if self.emulated else ""
        print_table(f"{self.target}: tuned on {self.where}, one thread{note}; written to {self.stored}",
                    ["shape", "chosen", "us", "default us", "candidates"],
                    [[r.key, " ".join(f"{k}={v}" for k, v in r.params.items()), f"{r.seconds * 1e6:.1f}",
                      f"{r.default_seconds * 1e6:.1f}", str(r.candidates)] for r in self.results])


def main(argv=None) -> int:
    """python -m sdbnn_deploy.tune [TARGET ...] [--rpc HOST:PORT | --tracker HOST:PORT --key KEY]."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sdbnn_deploy.tune", description=(
        "Measure the binary convs' schedule parameters on the shapes of VGG-Small and ResNet-18 (CIFAR) and "
        "store the winners in targets/TARGET.toml [params.shapes]. x86 targets are measured on this host, "
        "boards (rpi3, rpi4, rpi5, aarch64) over TVM RPC."))
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help="targets to tune (default: the x86 ones; the --target option adds one)")
    parser.add_argument("--target", action="append", default=[], help="a target to tune (may be repeated)")
    parser.add_argument("--rpc", metavar="HOST:PORT", help="a board's `python -m tvm.exec.rpc_server`")
    parser.add_argument("--tracker", metavar="HOST:PORT", help="a TVM RPC tracker that hands out boards by --key")
    parser.add_argument("--key", help="the board's key at the tracker (default: the target's rpc_key)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for a board")
    args = parser.parse_args(argv)
    targets = args.targets + args.target or list(REQUIRED_FLAGS)
    try:
        for target in targets:
            spec = get_target(target)
            if spec.schedule == "x86" and not (args.rpc or args.tracker) and not runnable(spec.name):
                print(f"{spec.name}: not measured (this host's CPU cannot run it)")
                continue
            session = measuring_session(spec, args.rpc, args.tracker, args.key, args.timeout)
            results = tune_shapes(spec.name, progress=print, session=session)
            stored = write_params(spec.name, shapes_table(results, spec.params.get("shapes")))
            Tuning.of(spec.name, session, results, stored).print()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
