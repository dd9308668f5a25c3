"""compile: ONNX from `convert` -> a deployable artifact folder for one target.

OUT_DIR/model.so        the Relax VM executable (export_library; cross-compiled for aarch64 targets)
OUT_DIR/manifest.json   what it is: target, arch, inputs and outputs (names, shapes, dtypes), TVM version,
                        sha256 of the source ONNX, build options, sdbnn-deploy version

Steps: import the ONNX into Relax (our ops become TE kernels, sdbnn_deploy.tvm.relax_import), schedule those
kernels for the target (sdbnn_deploy.tvm.apply_schedules), build with tvm.compile, export. The folder is
built next to OUT_DIR and renamed into place, so OUT_DIR is never half-written.
A Raspberry Pi runs the artifact with the aarch64 apache-tvm wheel (`pip install apache-tvm==<tvm_version>`
on 64-bit Raspberry Pi OS): tvm.runtime.load_module("model.so") and tvm.relax.VirtualMachine.
"""
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
import tvm

from sdbnn_deploy import __version__
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.targets import TargetSpec, get_target, target_path, user_shapes_path
from sdbnn_deploy.tvm import ScheduleParamError, apply_schedules, conv_kernels, pixel_lanes, schedule_module
from sdbnn_deploy.tvm.relax_import import import_onnx
from sdbnn_deploy.tvm.schedule_float import relax_pipeline

LIBRARY = "model.so"
MANIFEST = "manifest.json"
FORMAT = "sdbnn-deploy-artifact/1"


@dataclass(frozen=True)
class Artifact:
    path: Path  # OUT_DIR
    manifest: dict
    tuning: object = None  # with tune=True: the search's sdbnn_deploy.tune.Tuning

    @property
    def library(self) -> Path:
        return self.path / self.manifest["library"]


def compile_model(onnx_path, target: str, out_dir, threads: int | None = None, batch: int = 1,
                  tune: bool = False, board: dict | None = None, progress=None) -> Artifact:
    """Compile a converted ONNX model for `target` (a name of sdbnn_deploy.targets) into OUT_DIR.

    tune: first measure the binary convs' schedule parameters (sdbnn_deploy.tune) and store the winners
    in the target's description: on this host (x86 targets this CPU runs), or on the board that `board`
    names ({"rpc_address": HOST:PORT} or {"tracker": HOST:PORT, "key": KEY}, optionally "timeout"; see
    sdbnn_deploy.remote). progress(text) is told each step of the search."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    spec = get_target(target)
    if batch < 1 or (threads is not None and threads < 1):
        raise UserError("--batch and --threads must be positive")
    if board and not tune:
        raise UserError("--rpc and --tracker/--key name the board that --tune measures on: add --tune")
    _check_out_dir(out_dir)
    model = _load(onnx_path)
    session = _measuring_session(spec, board) if tune else None  # before the slow import: a bad board fails fast
    lanes = schedule_module(spec.schedule).conv_lanes(spec.params)
    mod = import_onnx(model, lanes=lanes, batch=batch, source=str(onnx_path),
                      conv=conv_kernels(spec.schedule, spec.params), pixel_lanes=pixel_lanes(spec.params))
    tuning = None
    if tune:
        spec, tuning = _tuned(mod, spec, session, progress)
    mod = _scheduled(mod, spec)
    tvm_target = tvm.target.Target(spec.tvm_target)
    executable = tvm.compile(mod, target=tvm_target, relax_pipeline=relax_pipeline(tvm_target))
    manifest = _manifest(model, mod, spec, target, onnx_path, threads or spec.threads, batch, lanes)
    _write_artifact(out_dir, executable, manifest, spec)
    return Artifact(out_dir, manifest, tuning)


def _scheduled(mod, spec: TargetSpec):
    """apply_schedules; a schedule parameter it cannot use is a UserError naming the target's files."""
    try:
        return apply_schedules(mod, spec.schedule, spec.params)
    except ScheduleParamError as e:
        files = [p for p in (target_path(spec.name), user_shapes_path(spec.name)) if p.is_file()]
        raise UserError(f"target {spec.name} ({', '.join(map(str, files))}): {e}") from None


def _measuring_session(spec: TargetSpec, board: dict | None):
    """Where --tune measures (sdbnn_deploy.tune.measuring_session): this host or the board."""
    from sdbnn_deploy import tune

    return tune.measuring_session(spec, **(board or {}))


def _tuned(mod, spec: TargetSpec, session, progress):
    """spec with the model's binary conv shapes tuned where `session` runs, also written to its
    description; and the search (sdbnn_deploy.tune.Tuning)."""
    import dataclasses

    from sdbnn_deploy import tune

    results = tune.tune_module(mod, spec, progress=progress, session=session)
    table = tune.shapes_table(results, spec.params.get("shapes"))
    stored = tune.write_params(spec.name, table)
    tuned = dataclasses.replace(spec, params={**spec.params, "shapes": table})
    return tuned, tune.Tuning.of(spec.name, session, results, stored)


def _load(onnx_path: Path) -> onnx.ModelProto:
    if not onnx_path.is_file():
        raise UserError(f"{onnx_path}: no such file")
    try:
        return onnx.load(str(onnx_path))
    except Exception as e:  # protobuf raises several types on a file that is not ONNX
        raise UserError(f"{onnx_path}: not an ONNX model ({type(e).__name__})") from None


def _check_out_dir(out_dir: Path) -> None:
    """OUT_DIR may be new, empty, or an earlier artifact (replaced); never some other folder or a file."""
    if out_dir.exists() and not (out_dir.is_dir() and (not any(out_dir.iterdir())
                                                        or (out_dir / MANIFEST).is_file())):
        raise UserError(f"{out_dir}: exists and is not an sdbnn-deploy artifact; refusing to replace it")


def _tensors(names, types) -> list:
    return [{"name": n, "shape": [int(d) for d in t.shape], "dtype": str(t.dtype)} for n, t in zip(names, types)]


def _manifest(model, mod, spec: TargetSpec, requested: str, onnx_path: Path, threads: int, batch: int,
              lanes: int) -> dict:
    main = mod["main"]
    initializers = {t.name for t in model.graph.initializer}
    input_names = [v.name for v in model.graph.input if v.name not in initializers]
    ret = main.ret_ty
    output_types = list(ret.fields) if isinstance(ret, tvm.relax.TupleType) else [ret]
    return {
        "format": FORMAT,
        "library": LIBRARY,
        "target": {"name": spec.name, "requested": requested, "description": spec.description,
                   "tvm_target": spec.tvm_target, "schedule": spec.schedule, "params": spec.params,
                   "cross_compiler": spec.cross_compiler, "rpc_key": spec.rpc_key},
        "arch": spec.arch,
        "threads": threads,
        "inputs": _tensors(input_names, [p.ty for p in main.params]),
        "outputs": _tensors([v.name for v in model.graph.output], output_types),
        "source": {"path": str(onnx_path), "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest()},
        "build": {"batch": batch, "threads": threads, "conv_lanes": lanes},
        "tvm_version": tvm.__version__,
        "sdbnn_deploy_version": __version__,
    }


def export_library(executable, path: Path, spec: TargetSpec) -> None:
    """Write a built module as a shared library for the target (cross-compiled for aarch64)."""
    if spec.arch == "aarch64":
        from sdbnn_deploy.aarch64 import cross_compiler  # names the Debian package when it is missing

        executable.export_library(str(path), fcompile=tvm.support.cc.cross_compiler(cross_compiler()))
    else:
        executable.export_library(str(path))


def _write_artifact(out_dir: Path, executable, manifest: dict, spec: TargetSpec) -> None:
    """Build the folder beside OUT_DIR, then swap it in with renames: OUT_DIR is old or new, never partial."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        export_library(executable, tmp / LIBRARY, spec)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            out_dir.rename(old / "artifact")
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
