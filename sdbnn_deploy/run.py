"""run: execute a compiled artifact (see sdbnn_deploy.compile) on numpy inputs.

An artifact runs on a host of its own architecture, loaded the standard way (tvm.runtime.load_module +
tvm.relax.VirtualMachine). An aarch64 artifact on an x86_64 host runs under qemu, through
sdbnn_deploy.aarch64.run_under_qemu. Any other mismatch, or an x86 artifact that needs CPU features this
host lacks (AVX-512 code on an AVX2 machine would die of an illegal instruction), is refused.
"""
import json
import platform
from pathlib import Path

import numpy as np
import tvm

from sdbnn_deploy.compile import FORMAT, MANIFEST
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.targets import _cpu_flags

# CPU flags (as /proc/cpuinfo names them) that code built for an LLVM mcpu / mattr needs.
_X86_LEVELS = ["x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"]
_X86_LEVEL_FLAGS = [set(), {"popcnt", "sse4_2", "ssse3"}, {"avx2", "bmi2", "fma", "movbe"},
                    {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}]
_X86_MATTR_FLAGS = {"+avx512vpopcntdq": "avx512_vpopcntdq", "+avx2": "avx2", "+popcnt": "popcnt"}


def host_arch() -> str:
    machine = platform.machine()
    return {"AMD64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def load_manifest(artifact_dir) -> dict:
    path = Path(artifact_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"{artifact_dir}: not an artifact (no {MANIFEST}); make one with `sdbnn-deploy compile`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def _missing_cpu_flags(tvm_target: dict) -> set:
    """The flags an x86 build needs that this host's CPU lacks (empty: it can run here)."""
    mcpu = tvm_target.get("mcpu", "x86-64")
    needed = set().union(*_X86_LEVEL_FLAGS[:_X86_LEVELS.index(mcpu) + 1]) if mcpu in _X86_LEVELS else set()
    needed |= {_X86_MATTR_FLAGS[a] for a in tvm_target.get("mattr", []) if a in _X86_MATTR_FLAGS}
    return needed - _cpu_flags("/proc/cpuinfo")


def _check_host(manifest: dict, artifact_dir) -> None:
    arch, target = manifest["arch"], manifest["target"]["name"]
    if arch != host_arch():
        raise UserError(f"{artifact_dir}: built for {arch} (target {target}); this host is {host_arch()}")
    if arch == "x86_64":
        missing = _missing_cpu_flags(manifest["target"]["tvm_target"])
        if missing:
            raise UserError(f"{artifact_dir}: built for {target}, which needs CPU features this host lacks "
                            f"({', '.join(sorted(missing))}); compile it for --target x86")


def _arrays(manifest: dict, inputs, artifact_dir) -> list:
    """The inputs in the manifest's order, checked against its shapes and cast to its dtypes."""
    specs = manifest["inputs"]
    if isinstance(inputs, np.ndarray):
        if len(specs) != 1:
            raise UserError(f"{artifact_dir}: the model has {len(specs)} inputs; pass them by name")
        inputs = {specs[0]["name"]: inputs}
    unknown = sorted(set(inputs) - {s["name"] for s in specs})
    if unknown:
        raise UserError(f"{artifact_dir}: the model has no input {unknown[0]!r}")
    arrays = []
    for spec in specs:
        if spec["name"] not in inputs:
            raise UserError(f"{artifact_dir}: no value for input {spec['name']!r}")
        array = np.asarray(inputs[spec["name"]])
        if list(array.shape) != spec["shape"]:
            raise UserError(f"input {spec['name']!r}: shape {list(array.shape)}, the artifact was compiled "
                            f"for {spec['shape']}")
        if not np.can_cast(array.dtype, spec["dtype"], casting="same_kind"):
            raise UserError(f"input {spec['name']!r}: dtype {array.dtype}, expected {spec['dtype']}")
        arrays.append(np.ascontiguousarray(array, dtype=spec["dtype"]))
    return arrays


def run_artifact(artifact_dir, inputs, threads: int | None = None) -> dict:
    """Run an artifact on `inputs` (a dict name -> array, or one array for a one-input model).

    Returns {output name: array} in the manifest's order. threads: worker threads (default: the
    manifest's); set once per process, when TVM's thread pool starts.
    """
    manifest = load_manifest(artifact_dir)
    arrays = _arrays(manifest, inputs, artifact_dir)
    names = [o["name"] for o in manifest["outputs"]]
    threads = threads or manifest.get("threads")
    if manifest["arch"] == "aarch64" and host_arch() == "x86_64":
        from sdbnn_deploy.aarch64 import run_under_qemu

        named = {s["name"]: a for s, a in zip(manifest["inputs"], arrays)}
        return dict(zip(names, run_under_qemu(artifact_dir, named, threads)))
    _check_host(manifest, artifact_dir)
    if threads:
        tvm.get_global_func("runtime.config_threadpool")(1, int(threads))
    lib = tvm.runtime.load_module(str(Path(artifact_dir) / manifest["library"]))
    vm = tvm.relax.VirtualMachine(lib, tvm.cpu())
    result = vm["main"](*[tvm.runtime.tensor(a) for a in arrays])
    outputs = [result] if hasattr(result, "numpy") else list(result)
    return {name: out.numpy() for name, out in zip(names, outputs)}
