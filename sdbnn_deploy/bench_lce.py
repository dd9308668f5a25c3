"""The optional Larq Compute Engine (LCE) peer of the benchmark (`sdbnn-deploy bench --lce`, `make bench-lce`).

LCE 0.16 needs numpy < 2 and TensorFlow 2.15, so it lives in its own virtual environment, `.venv-lce`
in the current folder (or $SDBNN_LCE_VENV), created on first use and never part of the default set-up.
Nothing here imports TensorFlow: the LCE side is sdbnn_deploy/lce_worker.py, run with that
environment's Python, one process per step, each printing one JSON object on its last stdout line:

  1. `lce_worker.py convert SPEC`: the Larq equivalents of our architectures (random weights, one-padded
     binary convs: for timing only) converted with larq_compute_engine.convert_keras_model;
  2. `lce_worker.py time SPEC`: per (architecture, LCE path, thread count), in a fresh process, the
     batch-1 latency samples of larq_compute_engine.testing.Interpreter on that path.

The section it returns (report["lce"]) holds every path's figures; merge_lce adds to each of our models
of a supported architecture the fastest LCE path's figures as backend "lce" and the ratio "vs_lce".
"""
import json
import os
import subprocess
import sys
from pathlib import Path

from sdbnn_deploy.errors import UserError

REQUIREMENTS = ["tensorflow-cpu==2.15.1", "larq==0.14.0", "larq-compute-engine==0.16.0", "numpy<2"]
PYTHON_VERSIONS = ((3, 9), (3, 11))  # the CPython versions tensorflow-cpu 2.15.1 has wheels for
WORKER = Path(__file__).with_name("lce_worker.py")
ARCHITECTURES = ("vgg_small", "resnet20", "resnet18")  # those lce_worker builds
PATHS = ("default", "indirect_bgemm", "indirect_bgemm_xnnpack")  # lce_worker.PATHS, slowest first
FASTEST_PATH_NOTE = "use_indirect_bgemm=True (LCE's fastest x86 binary conv)"
TIMING_ONLY = ("Larq models with random weights and one-padded binary convs (pad_values=1.0, LCE's fast "
               "path): for timing only, their outputs differ from our zero-padded SD-BNN")
INSTALLED_STAMP = ".sdbnn-lce-installed"


# ---- the environment -------------------------------------------------------------------------------------

def venv_path() -> Path:
    return Path(os.environ.get("SDBNN_LCE_VENV", ".venv-lce"))


def ensure_venv(venv: Path | None = None, base_python: str | None = None, progress=None) -> Path:
    """The Python of the LCE environment; creates it and installs REQUIREMENTS on first use (about 1.4 GB)."""
    venv = Path(venv or venv_path())
    python = venv / "bin" / "python"
    if (venv / INSTALLED_STAMP).exists() and python.exists():
        return python
    base = base_python or os.environ.get("SDBNN_LCE_PYTHON", sys.executable)
    _check_python_version(base)
    step = progress or (lambda message: None)
    step(f"creating {venv} for Larq Compute Engine (about 1.4 GB, once)")
    _run_or_fail([base, "-m", "venv", str(venv)], f"creating {venv}")
    step(f"installing {' '.join(REQUIREMENTS)} into {venv}")
    _run_or_fail([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], f"installing LCE into {venv}")
    (venv / INSTALLED_STAMP).write_text("\n".join(REQUIREMENTS) + "\n")
    return python


def _check_python_version(python: str) -> None:
    done = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True)
    version = tuple(int(v) for v in done.stdout.split()) if done.returncode == 0 else None
    low, high = PYTHON_VERSIONS
    if version is None or not low <= version <= high:
        raise UserError(f"--lce: {python} is Python {'.'.join(map(str, version or ('?',)))}; tensorflow-cpu 2.15.1 "
                        f"needs 3.9-3.11: point SDBNN_LCE_PYTHON at such an interpreter")


def _run_or_fail(command: list, what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"--lce: {what} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")


# ---- talking to the worker -------------------------------------------------------------------------------

def worker_command(python: Path, command: str, spec_path: Path) -> list[str]:
    """The command line that runs one worker step with the LCE environment's Python."""
    return [str(python), str(WORKER), command, str(spec_path)]


def parse_worker_output(stdout: str) -> dict:
    """The JSON object on the worker's last non-empty stdout line (TensorFlow may log before it)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    try:
        out = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"lce_worker printed no JSON object; its output ended with: {stdout[-500:]!r}") from None
    if not isinstance(out, dict):
        raise RuntimeError(f"lce_worker printed {type(out).__name__}, not a JSON object")
    return out


def call_worker(python: Path, command: str, spec: dict, workdir: Path, threads: int = 1) -> dict:
    """Run one worker step (TensorFlow's own thread pools limited to `threads`); its JSON result."""
    spec_path = workdir / f"lce-{command}-{os.getpid()}.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": str(threads),
           "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1"}
    done = subprocess.run(worker_command(python, command, spec_path), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"lce_worker {command} failed:\n{done.stderr[-3000:]}")
    return parse_worker_output(done.stdout)


# ---- the measurement -------------------------------------------------------------------------------------

def run_lce(models: dict, threads: list, repeat: int, max_seconds: float, workdir: Path, python: Path,
            progress=None) -> dict:
    """models: {arch: input shape (C, H, W)} of supported architectures. Converts each Larq equivalent and
    times every path per thread count; returns the report's "lce" section (see the module docstring)."""
    from sdbnn_deploy.bench import latency_figures

    step = progress or (lambda message: None)
    step(f"Larq Compute Engine: convert {', '.join(models)}")
    spec = {"models": {arch: {"arch": arch, "input_hwc": [h, w, c], "output": str(workdir / f"{arch}-lce.tflite")}
                       for arch, (c, h, w) in models.items()}}
    converted = call_worker(python, "convert", spec, workdir)
    out = {"versions": converted["versions"], "note": TIMING_ONLY, "fastest_path_flag": FASTEST_PATH_NOTE,
           "models": {}}
    for arch, conv in converted["models"].items():
        latency = {}
        for t in threads:
            latency[str(t)] = {}
            for path in PATHS:
                step(f"Larq Compute Engine: {arch}, {path}, {t} thread(s)")
                timing = {"flatbuffer": conv["output"], "path": path, "threads": t, "repeat": repeat,
                          "max_seconds": max_seconds}
                latency[str(t)][path] = latency_figures(call_worker(python, "time", timing, workdir, t)["samples"])
        out["models"][arch] = {"ops": conv["ops"], "binary_convs": conv["binary_convs"], "latency": latency,
                               "fastest": {t: fastest_path(v) for t, v in latency.items()}}
    return out


def fastest_path(paths: dict) -> str:
    """The use_indirect_bgemm path with the lowest median (with or without XNNPack for the float ops)."""
    return min((p for p in paths if p.startswith("indirect_bgemm")), key=lambda p: paths[p]["median_ms"])


def merge_lce(report: dict, lce: dict) -> None:
    """report["lce"] = lce; each of our models of an LCE architecture gets, per thread count, the fastest
    LCE path's figures as latency[t]["lce"] (with its "path") and ratios[t]["vs_lce"] = LCE / ours."""
    report["lce"] = lce
    for m in report["models"]:
        peer = lce["models"].get(m["arch"])
        if not peer:
            continue
        for t, backends in m["latency"].items():
            if t not in peer["latency"]:
                continue
            path = peer["fastest"][t]
            backends["lce"] = {**peer["latency"][t][path], "path": path}
            m["ratios"][t]["vs_lce"] = backends["lce"]["median_ms"] / backends["ours"]["median_ms"]


def lce_rows(report: dict) -> list[list]:
    """Rows of the printed LCE table: our model, threads, ours, each LCE path, fastest path, ours vs it."""
    rows = []
    for m in report["models"]:
        peer = report["lce"]["models"].get(m["arch"])
        for t, backends in m["latency"].items():
            if not peer or "lce" not in backends:
                continue
            paths = peer["latency"][t]
            rows.append([m["name"], t, f"{backends['ours']['median_ms']:.3f}",
                         *(f"{paths[p]['median_ms']:.3f}" if p in paths else "-" for p in PATHS),
                         backends["lce"]["path"], f"{m['ratios'][t]['vs_lce']:.1f}x"])
    return rows


def lce_models(model_names: list, input_shape) -> dict:
    """{arch: (C, H, W)} for the architectures among our benchmarked models that LCE's worker builds."""
    from sdbnn_deploy.bench import MODELS

    archs = [MODELS[name][0] for name in model_names]
    return {arch: tuple(input_shape(arch)) for arch in dict.fromkeys(archs) if arch in ARCHITECTURES}
