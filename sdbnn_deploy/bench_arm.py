"""bench, aarch64 part: the instructions per 128 bit-MACs of every binary conv in the artifact we ship for
a Raspberry Pi, read from the disassembly of that artifact (sdbnn_deploy.asm_count).

Timing an aarch64 artifact under qemu means nothing, but its instruction stream is the one a board runs,
so bench cross-compiles each model for `--arm-target` (rpi4 by default) and counts. The importer emits
one PrimFunc per distinct BinaryConv2d (layers of the same shape share one), and the library names the
hot loops after it (PrimFunc binary_conv2d3 -> function `binary_conv2d3_compute_`); the PrimFunc each
node calls is read from the imported Relax module, in graph order.
"""
from pathlib import Path

import onnx
import tvm

from sdbnn_deploy import asm_count


def conv_primfuncs(onnx_path: Path, target: str) -> list[str]:
    """The PrimFunc that each BinaryConv2d node calls, in graph order, as imported for `target`."""
    from sdbnn_deploy.targets import get_target
    from sdbnn_deploy.tvm import conv_kernels, schedule_module
    from sdbnn_deploy.tvm.relax_import import import_onnx

    spec = get_target(target)
    lanes = schedule_module(spec.schedule).conv_lanes(spec.params)
    mod = import_onnx(onnx.load(str(onnx_path)), lanes=lanes, source=str(onnx_path),
                      conv=conv_kernels(spec.schedule, spec.params))
    calls = []

    def visit(expr):
        if isinstance(expr, tvm.relax.Call) and getattr(expr.op, "name", "") == "relax.call_tir":
            name = expr.args[0].name_hint
            if name.startswith("binary_conv2d"):
                calls.append(name)

    tvm.relax.analysis.post_order_visit(mod["main"], visit)
    return calls


def instructions_per_128(onnx_path: Path, target: str, artifact: Path) -> list[float]:
    """Compile the ONNX for `target` into `artifact` and give, per BinaryConv2d node in graph order, the
    worst (largest) instructions per 128 bit-MACs over the hot loops of the function it calls."""
    from sdbnn_deploy.compile import compile_model

    compile_model(onnx_path, target, artifact)
    worst: dict[str, float] = {}
    for loop in asm_count.count(artifact):
        function = loop.function.removesuffix("_compute_")
        worst[function] = max(worst.get(function, 0.0), loop.per_128_bit_macs)
    calls = conv_primfuncs(onnx_path, target)
    missing = sorted(set(calls) - set(worst))
    if missing:
        raise RuntimeError(f"{artifact}: no hot loop with cnt .16b in {', '.join(missing)}")
    return [worst[name] for name in calls]
