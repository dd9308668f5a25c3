"""The JSON reports of `verify` and `profile`: one stable, documented layout, so CI can diff runs.

Every report is a dict that starts with the common header that `header()` builds:

    {
      "schema": "sdbnn-deploy-report",      # always this string
      "schema_version": 1,                   # SCHEMA_VERSION; raised only when a field changes meaning
      "kind": "verify" | "profile",          # which command wrote it
      "created": "2026-11-05T12:00:00Z",     # UTC, ISO 8601
      "model": {"path": str, "sha256": str}, # the checkpoint (verify) or the source ONNX (profile)
      "target": str,                         # the artifact's target name (manifest), or "onnx"
      "tools": {"sdbnn_deploy": str, "python": str, "torch": str, "onnxruntime": str, "tvm": str},
      ...                                    # the command's own sections, below
    }

`verify` adds (sdbnn_deploy.verify):

      "deployed": {"path": str, "kind": "onnx" | "artifact", "sha256": str (ONNX file or model library),
                   "batch": int | null (an artifact's compiled batch), "arch": str | null},
      "data": {"spec": str ("digits", a file or a folder), "samples": int, "labelled": bool},
      "runtimes": {NAME: {"ran": bool, "note": str | null,          # why it did not run
                          "top1_accuracy": float | null,           # null without labels
                          "top1_agreement": float,                 # with PyTorch (a tie for the max agrees)
                          "max_abs_logit_diff": float, "mean_abs_logit_diff": float,
                          "relative_logit_error": float}},
                   # NAME is "pytorch" (the reference: agreement 1, differences 0), "onnxruntime", "tvm"
      "tolerances": {"min_top1_agreement": float, "max_logit_diff": float,   # absolute, logit units
                     "logit_scale": float},       # max |logit| of PyTorch on the data, for reading max_logit_diff
      "passed": bool,
      "failures": [str],                          # one line per exceeded tolerance; empty when passed
      "departure": null | {"layer": str,          # first layer that departs, in graph order
                           "stage": "conversion" | "compilation",
                           "compared": str,       # what against what, e.g. "onnxruntime vs pytorch"
                           "detail": str,
                           "layers_checked": int}

`profile` adds its latency sections (sdbnn_deploy.profile) under keys of its own; figures are in
milliseconds and every key name says its unit (`median_ms`).

Rules: keys are never renamed or removed within one schema_version; new keys may appear. Floats are
plain JSON numbers; absent figures are null, never NaN.
"""
import datetime
import hashlib
import platform
from pathlib import Path

SCHEMA = "sdbnn-deploy-report"
SCHEMA_VERSION = 1


def sha256_of(path) -> str:
    """sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tool_versions() -> dict:
    """Versions of the tools that produced a report (a tool that is not installed is null)."""
    from sdbnn_deploy import __version__

    versions = {"sdbnn_deploy": __version__, "python": platform.python_version()}
    for name, module in (("torch", "torch"), ("onnxruntime", "onnxruntime"), ("tvm", "tvm")):
        try:
            versions[name] = __import__(module).__version__
        except ImportError:
            versions[name] = None
    return versions


def header(kind: str, model_path, target: str) -> dict:
    """The common header of every report: schema, kind, time, model hash, target, tool versions."""
    model_path = Path(model_path)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {"path": str(model_path), "sha256": sha256_of(model_path)},
        "target": target,
        "tools": tool_versions(),
    }


def target_of(manifest: dict | None) -> str:
    """The report's target: the artifact manifest's target name, or "onnx" for an ONNX file."""
    return manifest["target"]["name"] if manifest else "onnx"
