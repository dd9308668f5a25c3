"""The Apache TVM side of sdbnn-deploy.

- kernels.py: TE computes of the custom ops (what is computed), tested against the numpy references;
- schedule_x86.py / schedule_arm.py: how each target computes them (same function names in both);
- relax_import.py: ONNX -> Relax, with converters for the custom ops that emit the computes.

The importer tags every PrimFunc made from a kernel with OP_ATTR (its ONNX op type) and marks it opaque,
so that Relax fuses nothing into it; apply_schedules then schedules the tagged PrimFuncs for a target.
"""
import importlib

import tvm

OP_ATTR = "sdbnn.op"
SCHEDULE_MODULES = {"x86": "sdbnn_deploy.tvm.schedule_x86", "arm": "sdbnn_deploy.tvm.schedule_arm"}
_SCHEDULE_FUNCTIONS = {
    "BinarizePack": "schedule_binarize_pack",
    "BinaryConv2d": "schedule_binary_conv2d",
    "PackedMaxPool2d": "schedule_packed_max_pool2d",
}


# Bytes below which TVM allocates a "global" buffer on the CPU on the stack (runtime::kMaxStackAlloca).
STACK_BYTES = 1024


def register_scope(nbytes: int) -> str:
    """The scope for a register tile of nbytes: "global" below STACK_BYTES, "local" above. TVM puts a
    constant "global" buffer under STACK_BYTES on the stack, where LLVM keeps it in registers, and takes
    every "local" one from the workspace (a TVMBackendAllocWorkspace call per kernel call, and per
    iteration inside a parallel loop): se_shift 16x32x32, one core, 0.60 -> 0.42 us; the float convs:
    float_conv's docstring; the binary convs: schedule_x86's tile_scope."""
    return "global" if nbytes < STACK_BYTES else "local"


class ScheduleParamError(ValueError):
    """A schedule parameter of a target (its [params] or a [params.shapes] entry) that the schedule cannot
    use; compile reports it as a UserError naming the target's files."""


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of n that is at most at_most (a tile that splits an extent evenly)."""
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def find_block(sch: tvm.s_tir.Schedule, name: str):
    """The block named `name` in the schedule's PrimFunc, or None where it has none."""
    try:
        return sch.get_sblock(name)
    except (tvm.s_tir.ScheduleError, ValueError, RuntimeError):  # no such block (TVM raises several types)
        return None


def schedule_module(schedule: str):
    """The schedule module named by TargetSpec.schedule ("x86" or "arm")."""
    return importlib.import_module(SCHEDULE_MODULES[schedule])


def conv_kernels(schedule: str, params: dict):
    """The module whose prepare_conv_weights and binary_conv2d the importer emits for BinaryConv2d: the
    schedule module's conv_kernels(params) where it has one (ARM: byte lanes), else kernels."""
    module = schedule_module(schedule)
    if hasattr(module, "conv_kernels"):
        return module.conv_kernels(params)
    return importlib.import_module("sdbnn_deploy.tvm.kernels")


def pixel_lanes(params: dict) -> bool:
    """The target's param pixel_lanes (schedule_x86's docstring): whether the importer may emit
    BinaryConv2d with output pixels in the lanes (relax_import.conv_module)."""
    return bool((params or {}).get("pixel_lanes", False))


def schedule_primfunc(func: tvm.tirx.PrimFunc, schedule: str, params: dict) -> tvm.tirx.PrimFunc:
    """Schedule one PrimFunc tagged with OP_ATTR by the matching function of the schedule module."""
    op = str(func.attrs[OP_ATTR])
    sch = tvm.s_tir.Schedule(func)
    getattr(schedule_module(schedule), _SCHEDULE_FUNCTIONS[op])(sch, params)
    return sch.mod["main"]


def apply_schedules(mod: tvm.IRModule, schedule: str, params: dict) -> tvm.IRModule:
    """Return mod with every PrimFunc that carries OP_ATTR scheduled for the target."""
    mod = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None and OP_ATTR in func.attrs:
            mod[gvar] = schedule_primfunc(func, schedule, params)
    return mod
