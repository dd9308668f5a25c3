"""The timed part of the benchmark, run in a fresh process per (backend, thread count).

Each measurement runs in its own process (`python -m sdbnn_deploy.bench_timing SPEC.json`) so that the
thread count is set once, before any runtime starts its thread pool (TVM reads TVM_NUM_THREADS when
its pool starts and does not resize it reliably afterwards), and so that one backend's threads never
linger while another is timed. The process prints one JSON object on stdout.

Latency: batch-1 calls from Python, one call per sample, after warm-up; the same for every backend.
Kernels (TVM only): every PrimFunc call of one model run is captured with the VM's instrument hook
(arguments copied) and then timed alone with the library's time_evaluator, in call order.
"""
import json
import os
import sys
import time

import numpy as np

WARMUP_S = 0.2


def samples(call, repeat: int, max_seconds: float) -> list[float]:
    """Seconds per call: `repeat` single calls (fewer if they exceed max_seconds, at least 5), after warm-up."""
    start = time.perf_counter()
    call()
    while time.perf_counter() - start < WARMUP_S:
        call()
    out, start = [], time.perf_counter()
    while len(out) < repeat and (len(out) < 5 or time.perf_counter() - start < max_seconds):
        t = time.perf_counter()
        call()
        out.append(time.perf_counter() - t)
    return out


def _input(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def time_tvm(spec: dict) -> dict:
    import tvm

    from sdbnn_deploy.run import load_manifest

    manifest = load_manifest(spec["path"])
    lib = tvm.runtime.load_module(os.path.join(spec["path"], manifest["library"]))
    vm = tvm.relax.VirtualMachine(lib, tvm.cpu())
    x = tvm.runtime.tensor(_input(manifest["inputs"][0]["shape"]))
    result = {"samples": samples(lambda: vm["main"](x), spec["repeat"], spec["max_seconds"])}
    if spec.get("kernels"):
        result["kernels"] = time_kernels(vm, lib, x, spec.get("kernel_ms", 10))
    return result


def _captured_calls(vm, x) -> list:
    """(symbol, copied arguments) of every PrimFunc call of one run, in call order."""
    import tvm

    calls = []

    def instrument(func, symbol, before, ret, *args):
        if before and not symbol.startswith("vm."):
            calls.append((symbol, [tvm.runtime.tensor(a.numpy()) if hasattr(a, "shape") else a for a in args]))
        return 0

    vm.set_instrument(instrument)
    vm["main"](x)
    vm.set_instrument(lambda *a: 0)
    return calls


KERNEL_REPEATS = 5


def time_kernels(vm, lib, x, min_repeat_ms: float) -> list[dict]:
    """Per call, in call order: symbol, argument shapes, seconds (the best of KERNEL_REPEATS repeats of
    >= min_repeat_ms each, the statistic of the ceiling it is compared with: ceiling.measure_ceiling
    keeps the best of its repeats; a slow spell of the shared machine only ever adds time) and
    median_seconds."""
    import tvm

    library = lib.imports[0]
    times, out = {}, []
    for symbol, args in _captured_calls(vm, x):
        if symbol not in times:  # one PrimFunc has one set of shapes: time it once
            f = library.time_evaluator(symbol, tvm.cpu(), number=1, repeat=KERNEL_REPEATS,
                                       min_repeat_ms=min_repeat_ms)
            results = f(*args).results
            times[symbol] = float(np.min(results)), float(np.median(results))
        out.append({"symbol": symbol, "shapes": [list(a.shape) for a in args if hasattr(a, "shape")],
                    "seconds": times[symbol][0], "median_seconds": times[symbol][1]})
    return out


def time_torch(spec: dict) -> dict:
    import torch

    from sdbnn_deploy.models import build, float_twin

    torch.set_num_threads(spec["threads"])
    model = float_twin(build(spec["arch"], "static", **spec.get("build", {})))
    model.load_state_dict(torch.load(spec["path"], weights_only=True))
    model.eval()
    x = torch.from_numpy(_input([1] + spec["input_shape"]))
    with torch.inference_mode():
        return {"samples": samples(lambda: model(x), spec["repeat"], spec["max_seconds"])}


def time_onnxruntime(spec: dict) -> dict:
    import onnx

    from sdbnn_deploy.verify_conversion import ort_session

    session = ort_session(onnx.load(spec["path"]), threads=spec["threads"])
    name = session.get_inputs()[0].name
    feed = {name: _input([1] + spec["input_shape"])}
    return {"samples": samples(lambda: session.run(None, feed), spec["repeat"], spec["max_seconds"])}


BACKENDS = {"tvm": time_tvm, "torch": time_torch, "onnxruntime": time_onnxruntime}


def main(argv) -> None:
    spec = json.loads(open(argv[1]).read())
    print(json.dumps(BACKENDS[spec["backend"]](spec)))


if __name__ == "__main__":
    main(sys.argv)
