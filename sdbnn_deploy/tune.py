"""tune: choose the x86 binary conv's schedule parameters by measuring them (our own small search;
TVM's MetaSchedule crashes in this TVM build, see tvm-notes.md).

For each BinaryConv2d shape (the representative layers of VGG-Small and ResNet-18 for CIFAR in SHAPES, or
the layers of one model for `compile --tune`), every candidate of sdbnn_deploy.tvm.schedule_x86's
per-shape parameters is scheduled, compiled for the target and run on this host, on one thread:

    tile_pixels x tile_blocks   register tiles whose sides divide the output width and the weight blocks,
                                with between half and all of the target's `accumulators`
    epilogue                    "pixels" or "row" (where the output stage runs)

Each candidate's output must equal the default schedule's output on the same random inputs (schedules
only reorder work; a candidate that differs is an error). Times are the minimum over interleaved rounds
of short repeats: on a shared machine other jobs only ever add time. The winner per shape, keyed by
schedule_x86.conv_key, goes to the target's [params.shapes] table (write_params, atomically), so that
later compiles are reproducible and do not search. Only x86 targets this host's CPU runs can be tuned.
"""
import os
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te

from sdbnn_deploy.errors import UserError
from sdbnn_deploy.targets import TARGETS_DIR, _cpu_flags, get_target
from sdbnn_deploy.tvm import OP_ATTR, kernels, schedule_x86

# (Cin, Cout, kernel, stride, pad, input H=W, output mode): the binary convs of VGG-Small and ResNet-18 (CIFAR).
SHAPES = [
    (128, 128, 3, 1, 1, 32, "bits"), (128, 256, 3, 1, 1, 16, "bits"), (256, 256, 3, 1, 1, 16, "bits"),
    (256, 512, 3, 1, 1, 8, "bits"), (512, 512, 3, 1, 1, 8, "int"),
    (64, 64, 3, 1, 1, 32, "bits"), (64, 64, 3, 1, 1, 32, "affine"), (64, 128, 3, 2, 1, 32, "bits"),
    (128, 128, 3, 1, 1, 16, "affine"), (128, 256, 3, 2, 1, 16, "bits"), (256, 256, 3, 1, 1, 8, "bits"),
    (256, 256, 3, 1, 1, 8, "affine"), (256, 512, 3, 2, 1, 8, "bits"), (512, 512, 3, 1, 1, 4, "bits"),
    (512, 512, 3, 1, 1, 4, "affine"),
]
# What each x86 target needs from the CPU (/proc/cpuinfo flags) to run here.
REQUIRED_FLAGS = {"x86-avx512": {"avx512f", "avx512_vpopcntdq"}, "x86-avx2": {"avx2", "popcnt"}, "x86-generic": set()}


@dataclass
class Result:
    key: str  # schedule_x86.conv_key
    params: dict  # the winner: tile_pixels, tile_blocks, epilogue
    seconds: float  # the winner's time
    default_seconds: float  # the time with the target's global params (no shapes table)
    candidates: int


def runnable(target: str, cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """Whether this host's CPU runs code built for the x86 target `target`."""
    if target not in REQUIRED_FLAGS:
        raise UserError(f"--tune: only the x86 targets {', '.join(REQUIRED_FLAGS)} can be tuned, not {target!r}")
    return REQUIRED_FLAGS[target] <= _cpu_flags(cpuinfo_path)


def conv_primfunc(cin, cout, k, stride, pad, hw, mode, lanes: int) -> tvm.tirx.PrimFunc:
    """The unscheduled BinaryConv2d PrimFunc of one shape, tagged as the importer tags it."""
    cw = -(-cin // 64)
    blocks = -(-cout // lanes)
    shapes = [((1, hw, hw, cw), "uint64"), ((blocks, k, k, cw, lanes), "uint64"),
              (_correction_shape(hw, k, stride, pad, blocks * lanes), "int32")]
    shapes += {"int": [], "affine": [((cout,), "float32")] * 2, "bits": [((cout,), "int32")]}[mode]
    tensors = [te.placeholder(s, d, f"a{i}") for i, (s, d) in enumerate(shapes)]
    out = kernels.binary_conv2d(*tensors, in_channels=cin, out_channels=cout, strides=(stride, stride),
                                pads=(pad, pad), mode=mode)
    return te.create_prim_func(tensors + [out]).with_attr(OP_ATTR, "BinaryConv2d")


def _correction_shape(hw, k, stride, pad, channels):
    out, top, bottom = kernels.border_bounds(hw, k, stride, pad)
    classes = kernels.border_class(out - 1, top, bottom) + 1
    return (classes, classes, channels)


def random_arguments(func: tvm.tirx.PrimFunc, seed: int = 0) -> list:
    """Random tensors for every parameter of `func` (the last one is the output, left empty)."""
    rng = np.random.default_rng(seed)
    args = []
    for i, param in enumerate(func.params):
        shape, dtype = [int(d) for d in param.shape], str(param.dtype)  # params are buffers in TVM 0.27
        if i == len(func.params) - 1:
            args.append(tvm.runtime.empty(shape, dtype, tvm.cpu()))
        elif dtype == "uint64":
            args.append(tvm.runtime.tensor(rng.integers(0, 2**63, size=shape, dtype=np.uint64) * 2 + 1))
        elif dtype == "int32":
            args.append(tvm.runtime.tensor(rng.integers(-20, 20, size=shape).astype(np.int32)))
        else:
            args.append(tvm.runtime.tensor(rng.standard_normal(shape).astype(dtype)))
    return args


def candidates(sch, params: dict) -> list[dict]:
    """Every per-shape parameter set to try for the conv scheduled by `sch` (see the module docstring)."""
    _, _, ow, b, *_ = sch.get_loops(sch.get_sblock("popcount"))
    width, blocks = int(sch.get(ow).extent), int(sch.get(b).extent)
    most = int(params.get("accumulators", schedule_x86.DEFAULTS["accumulators"]))
    tiles = [(tw, tb) for tw in range(1, width + 1) for tb in range(1, blocks + 1)
             if width % tw == 0 and blocks % tb == 0 and most // 2 <= tw * tb <= most]
    tiles = tiles or [schedule_x86.default_tile(width, blocks, most)]
    return [{"tile_pixels": tw, "tile_blocks": tb, "epilogue": e} for tw, tb in tiles for e in schedule_x86.EPILOGUES]


def _build(func, params: dict, target):
    sch = tvm.s_tir.Schedule(func)
    schedule_x86.schedule_binary_conv2d(sch, params)
    # A PrimFunc taken out of an imported Relax module has no global_symbol: give it one to build it alone.
    return tvm.compile(sch.mod["main"].with_attr("global_symbol", "main"), target=target)


def _global(params: dict) -> dict:
    return {k: v for k, v in params.items() if k != "shapes"}


def tune_primfunc(func, spec, rounds: int = 3) -> Result:
    """Measure every candidate for one BinaryConv2d PrimFunc on this host, one thread; the fastest wins."""
    target = tvm.target.Target(spec.tvm_target)
    base = _global(spec.params)
    sch = tvm.s_tir.Schedule(func)
    key = schedule_x86.conv_key(sch)
    trials = [None] + candidates(sch, base)  # None: the global params (the reference output)
    args = random_arguments(func)
    libs, want = [], None
    for trial in trials:
        lib = _build(func, base if trial is None else {**base, **trial}, target)
        lib(*args)
        got = args[-1].numpy().copy()
        if want is None:
            want = got
        elif not np.array_equal(got, want):
            raise RuntimeError(f"schedule_x86 with {trial} changes the result of {key}: a scheduling bug")
        libs.append(lib.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=3, min_repeat_ms=2))
    best = [float("inf")] * len(trials)
    for _ in range(rounds):
        for i, timer in enumerate(libs):
            best[i] = min(best[i], min(timer(*args).results))
    i = 1 + int(np.argmin(best[1:]))
    return Result(key, trials[i], best[i], best[0], len(trials) - 1)


def _one_thread():
    """Run TVM's parallel loops on one thread (the search measures single-thread speed).

    TVM reads TVM_NUM_THREADS when its thread pool starts, at the first parallel call of the process, and
    runtime.config_threadpool does not shrink it afterwards (measured): so this holds in a fresh process
    (the CLI, `python -m sdbnn_deploy.tune`); in a process that already ran TVM code the search runs on
    that pool's threads (its choices are still exact, only less representative)."""
    os.environ["TVM_NUM_THREADS"] = "1"


def tune_shapes(target: str, shapes=None, rounds: int = 3, progress=None) -> list[Result]:
    """tune_primfunc for each (Cin, Cout, kernel, stride, pad, H, mode) of `shapes` (default SHAPES)."""
    spec = get_target(target)
    if not runnable(spec.name):
        raise UserError(f"--tune: this host's CPU cannot run {spec.name} code, so it cannot measure it")
    _one_thread()
    lanes = schedule_x86.conv_lanes(spec.params)
    out = []
    for shape in shapes or SHAPES:
        if progress:
            progress(f"tuning {spec.name}: {shape}")
        out.append(tune_primfunc(conv_primfunc(*shape, lanes=lanes), spec, rounds))
    return out


def tune_module(mod: tvm.IRModule, spec, rounds: int = 3, progress=None) -> list[Result]:
    """tune_primfunc for each distinct BinaryConv2d PrimFunc of an imported model (compile --tune)."""
    if not runnable(spec.name):
        raise UserError(f"--tune: this host's CPU cannot run {spec.name} code, so it cannot measure it")
    _one_thread()
    out, seen = [], set()
    for gvar, func in mod.functions.items():
        if not (isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None
                and str(func.attrs.get(OP_ATTR, "")) == "BinaryConv2d"):
            continue
        key = schedule_x86.conv_key(tvm.s_tir.Schedule(func))
        if key in seen:
            continue
        seen.add(key)
        if progress:
            progress(f"tuning {spec.name}: {gvar.name_hint} ({key})")
        out.append(tune_primfunc(func, spec, rounds))
    return out


def shapes_table(results: list[Result], old: dict | None = None) -> dict:
    """The [params.shapes] table: `old` entries, updated with the winners."""
    table = dict(old or {})
    table.update({r.key: dict(r.params) for r in results})
    return dict(sorted(table.items()))


def write_params(target: str, table: dict) -> str:
    """Rewrite targets/TARGET.toml with `table` as its [params.shapes] (other keys kept), atomically."""
    from sdbnn_deploy.convert import write_atomically

    path = TARGETS_DIR / f"{target}.toml"
    text = path.read_text()
    head, sep, _ = text.partition("\n[params]")
    if not sep:
        raise UserError(f"{path}: no [params] table to write the tuned parameters into")
    params = {k: v for k, v in get_target(target).params.items() if k != "shapes"}
    lines = [head.rstrip("\n"), "", "[params]",
             "# Schedule parameters read by sdbnn_deploy.tvm.schedule_x86 (see its docstring).",
             *(f"{k} = {_toml_value(v)}" for k, v in params.items()), "",
             "# Per layer shape: measured by `python -m sdbnn_deploy.tune` / `compile --tune` (sdbnn_deploy.tune)."]
    for key, values in table.items():
        lines += [f'[params.shapes."{key}"]', *(f"{k} = {_toml_value(v)}" for k, v in values.items())]
    write_atomically(path, ("\n".join(lines) + "\n").encode())
    get_target(target)  # the file must still parse
    return str(path)


def _toml_value(value) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    raise TypeError(f"cannot write {value!r} into a target description")


def main(argv=None) -> None:
    """python -m sdbnn_deploy.tune [TARGET ...]: tune SHAPES for each target this host runs, store them."""
    import sys

    from sdbnn_deploy.report import table as print_table

    targets = (argv if argv is not None else sys.argv[1:]) or ["x86-avx512", "x86-avx2", "x86-generic"]
    for target in targets:
        if not runnable(target):
            print(f"{target}: not measured (this host's CPU cannot run it)")
            continue
        results = tune_shapes(target, progress=print)
        write_params(target, shapes_table(results, get_target(target).params.get("shapes")))
        print_table(f"{target}: tuned on this host (load {os.getloadavg()[0]:.2f}), one thread",
                    ["shape", "tile", "epilogue", "us", "default us", "candidates"],
                    [[r.key, f"{r.params['tile_pixels']}x{r.params['tile_blocks']}", r.params["epilogue"],
                      f"{r.seconds * 1e6:.1f}", f"{r.default_seconds * 1e6:.1f}", str(r.candidates)] for r in results])


if __name__ == "__main__":
    main()
