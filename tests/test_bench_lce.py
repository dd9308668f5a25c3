"""bench --lce without TensorFlow: the LCE worker is replaced by a fake "Python" that answers as the
worker does, so these tests check the command lines, the parsing of the worker's JSON, the merge into the
report, the issue-6 target and the printed table. (The real worker runs in .venv-lce: `make bench-lce`.)"""
import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sdbnn_deploy import bench_lce, lce_worker
from sdbnn_deploy.bench import BenchOptions, evaluate_targets, latency_figures, print_report
from sdbnn_deploy.cli import main as cli
from sdbnn_deploy.errors import UserError

# The fake worker's median per path (ms): the fastest x86 path is indirect BGEMM with XNNPack.
FAKE_MS = {"default": 40.0, "indirect_bgemm": 6.0, "indirect_bgemm_xnnpack": 5.0}

FAKE_WORKER = f"""#!{sys.executable}
import json, os, sys
worker, command, spec_path = sys.argv[1:]
spec = json.load(open(spec_path))
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "spec": spec, "omp": os.environ.get("OMP_NUM_THREADS")}}) + "\\n")
print("2026-01-01 I tensorflow/core/platform/cpu_feature_guard.cc:182] a log line before the JSON")
if command == "convert":
    models = {{}}
    for name, m in spec["models"].items():
        open(m["output"], "wb").write(b"fake")
        models[name] = {{"output": m["output"], "bytes": 4, "ops": {{"LceBconv2d": 5}}, "binary_convs": 5}}
    print(json.dumps({{"versions": {{"larq_compute_engine": "0.16.0", "larq": "0.14.0", "tensorflow": "2.15.1"}},
                      "models": models}}))
else:
    ms = {json.dumps(FAKE_MS)}[spec["path"]] / spec["threads"]
    print(json.dumps({{"samples": [ms / 1e3] * spec["repeat"]}}))
"""


@pytest.fixture
def fake_python(tmp_path, monkeypatch):
    path = tmp_path / "fake-python"
    path.write_text(FAKE_WORKER)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.jsonl"))
    return path


def _calls(tmp_path):
    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


def test_worker_command_runs_the_worker_script():
    command = bench_lce.worker_command("/x/.venv-lce/bin/python", "time", "/w/spec.json")
    assert command == ["/x/.venv-lce/bin/python", str(bench_lce.WORKER), "time", "/w/spec.json"]
    assert bench_lce.WORKER.name == "lce_worker.py" and bench_lce.WORKER.exists()


def test_worker_and_host_agree_on_models_and_paths():
    assert set(bench_lce.ARCHITECTURES) == set(lce_worker.ARCHITECTURES)
    assert set(bench_lce.PATHS) == set(lce_worker.PATHS)
    assert lce_worker.PATHS["indirect_bgemm"] == {"use_indirect_bgemm": True}
    assert lce_worker.PATHS["default"] == {}


def test_worker_times_with_the_bench_rule():
    from sdbnn_deploy.bench_timing import samples

    assert lce_worker.samples is samples
    assert len(samples(lambda: None, repeat=7, max_seconds=1.0)) == 7


def test_worker_script_imports_in_an_environment_without_the_package(tmp_path):
    """The LCE environment has numpy but not sdbnn_deploy (nor torch, tvm, ...): with only numpy on the
    path (python -I -S: no site-packages), the script finds bench_timing beside itself and answers."""
    site = tmp_path / "site"
    site.mkdir()
    for name in ("numpy", "numpy.libs"):
        if (Path(np.__file__).parent.parent / name).exists():
            (site / name).symlink_to(Path(np.__file__).parent.parent / name)
    script = (f"import importlib.util, runpy, sys; sys.path.append({str(site)!r}); "
              "assert importlib.util.find_spec('sdbnn_deploy') is None and importlib.util.find_spec('torch') is None; "
              f"sys.argv = ['w']; runpy.run_path({str(bench_lce.WORKER)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: lce_worker.py convert|time SPEC.json"), proc.stderr


def test_parse_worker_output_takes_the_last_json_line():
    out = bench_lce.parse_worker_output('W0000 tensorflow says hi\n{"samples": [0.001]}\n\n')
    assert out == {"samples": [0.001]}
    for bad in ("", "Traceback: boom\n", "[1, 2]\n"):
        with pytest.raises(RuntimeError, match="lce_worker"):
            bench_lce.parse_worker_output(bad)


def test_run_lce_with_a_fake_worker(fake_python, tmp_path):
    lce = bench_lce.run_lce({"vgg_small": (3, 32, 32), "resnet20": (3, 8, 8)}, threads=[1, 2], repeat=5,
                            max_seconds=1.0, workdir=tmp_path, python=fake_python)
    calls = _calls(tmp_path)
    convert, timings = calls[0], calls[1:]
    assert convert["argv"][:2] == [str(bench_lce.WORKER), "convert"]
    assert convert["spec"]["models"]["vgg_small"]["input_hwc"] == [32, 32, 3]  # NHWC for Larq
    assert convert["spec"]["models"]["resnet20"]["input_hwc"] == [8, 8, 3]
    assert len(timings) == 2 * 2 * len(bench_lce.PATHS)  # models x threads x paths, one process each
    assert {(c["spec"]["path"], c["spec"]["threads"], c["omp"]) for c in timings} == \
        {(p, t, str(t)) for p in bench_lce.PATHS for t in (1, 2)}
    vgg = lce["models"]["vgg_small"]
    assert vgg["latency"]["1"]["default"]["median_ms"] == pytest.approx(40.0)
    assert vgg["latency"]["2"]["indirect_bgemm"]["median_ms"] == pytest.approx(3.0)
    assert vgg["fastest"] == {"1": "indirect_bgemm_xnnpack", "2": "indirect_bgemm_xnnpack"}
    assert lce["versions"]["larq_compute_engine"] == "0.16.0" and "one-padded" in lce["note"]


def test_fastest_path_is_never_the_default_path():
    paths = {"default": {"median_ms": 1.0}, "indirect_bgemm": {"median_ms": 3.0},
             "indirect_bgemm_xnnpack": {"median_ms": 2.0}}
    assert bench_lce.fastest_path(paths) == "indirect_bgemm_xnnpack"


def _our_model(name, arch, ours_ms):
    figures = latency_figures([ours_ms / 1e3] * 5)
    twin = latency_figures([10 * ours_ms / 1e3] * 5)
    return {"name": name, "arch": arch, "input_shape": [1, 3, 32, 32], "layers": [],
            "latency": {"1": {"ours": figures, "onnxruntime": twin, "torch": twin}},
            "ratios": {"1": {"vs_onnxruntime": 10.0, "vs_torch": 10.0}}}


def _lce_section(vgg_ms):
    paths = {p: latency_figures([ms / 1e3] * 5) for p, ms in
             (("default", 40.0), ("indirect_bgemm", vgg_ms), ("indirect_bgemm_xnnpack", vgg_ms + 1))}
    return {"versions": {"larq_compute_engine": "0.16.0", "larq": "0.14.0", "tensorflow": "2.15.1"},
            "note": bench_lce.TIMING_ONLY, "fastest_path_flag": bench_lce.FASTEST_PATH_NOTE,
            "models": {"vgg_small": {"ops": {}, "binary_convs": 5, "latency": {"1": paths},
                                     "fastest": {"1": "indirect_bgemm"}}}}


@pytest.mark.parametrize("lce_ms, met", [(6.0, True), (3.0, False)])
def test_merge_and_the_4x_target(lce_ms, met, capsys):
    report = {"ceiling": {"bit_macs_per_s": 1e12}, "options": {"threads": [1]},
              "models": [_our_model("vgg_small-static", "vgg_small", 1.0), _our_model("bireal18-static", "bireal18", 9)]}
    bench_lce.merge_lce(report, _lce_section(lce_ms))
    vgg, bireal = report["models"]
    assert vgg["latency"]["1"]["lce"]["path"] == "indirect_bgemm"
    assert vgg["ratios"]["1"]["vs_lce"] == pytest.approx(lce_ms)
    assert "lce" not in bireal["latency"]["1"] and "vs_lce" not in bireal["ratios"]["1"]
    target = next(t for t in evaluate_targets(report) if "Larq" in t["name"])
    assert target["met"] is met and target["figure"] == pytest.approx(lce_ms)
    assert f"{lce_ms:.1f}x (LCE indirect_bgemm" in target["text"]
    assert bench_lce.lce_rows(report) == [["vgg_small-static", "1", "1.000", "40.000", f"{lce_ms:.3f}",
                                           f"{lce_ms + 1:.3f}", "indirect_bgemm", f"{lce_ms:.1f}x"]]
    report.update(host={"cpu": "x", "cores": 2, "target": "x86", "load_before": [0], "load_after": [0]},
                  ceiling={"kind": "k", "accumulators": 16, "bit_macs_per_s": 1e12, "median_bit_macs_per_s": 1e12},
                  targets=evaluate_targets(report))
    for m in report["models"]:
        m["breakdown"] = {}
    print_report(report)
    printed = capsys.readouterr().out
    assert "Larq Compute Engine 0.16.0" in printed and "pad_values=1.0" in printed


def test_lce_models_keeps_the_supported_architectures_once():
    names = ["vgg_small-static", "vgg_small-dynamic", "bireal18-static", "resnet18-static"]
    assert bench_lce.lce_models(names, lambda arch: [3, 32, 32]) == {"vgg_small": (3, 32, 32),
                                                                    "resnet18": (3, 32, 32)}


def test_ensure_venv_reuses_an_installed_environment(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text("")
    (tmp_path / bench_lce.INSTALLED_STAMP).write_text("")
    assert bench_lce.ensure_venv(tmp_path, base_python="/nonexistent") == tmp_path / "bin" / "python"


def test_ensure_venv_rejects_a_python_tensorflow_has_no_wheels_for(tmp_path, fake_python):
    fake_python.write_text(f"#!{sys.executable}\nprint(3, 13)\n")
    with pytest.raises(UserError, match="SDBNN_LCE_PYTHON"):
        bench_lce.ensure_venv(tmp_path / "venv", base_python=str(fake_python))
    assert not (tmp_path / "venv").exists()


def test_cli_passes_lce(monkeypatch):
    import sdbnn_deploy.bench as bench

    seen = {}

    def fake_run_bench(options, progress=None):
        seen["options"] = options
        raise UserError("stop here")

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    result = CliRunner().invoke(cli, ["bench", "--lce", "--models", "vgg_small-static"])
    assert result.exit_code == 2 and "stop here" in result.output
    assert isinstance(seen["options"], BenchOptions) and seen["options"].lce is True
    CliRunner().invoke(cli, ["bench", "--models", "vgg_small-static"])
    assert seen["options"].lce is False  # without --lce nothing changes
