"""bench: the structure of the report on a tiny configuration (never its speed), the targets' logic on a
hand-made report, the popcount ceiling program, and the CLI's option errors."""
import json

import pytest
from click.testing import CliRunner

from sdbnn_deploy.bench_markdown import render
from sdbnn_deploy.bench import BenchOptions, best_kernels, evaluate_targets, latency_figures, print_report, run_bench
from sdbnn_deploy.ceiling import measure_ceiling, widest_kind
from sdbnn_deploy.cli import main as cli


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    options = BenchOptions(models=["resnet20-static"], threads=[1], repeat=5, max_seconds=0.5, input_hw=(8, 8),
                           kernel_ms=1, ceiling_seconds=0.01, workdir=str(tmp_path_factory.mktemp("bench")))
    return run_bench(options)


def test_report_structure(tiny_report):
    r = tiny_report
    assert r["host"]["cores"] >= 1 and r["host"]["target"].startswith("x86")
    assert r["ceiling"]["bit_macs_per_s"] > 0 and r["ceiling"]["kind"] == widest_kind()
    (m,) = r["models"]
    assert m["name"] == "resnet20-static" and m["input_shape"] == [1, 3, 8, 8]
    for backend in ("ours", "onnxruntime", "torch"):
        figures = m["latency"]["1"][backend]
        assert figures["samples"] >= 5
        assert 0 < figures["p10_ms"] <= figures["median_ms"] <= figures["p90_ms"]
    assert m["ratios"]["1"]["vs_onnxruntime"] > 0
    assert len(m["layers"]) == 18  # ResNet-20: 9 blocks x 2 binary convs
    first = m["layers"][0]
    assert first["name"] == "layer1.0.conv1" and first["cin"] == 16 and first["output_hw"] == [8, 8]
    assert first["bit_macs"] == 16 * 8 * 8 * 16 * 9
    assert 0 < first["ceiling_fraction"]["1"] == pytest.approx(first["bit_macs_per_s"]["1"] / r["ceiling"]["bit_macs_per_s"])
    assert 0 < first["seconds"]["1"] <= first["median_seconds"]["1"]  # the best of the repeats, and their median
    assert m["layers"][6]["output_hw"] == [4, 4]  # layer2.0.conv1 has stride 2
    assert set(m["breakdown"]["1"]) >= {"binary_conv", "binarize_and_pool", "float_ops"}
    counts = [layer["arm_instructions_per_128_bit_macs"] for layer in m["layers"]]
    assert all(2 <= c < 20 for c in counts)  # read from the rpi4 artifact's disassembly
    names = [t["name"] for t in r["targets"]]
    assert any("70% of the ceiling" in n for n in names)
    arm = next(t for t in r["targets"] if t["name"].startswith("aarch64"))
    assert arm["figure"] == max(counts) and arm["met"] == (max(counts) <= 3.5)
    json.dumps(r)  # the report is plain JSON
    print_report(r)
    text = render(r)
    assert "| resnet20-static | 1 |" in text and "| target | figure | met |" in text
    assert text.count("| aarch64 (rpi4) hot loop") == 1


def _fake_model(name, ours_ms, ort_ms, fraction=0.8, speedup=None):
    layer = {"name": "conv", "cin": 128, "bit_macs": 2e8, "bit_macs_per_s": {"1": fraction * 1e12}}
    if speedup:
        layer["speedup"] = speedup
    return {"name": name, "layers": [layer],
            "latency": {"1": {"ours": {"median_ms": ours_ms}}},
            "ratios": {"1": {"vs_onnxruntime": ort_ms / ours_ms}}}


def test_targets_met_and_not_met():
    report = {"ceiling": {"bit_macs_per_s": 1e12}, "options": {"threads": [1, 2]},
              "models": [_fake_model("vgg_small-static", 1.0, 20.0, 0.75, 1.9),
                         _fake_model("vgg_small-dynamic", 1.2, 20.0),
                         _fake_model("resnet18-static", 1.0, 5.0, 0.5, 1.2)]}
    targets = {t["name"]: t for t in evaluate_targets(report)}
    vgg = next(t for n, t in targets.items() if n.startswith("vgg_small static") and "onnxruntime" in n)
    assert vgg["met"] is True and vgg["figure"] == 20.0
    r18 = next(t for n, t in targets.items() if n.startswith("resnet18 static"))
    assert r18["met"] is False and r18["figure"] == 5.0
    dyn = next(t for n, t in targets.items() if "dynamic" in n)
    assert dyn["met"] is False and dyn["figure"] == pytest.approx(0.2)
    eff = next(t for n, t in targets.items() if "70%" in n)
    assert eff["met"] is False and eff["figure"] == pytest.approx(0.5)
    threads = next(t for n, t in targets.items() if "1.8x" in n)
    assert threads["met"] is False and threads["figure"] == pytest.approx(1.2)
    lce = next(t for n, t in targets.items() if "Larq" in n)
    assert lce["met"] is None
    arm = next(t for n, t in targets.items() if n.startswith("aarch64"))
    assert arm["met"] is None


def test_arm_target_names_the_worst_layer():
    layers = [{"name": "a", "cin": 64, "arm_instructions_per_128_bit_macs": 4.9, "bit_macs": 0, "bit_macs_per_s": {}},
              {"name": "b", "cin": 256, "arm_instructions_per_128_bit_macs": 3.46, "bit_macs": 0, "bit_macs_per_s": {}}]
    report = {"ceiling": {"bit_macs_per_s": 1e12}, "options": {"threads": [1], "arm_target": "rpi4"},
              "models": [{"name": "m", "layers": layers, "latency": {}, "ratios": {}}]}
    arm = next(t for t in evaluate_targets(report) if t["name"].startswith("aarch64"))
    assert arm["met"] is False and arm["figure"] == 4.9
    assert arm["text"].startswith("1 of 2 above (Cin 64); worst 4.90 (m a, Cin 64)")
    layers[0]["arm_instructions_per_128_bit_macs"] = 3.5
    arm = next(t for t in evaluate_targets(report) if t["name"].startswith("aarch64"))
    assert arm["met"] is True


def test_best_kernels_keeps_each_calls_fastest_pass():
    first = [{"symbol": "a", "seconds": 2.0}, {"symbol": "b", "seconds": 1.0}, {"symbol": "a", "seconds": 2.0}]
    second = [{"symbol": "a", "seconds": 1.5}, {"symbol": "b", "seconds": 3.0}, {"symbol": "a", "seconds": 1.5}]
    assert best_kernels([first, second]) == [second[0], first[1], second[2]]
    with pytest.raises(RuntimeError, match="different kernels"):
        best_kernels([first, [second[0], second[2], second[1]]])


def test_latency_figures_order():
    f = latency_figures([0.003, 0.001, 0.002, 0.004, 0.010])
    assert f["median_ms"] == pytest.approx(3.0) and f["samples"] == 5
    assert f["p10_ms"] <= f["p25_ms"] <= f["median_ms"] <= f["p75_ms"] <= f["p90_ms"]


def test_ceiling_both_kinds():
    for kind in {widest_kind(), "popcnt64"}:
        c = measure_ceiling(kind, seconds=0.005, repeats=3)
        assert c.kind == kind and c.bit_macs_per_s >= c.median_bit_macs_per_s > 0
        assert c.accumulators == 16


@pytest.mark.parametrize("args, message", [(["--models", "nope"], "unknown model 'nope'"),
                                           (["--threads", "1,x"], "--threads"),
                                           (["--threads", "0"], "positive thread counts")])
def test_cli_option_errors(args, message):
    result = CliRunner().invoke(cli, ["bench", *args])
    assert result.exit_code == 2 and message in result.output
