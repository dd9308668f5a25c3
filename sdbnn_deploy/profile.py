"""profile: how fast a compiled artifact runs, where its time goes, and against what.

    profile_artifact(ARTIFACT, rpc=None | "HOST:PORT", tracker=None | "HOST:PORT", key=None, threads=None,
                     repeat=50, warmup=5, model=None, baselines=True) -> report (dict, the JSON layout)

- Where: this host, or a board over TVM's real RPC (sdbnn_deploy.remote): the library is uploaded and
  loaded there and a Relax VM runs on the board's CPU.
- End-to-end latency: the VM's own time_evaluator (it times on the device, not over the network), one
  call per repeat, after `warmup` calls; median, p90, min, mean and standard deviation in ms.
- Per-layer latency: TVM 0.27's Relax VM has no profiler any more (no profile=True), so every call the
  VM makes is timed by an instrument (VirtualMachine.set_instrument) written in C, profile_hook.c,
  built for the device's architecture and loaded next to the model (over RPC too, where a Python
  instrument cannot go). One row per kernel call in execution order, median over `LAYER_RUNS` runs; the
  VM's own builtins (allocation, shape checks) are summed in one figure. Rows of our custom ops carry the
  ONNX node they come from when the source ONNX of the manifest is still there.
- Baselines, when run on this host: the same architecture with float convolutions
  (sdbnn_deploy.models.float_twin; the weights of --model, else random weights from the architecture
  in the source ONNX's metadata: timing does not depend on the values) in PyTorch fp32 and in
  onnxruntime fp32 (torch.onnx.export of the twin), same threads, same input shape, same repeats;
  `speedup` = baseline median / TVM median.
- On an emulated board (sdbnn_deploy.board) the report says "emulated: times mean nothing".
"""
import hashlib
import io
import re
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import tvm

from sdbnn_deploy.errors import UserError
from sdbnn_deploy.remote import DEFAULT_TIMEOUT, Session, check_artifact, connect
from sdbnn_deploy.run import host_arch, load_manifest
from sdbnn_deploy.schema import header, sha256_of, target_of

LAYER_RUNS = 5
HOOK_SOURCE = Path(__file__).with_name("profile_hook.c")
HOOK_NAME_BYTES = 48  # NAME_BYTES of profile_hook.c
BUILTIN_PREFIX = "vm.builtin."
EMULATED_NOTE = "emulated: times mean nothing"
# Kernel name (TVM's function name without its numeric suffix) -> the custom ONNX op it implements.
CUSTOM_OP_KERNELS = {"binarize_pack": "BinarizePack", "binary_conv2d": "BinaryConv2d",
                     "packed_max_pool2d": "PackedMaxPool2d"}


def profile_artifact(artifact_dir, rpc: str | None = None, tracker: str | None = None, key: str | None = None,
                     threads: int | None = None, repeat: int = 50, warmup: int = 5, model=None,
                     baselines: bool = True, timeout: float = DEFAULT_TIMEOUT, progress=None) -> dict:
    """Profile an artifact here or on a board; returns the report (see the module docstring)."""
    progress = progress or (lambda step: None)
    if repeat < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise UserError("--repeat and --threads must be positive and --warmup not negative")
    artifact_dir = Path(artifact_dir)
    manifest = load_manifest(artifact_dir)
    progress("connecting" if rpc or tracker else "loading")
    session = connect(rpc, tracker, key, timeout)
    check_artifact(manifest, artifact_dir, session)
    threads = threads or manifest["threads"]
    session.set_threads(threads)
    library = artifact_dir / manifest["library"]
    vm = tvm.relax.VirtualMachine(session.load_module(library), session.device())
    inputs = [session.tensor(a) for a in random_inputs(manifest)]
    progress(f"timing {repeat} runs after {warmup} warm-up runs")
    latency = stats_ms(time_vm(vm, session, inputs, warmup, repeat))
    progress(f"timing every kernel over {LAYER_RUNS} runs")
    layers, builtins_ms = layer_times(session, vm, manifest, inputs, LAYER_RUNS)
    report = _header(manifest, library)
    report.update({
        "artifact": {"path": str(artifact_dir), "arch": manifest["arch"], "library_sha256": sha256_of(library),
                     "input_shapes": [i["shape"] for i in manifest["inputs"]]},
        "device": {"where": session.where, "arch": session.arch, "emulated": session.emulated,
                   "note": EMULATED_NOTE if session.emulated else None},
        "settings": {"threads": threads, "repeat": repeat, "warmup": warmup, "layer_runs": LAYER_RUNS},
        "latency": latency,
        "layers": layers,
        "vm_builtins_ms": builtins_ms,
        "baselines": None,
        "baselines_note": None,
    })
    if not baselines:
        report["baselines_note"] = "left out (--no-baselines)"
    elif not session.is_local:
        report["baselines_note"] = "only on this host (the board has no PyTorch); run profile locally for them"
    else:
        progress("timing the float twin in PyTorch and onnxruntime")
        report["baselines"], report["baselines_note"] = float_baselines(manifest, model, threads, warmup, repeat)
        for figures in (report["baselines"] or {}).values():
            figures["speedup"] = figures["median_ms"] / latency["median_ms"]
    return report


def _header(manifest: dict, library: Path) -> dict:
    """The common header; its model is the source ONNX as the manifest recorded it (file or not)."""
    report = header("profile", library, target_of(manifest))
    report["model"] = {"path": manifest["source"]["path"], "sha256": manifest["source"]["sha256"]}
    return report


def random_inputs(manifest: dict, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(i["shape"]).astype(i["dtype"]) for i in manifest["inputs"]]


def time_vm(vm, session: Session, inputs: list, warmup: int, repeat: int) -> list[float]:
    """Seconds per call of "main", timed on the device by the VM's time_evaluator (stateful API: works
    over RPC whatever main returns)."""
    vm.set_input("main", *inputs)
    if warmup:
        vm.time_evaluator("invoke_stateful", session.device(), number=1, repeat=warmup)("main")
    return list(vm.time_evaluator("invoke_stateful", session.device(), number=1, repeat=repeat)("main").results)


def stats_ms(seconds) -> dict:
    ms = np.asarray(seconds, np.float64) * 1e3
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "min_ms": float(ms.min()),
            "mean_ms": float(ms.mean()), "std_ms": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
            "repeats": int(len(ms))}


def layer_times(session: Session, vm, manifest: dict, inputs: list, runs: int) -> tuple[list[dict], float]:
    """Per kernel call (execution order): median ms over `runs` runs and share of the kernels' total;
    and the median of the VM builtins' total per run."""
    hook = session.load_module(hook_library(manifest["arch"]), "sdbnn_profile_hook.so")
    hook["sdbnn_profile_attach"](vm.module)
    vm["main"](*inputs)  # first run after attaching: not counted
    hook["sdbnn_profile_reset"]()
    for _ in range(runs):
        vm["main"](*inputs)
    names, ns = _dump(session, hook)
    per_run = len(names) // runs
    if per_run == 0 or len(names) != per_run * runs or any(names[i] != names[i % per_run] for i in range(len(names))):
        raise RuntimeError(f"profile: the VM made different calls in different runs ({len(names)} calls)")
    ms = np.asarray(ns, np.float64).reshape(runs, per_run) / 1e6
    symbols = names[:per_run]
    kernel_cols = [i for i, s in enumerate(symbols) if not s.startswith(BUILTIN_PREFIX)]
    builtin_cols = [i for i, s in enumerate(symbols) if s.startswith(BUILTIN_PREFIX)]
    medians = np.median(ms[:, kernel_cols], axis=0)
    total = float(medians.sum()) or 1.0
    node_names = _custom_op_nodes(manifest)
    seen = {}
    rows = []
    for index, (col, median) in enumerate(zip(kernel_cols, medians), start=1):
        kernel = symbols[col]
        base = re.sub(r"\d+$", "", kernel)
        op = CUSTOM_OP_KERNELS.get(base)
        nth = seen[op] = seen.get(op, -1) + 1
        layer = node_names[op][nth] if op in node_names and nth < len(node_names[op]) else None
        rows.append({"index": index, "kernel": kernel, "layer": layer, "median_ms": float(median),
                     "share": float(median) / total})
    builtins_ms = float(np.median(ms[:, builtin_cols].sum(axis=1))) if builtin_cols else 0.0
    return rows, builtins_ms


def _dump(session: Session, hook) -> tuple[list[str], np.ndarray]:
    count = int(hook["sdbnn_profile_count"]())
    names = session.tensor(np.zeros((count, HOOK_NAME_BYTES), np.uint8))
    ns = session.tensor(np.zeros(count, np.int64))
    n = int(hook["sdbnn_profile_dump"](names, ns))
    if n != count:
        raise RuntimeError(f"profile hook: dumped {n} of {count} records")
    text = [bytes(row).split(b"\0", 1)[0].decode(errors="replace") for row in names.numpy()]
    return text, ns.numpy()


def _custom_op_nodes(manifest: dict) -> dict[str, list[str]]:
    """Custom op type -> node names in graph order, from the source ONNX if it is unchanged; else {}."""
    path = Path(manifest["source"]["path"])
    if not path.is_file() or sha256_of(path) != manifest["source"]["sha256"]:
        return {}
    import onnx

    nodes = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.domain == "sdbnn":
            nodes.setdefault(node.op_type, []).append(node.name)
    return nodes


def hook_library(arch: str) -> Path:
    """profile_hook.c built for `arch` (cached by source hash under $SDBNN_DEPLOY_CACHE/profile-hook/)."""
    import tvm_ffi

    from sdbnn_deploy.aarch64 import _require_tool, cache_root, cross_compiler

    if arch == "aarch64":
        compiler = cross_compiler()
    elif arch == host_arch():
        compiler = _require_tool(["gcc", "cc"], "gcc")
    else:
        raise UserError(f"cannot build the profiling hook for {arch} on a {host_arch()} host")
    digest = hashlib.sha256(HOOK_SOURCE.read_bytes()).hexdigest()[:12]
    out = cache_root().parent / "profile-hook" / f"{arch}-{digest}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{time.monotonic_ns()}")
    include = Path(tvm_ffi.__file__).parent / "include"
    cmd = [compiler, "-O2", "-std=c11", "-Wall", "-shared", "-fPIC", f"-I{include}", "-o", str(tmp),
           str(HOOK_SOURCE)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the profiling hook failed:\n{proc.stderr}")
    tmp.replace(out)
    return out


def float_baselines(manifest: dict, model, threads: int, warmup: int, repeat: int) -> tuple[dict | None, str]:
    """PyTorch fp32 and onnxruntime fp32 timings of the float twin, and a note on the weights used."""
    import torch

    from sdbnn_deploy.models import float_twin

    shape = manifest["inputs"][0]["shape"]
    found = _binary_model(manifest, model)
    if isinstance(found, str):
        return None, found
    binary, weights = found
    twin = float_twin(binary).eval()
    x = torch.from_numpy(random_inputs(manifest)[0])
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            pytorch = _time_calls(lambda: twin(x), warmup, repeat)
        session = _ort_twin(twin, x, threads)
        feed = {session.get_inputs()[0].name: x.numpy()}
        onnxruntime = _time_calls(lambda: session.run(None, feed), warmup, repeat)
    finally:
        torch.set_num_threads(previous)
    note = f"float twin ({weights}), input {shape}, {threads} threads"
    return {"pytorch_fp32": stats_ms(pytorch), "onnxruntime_fp32": stats_ms(onnxruntime)}, note


def _binary_model(manifest: dict, model):
    """(the SD-BNN model, where its weights come from), or a string saying why there is none."""
    from sdbnn_deploy.models import ARCHITECTURES, build

    if model:
        from sdbnn_deploy.checkpoint import load_checkpoint

        return load_checkpoint(model).model, f"weights of {model}"
    path = Path(manifest["source"]["path"])
    if not path.is_file():
        return f"float baselines skipped: the source ONNX {path} is gone; pass --model MODEL.pt"
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if meta.get("sdbnn_deploy.arch") not in ARCHITECTURES:  # (0.1.0 wrote "None" for a model of no known name)
        return f"float baselines skipped: {path} does not name its architecture; pass --model MODEL.pt"
    input_shape = [int(d) for d in meta["sdbnn_deploy.input_shape"].split(",")]
    num_classes = manifest["outputs"][0]["shape"][-1]
    arch = meta["sdbnn_deploy.arch"]
    binary = build(arch, meta.get("sdbnn_deploy.asd", "static"), num_classes=num_classes,
                   in_channels=input_shape[0])
    return binary.eval(), f"{arch} from {path.name}'s metadata, random weights"


def _time_calls(call, warmup: int, repeat: int) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def _ort_twin(twin, x, threads: int):
    """An onnxruntime session of the float twin (exported by torch.onnx, TorchScript exporter)."""
    import onnx
    import torch

    from sdbnn_deploy.verify_conversion import ort_session

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(twin, (x,), buffer, dynamo=False, input_names=["input"], output_names=["logits"])
    return ort_session(onnx.load_from_string(buffer.getvalue()), threads)


def grouped_rows(rows: list[dict]) -> list[dict]:
    """Rows for people: each custom-op kernel call alone, each run of standard-op calls between two of
    them merged into one row (their times summed)."""
    groups = []
    for r in rows:
        custom = re.sub(r"\d+$", "", r["kernel"]) in CUSTOM_OP_KERNELS
        if custom or not groups or groups[-1]["custom"]:
            groups.append({"first": r["index"], "last": r["index"], "kernels": [r["kernel"]], "layer": r["layer"],
                           "median_ms": r["median_ms"], "share": r["share"], "custom": custom})
        else:
            g = groups[-1]
            g["last"] = r["index"]
            g["kernels"].append(r["kernel"])
            g["median_ms"] += r["median_ms"]
            g["share"] += r["share"]
    for g in groups:
        g["calls"] = f"{g['first']}" if g["first"] == g["last"] else f"{g['first']}-{g['last']}"
        if g["custom"]:
            g["what"] = g["kernels"][0]
        else:
            kinds = sorted({re.sub(r"\d+$", "", k) for k in g["kernels"]})
            g["what"] = f"{len(g['kernels'])} standard op{'s' if len(g['kernels']) > 1 else ''}"
            g["layer"] = ", ".join(kinds)
    return groups


def print_profile(report: dict) -> None:
    """The report as terminal tables."""
    from sdbnn_deploy.report import console, table

    device, settings = report["device"], report["settings"]
    console.print(f"profile of {report['artifact']['path']} ({report['target']}, {report['artifact']['arch']}) "
                  f"on {device['where']} ({device['arch']}), {settings['threads']} threads, "
                  f"{settings['repeat']} runs after {settings['warmup']} warm-up runs")
    if device["emulated"]:
        console.print(f"[bold yellow]{EMULATED_NOTE.upper()}[/bold yellow] (qemu-user on this host)")
    kernels = report["layers"]
    table(f"per-layer latency (kernel calls in execution order, median over {settings['layer_runs']} runs; "
          "the JSON lists every call)", ["calls", "kernel", "layer", "ms", "share"],
          [[g["calls"], g["what"], g["layer"] or "-", g["median_ms"], f"{g['share']:.1%}"]
           for g in grouped_rows(kernels)])
    console.print(f"kernels {sum(r['median_ms'] for r in kernels):.4g} ms + VM builtins "
                  f"{report['vm_builtins_ms']:.4g} ms per run")
    rows = [_latency_row("TVM (this artifact)", report["latency"], None)]
    names = {"pytorch_fp32": "PyTorch fp32 (float twin)", "onnxruntime_fp32": "onnxruntime fp32 (float twin)"}
    for key, figures in (report["baselines"] or {}).items():
        rows.append(_latency_row(names.get(key, key), figures, figures["speedup"]))
    title = "end-to-end latency (ms)" + (f" - {EMULATED_NOTE}" if device["emulated"] else "")
    table(title, ["runtime", "median", "p90", "min", "std", "TVM speedup"], rows)
    if report["baselines_note"]:
        console.print(f"baselines: {report['baselines_note']}")


def _latency_row(name: str, figures: dict, speedup) -> list:
    return [name, figures["median_ms"], figures["p90_ms"], figures["min_ms"], figures["std_ms"],
            "-" if speedup is None else f"{speedup:.2f}x"]


def plot_layers(report: dict, path) -> None:
    """A horizontal bar chart of the per-kernel medians (matplotlib, Agg backend), written to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = grouped_rows(report["layers"])
    labels = [f"{g['calls']} {g['layer'] if g['custom'] and g['layer'] else g['what']}" for g in rows]
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.22 * len(rows) + 1.5)))
    ax.barh(range(len(rows)), [r["median_ms"] for r in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("median latency (ms)")
    title = f"{report['target']} on {report['device']['where']}"
    ax.set_title(title + (f"\n{EMULATED_NOTE}" if report["device"]["emulated"] else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
