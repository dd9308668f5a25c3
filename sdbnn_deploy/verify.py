"""verify: does the deployed model compute what the PyTorch model computes, on real data?

    verify(checkpoint, deployed, data) -> report (a dict in the layout of sdbnn_deploy.schema)

`deployed` is an ONNX file from `convert` or an artifact folder from `compile`. On the same inputs it runs
- "pytorch": the checkpoint's eval model (the reference);
- "onnxruntime": the ONNX (for an artifact: the source ONNX its manifest names, found by path and
  sha256; if it cannot be found, that runtime is skipped with a note);
- "tvm": the artifact (x86 on this host, aarch64 under qemu), in batches of its compiled batch size.

Figures per runtime: top-1 accuracy (when the data has labels), top-1 agreement with PyTorch (a class
tied for PyTorch's maximum agrees), max and mean absolute logit difference.

The gate (both must hold for every runtime that ran):
- top-1 agreement >= min_agreement (default 0.99: a binary network deployed exactly agrees on every
  input; 1% leaves room for inputs whose top two logits are within float rounding);
- max absolute logit difference <= max_logit_diff (default: 1% of the logit scale, the largest |logit|
  PyTorch gives on the data; an exact deployment differs by float rounding only, about 1e-6 of it).

On failure it finds where the deployed model first departs from PyTorch (sdbnn_deploy.departure):
first whether the fault is in the conversion (onnxruntime of the ONNX against PyTorch) or in the
compilation (the artifact against onnxruntime of its own ONNX), then the first layer, in graph order,
whose values differ (for a compilation fault: the ONNX recompiled with intermediate outputs for the
artifact's target and batch, against onnxruntime).
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from sdbnn_deploy.checkpoint import load_checkpoint
from sdbnn_deploy.data import load_dataset
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.schema import header, sha256_of, target_of
from sdbnn_deploy.verify_conversion import logit_figures, ort_session

DEFAULT_MIN_AGREEMENT = 0.99
DEFAULT_RELATIVE_LOGIT_DIFF = 0.01  # default max |logit difference| as a fraction of the logit scale
DEFAULT_BATCH_SIZE = 64
RUNTIMES = ("pytorch", "onnxruntime", "tvm")
EXIT_FAILED = 1  # `sdbnn-deploy verify` exit status when a tolerance is exceeded (usage errors: 2)


@dataclass
class Deployed:
    """What TARGET_FILE is: an ONNX file, or an artifact folder with (maybe) its source ONNX."""

    path: Path
    kind: str  # "onnx" | "artifact"
    onnx_path: Path | None  # the ONNX onnxruntime runs; None when an artifact's source is not found
    manifest: dict | None
    input_shape: tuple  # (C, H, W) the deployed model takes
    note: str | None = None  # why onnxruntime is skipped

    @property
    def batch(self) -> int | None:
        """An artifact's compiled batch size (it takes exactly that many inputs per call)."""
        return self.manifest["inputs"][0]["shape"][0] if self.manifest else None


def open_deployed(path) -> Deployed:
    """Recognise TARGET_FILE: an artifact folder (manifest.json) or an ONNX file; else a UserError."""
    from sdbnn_deploy.run import load_manifest

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder (expected an ONNX file or an artifact folder)")
    if path.is_dir():
        manifest = load_manifest(path)
        if len(manifest["inputs"]) != 1 or len(manifest["inputs"][0]["shape"]) != 4:
            raise UserError(f"{path}: the artifact does not take one N,C,H,W input")
        source, note = find_source_onnx(path, manifest)
        return Deployed(path, "artifact", source, manifest, tuple(manifest["inputs"][0]["shape"][1:]), note=note)
    return Deployed(path, "onnx", path, None, onnx_input_shape(path, _load_onnx(path)))


def _load_onnx(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf raises several types on a file that is not ONNX
        raise UserError(f"{path}: neither an ONNX model nor an artifact folder ({type(e).__name__})") from None


def onnx_input_shape(path, model: onnx.ModelProto) -> tuple:
    """(C, H, W) from the metadata `convert` writes, else from the graph input's static dimensions."""
    props = {p.key: p.value for p in model.metadata_props}
    if "sdbnn_deploy.input_shape" in props:
        return tuple(int(d) for d in props["sdbnn_deploy.input_shape"].split(","))
    inits = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim] if len(inputs) == 1 else []
    if len(dims) != 4 or min(dims[1:]) < 1:
        raise UserError(f"{path}: not an ONNX from `sdbnn-deploy convert` (no one N,C,H,W input)")
    return tuple(dims[1:])


def find_source_onnx(artifact_dir: Path, manifest: dict):
    """The artifact's source ONNX, if a file with the manifest's sha256 sits at its recorded path (as
    given, or relative to the artifact folder or its parent); else (None, a note saying why)."""
    source = manifest.get("source") or {}
    recorded = Path(source.get("path", ""))
    if not source.get("path"):
        return None, "the manifest records no source ONNX"
    for candidate in (recorded, artifact_dir / recorded.name, artifact_dir.parent / recorded.name):
        if candidate.is_file() and sha256_of(candidate) == source.get("sha256"):
            return candidate, None
    return None, f"source ONNX {recorded} not found (or changed since compiling): onnxruntime skipped"


def verify(checkpoint, deployed, data="digits", limit=None, batch_size=DEFAULT_BATCH_SIZE,
           min_agreement=DEFAULT_MIN_AGREEMENT, max_logit_diff=None, arch=None, trust_pickle=False,
           progress=True) -> dict:
    """Run PyTorch, onnxruntime and the artifact on the same inputs; return the report (see schema).

    max_logit_diff: absolute, in logit units; None: DEFAULT_RELATIVE_LOGIT_DIFF of the logit scale.
    """
    if batch_size < 1 or (limit is not None and limit < 1):
        raise UserError("--batch-size and --limit must be positive")
    if not 0.0 <= min_agreement <= 1.0:
        raise UserError(f"--min-agreement {min_agreement}: must lie in [0, 1]")
    checkpoint = Path(checkpoint)
    dep = open_deployed(deployed)
    loaded = load_checkpoint(checkpoint, arch=arch, trust_pickle=trust_pickle)
    dataset = load_dataset(str(data), dep.input_shape)
    x, y = dataset.x[:limit], None if dataset.y is None else dataset.y[:limit]
    if len(x) == 0:
        raise UserError(f"--data {data}: no inputs")

    logits, notes = _run_all(loaded.model, dep, x, batch_size, progress, checkpoint)
    _check_same_outputs(logits, checkpoint, dep)
    scale = float(np.max(np.abs(logits["pytorch"])))
    tolerances = {"min_top1_agreement": float(min_agreement),
                  "max_logit_diff": float(max_logit_diff if max_logit_diff is not None
                                          else DEFAULT_RELATIVE_LOGIT_DIFF * max(scale, 1e-12)),
                  "logit_scale": scale}
    runtimes = {name: _figures(logits.get(name), logits["pytorch"], y, notes.get(name)) for name in RUNTIMES}
    failures = _failures(runtimes, tolerances)
    report = {**header("verify", checkpoint, target_of(dep.manifest)),
              "deployed": _deployed_section(dep), "data": {"spec": str(data), "samples": int(len(x)),
                                                           "labelled": y is not None},
              "runtimes": runtimes, "tolerances": tolerances, "passed": not failures, "failures": failures,
              "departure": None, "notes": _notes(dep, checkpoint)}
    if failures:
        from sdbnn_deploy.departure import locate

        report["departure"] = locate(loaded.model, dep, x, logits, tolerances)
    return report


def _deployed_section(dep: Deployed) -> dict:
    library = dep.path / dep.manifest["library"] if dep.manifest else dep.path
    return {"path": str(dep.path), "kind": dep.kind, "sha256": sha256_of(library), "batch": dep.batch,
            "arch": dep.manifest["arch"] if dep.manifest else None,
            "onnx": str(dep.onnx_path) if dep.onnx_path else None}


def _notes(dep: Deployed, checkpoint: Path) -> list:
    """Things worth knowing that do not fail the gate."""
    notes = [dep.note] if dep.note else []
    if dep.onnx_path is not None:
        props = {p.key: p.value for p in onnx.load(str(dep.onnx_path), load_external_data=False).metadata_props}
        recorded = props.get("sdbnn_deploy.source_sha256")
        if recorded and recorded != sha256_of(checkpoint):
            notes.append(f"{dep.onnx_path} was converted from a different checkpoint file "
                         f"({props.get('sdbnn_deploy.source', '?')}, sha256 {recorded[:12]})")
    return notes


def _run_all(model, dep: Deployed, x: np.ndarray, batch_size: int, progress: bool, checkpoint: Path):
    """Logits of each runtime on `x` (None for one that does not run here) and notes on skipped ones."""
    jobs = {"pytorch": (_torch_runner(model, checkpoint), batch_size)}
    notes = {}
    if dep.onnx_path is not None:
        jobs["onnxruntime"] = (_ort_runner(dep.onnx_path), batch_size)
    else:
        notes["onnxruntime"] = dep.note
    if dep.kind == "artifact":
        jobs["tvm"] = (_artifact_runner(dep), dep.batch)
    else:
        notes["tvm"] = "no artifact given (TARGET_FILE is an ONNX)"
    batches = {name: _batches(len(x), size) for name, (_, size) in jobs.items()}
    with _progress(progress, sum(len(b) for b in batches.values())) as advance:
        logits = {}
        for name, (run, size) in jobs.items():
            outs = []
            for start, stop in batches[name]:
                outs.append(run(_padded(x[start:stop], size))[:stop - start])
                advance(name)
            logits[name] = np.concatenate(outs).astype(np.float32)
    return logits, notes


def _check_same_outputs(logits: dict, checkpoint: Path, dep: Deployed) -> None:
    """The checkpoint and the deployed model must give logits of one shape (else they are different models)."""
    shapes = {name: out.shape for name, out in logits.items()}
    if len(set(shapes.values())) > 1:
        raise UserError(f"{checkpoint} and {dep.path} are not the same model: outputs "
                        + ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items()))


def _batches(n: int, size: int) -> list:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _padded(x: np.ndarray, size: int) -> np.ndarray:
    """A short last batch, filled up to `size` by repeating its last input (for fixed-batch artifacts)."""
    if len(x) == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


def _torch_runner(model, checkpoint):
    def run(x):
        try:
            with torch.no_grad():
                return model(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        except RuntimeError as e:  # e.g. a channel count the checkpoint's first conv does not take
            raise UserError(f"{checkpoint}: the model does not take inputs of shape {list(x.shape[1:])} "
                            f"({str(e).splitlines()[0]})") from None
    return run


def _ort_runner(onnx_path: Path):
    session = ort_session(onnx.load(str(onnx_path)))
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _artifact_runner(dep: Deployed):
    from sdbnn_deploy.run import run_artifact

    return lambda x: next(iter(run_artifact(dep.path, x).values()))


class _progress:
    """A rich progress bar over all batches of all runtimes; `advance(runtime)` after each batch."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda name: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from sdbnn_deploy.report import console

        self.bar = Progress(TextColumn("verify: {task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console, transient=True)
        self.bar.__enter__()
        task = self.bar.add_task("batches", total=self.total)
        return lambda name: self.bar.update(task, advance=1, description=f"{name} batches")

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)


def _figures(logits, reference, labels, note) -> dict:
    """One runtime's figures against PyTorch (null figures when it did not run)."""
    if logits is None:
        return {"ran": False, "note": note, "top1_accuracy": None, "top1_agreement": None,
                "max_abs_logit_diff": None, "mean_abs_logit_diff": None, "relative_logit_error": None}
    accuracy = None if labels is None else float(np.mean(logits.argmax(1) == labels))
    return {"ran": True, "note": None, "top1_accuracy": accuracy, **logit_figures(reference, logits)}


def _failures(runtimes: dict, tolerances: dict) -> list:
    """One line per runtime and exceeded tolerance."""
    failures = []
    for name, f in runtimes.items():
        if not f["ran"]:
            continue
        if f["top1_agreement"] < tolerances["min_top1_agreement"]:
            failures.append(f"{name}: top-1 agreement with PyTorch {f['top1_agreement']:.4f} < "
                            f"{tolerances['min_top1_agreement']}")
        if f["max_abs_logit_diff"] > tolerances["max_logit_diff"]:
            failures.append(f"{name}: max |logit difference| {f['max_abs_logit_diff']:.3g} > "
                            f"{tolerances['max_logit_diff']:.3g}")
    return failures


def summary(report: dict) -> str:
    """The verdict in a few plain lines (what assert_deployment_matches raises, what CI logs show)."""
    d = report["data"]
    lines = [f"verify {report['model']['path']} against {report['deployed']['path']} "
             f"(target {report['target']}) on {d['samples']} inputs of {d['spec']}: "
             + ("PASSED" if report["passed"] else "FAILED")]
    for name, f in report["runtimes"].items():
        if f["ran"] and name != "pytorch":
            acc = "" if f["top1_accuracy"] is None else f"accuracy {f['top1_accuracy']:.4f}, "
            lines.append(f"  {name}: {acc}agreement {f['top1_agreement']:.4f}, max |dlogit| "
                         f"{f['max_abs_logit_diff']:.3g}, mean |dlogit| {f['mean_abs_logit_diff']:.3g}")
    lines += [f"  exceeded: {line}" for line in report["failures"]]
    dep = report["departure"]
    if dep:
        lines.append(f"  first departure: {dep['layer'] or '(layer not located)'} in the {dep['stage']} "
                     f"({dep['compared']}): {dep['detail']}")
    lines += [f"  note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def print_report(report: dict) -> None:
    """The terminal table, the tolerances and the verdict."""
    from sdbnn_deploy.report import console, table

    rows = []
    for name, f in report["runtimes"].items():
        if not f["ran"]:
            rows.append([name, "-", "-", "-", "-", f["note"] or "not run"])
            continue
        acc = "-" if f["top1_accuracy"] is None else f"{f['top1_accuracy']:.2%}"
        rows.append([name, acc, f"{f['top1_agreement']:.2%}", f["max_abs_logit_diff"],
                     f["mean_abs_logit_diff"], "reference" if name == "pytorch" else ""])
    d, t = report["data"], report["tolerances"]
    table(f"verify on {d['samples']} inputs of {d['spec']} (target {report['target']})",
          ["runtime", "top-1 accuracy", "agreement", "max |dlogit|", "mean |dlogit|", "note"], rows)
    console.print(f"tolerances: agreement >= {t['min_top1_agreement']}, max |dlogit| <= "
                  f"{t['max_logit_diff']:.3g} (logit scale {t['logit_scale']:.3g})")
    for note in report["notes"]:
        console.print(f"note: {note}")
    if report["passed"]:
        console.print("[green]PASSED[/green]")
        return
    for line in report["failures"]:
        console.print(f"[red]exceeded[/red]: {line}")
    dep = report["departure"]
    if dep:
        console.print(f"first departure: [bold]{dep['layer'] or '(layer not located)'}[/bold] in the "
                      f"{dep['stage']} ({dep['compared']}): {dep['detail']}")
    console.print("[red]FAILED[/red]")
