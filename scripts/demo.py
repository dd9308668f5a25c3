"""The main job on the bundled demo models, end to end: `make demo`.

For each shipped digits ResNet-20 (static and dynamic ASD):
    convert (proved against PyTorch) -> compile for this x86 host and for a Raspberry Pi 4
    -> verify both artifacts on the held-out digits (the Pi 4 one under qemu-aarch64) against PyTorch
       and onnxruntime -> profile the x86 artifact against the float twin in PyTorch and onnxruntime
and print one summary table. Outputs (ONNX, artifacts, JSON reports) go to demo-out/.
"""
import sys
import time
from pathlib import Path

from sdbnn_deploy.checkpoint import load_checkpoint
from sdbnn_deploy.compile import compile_model
from sdbnn_deploy.convert import convert, write_atomically
from sdbnn_deploy.data import load_dataset
from sdbnn_deploy.profile import print_profile, profile_artifact
from sdbnn_deploy.report import console, print_conversion, table, write_json
from sdbnn_deploy.targets import host_target_name
from sdbnn_deploy.verify import print_report, verify

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
CHECKPOINTS = [ROOT / "models" / "checkpoints" / f"digits_resnet20_{asd}.pt" for asd in ("static", "dynamic")]
QEMU_SAMPLES = 64  # a Pi 4 artifact under emulation is slow; its results are exact all the same


def demo(ckpt):
    name = ckpt.stem
    console.rule(f"{name}: convert")
    onnx_path = OUT / f"{name}.onnx"
    result = convert(ckpt, probe=load_dataset("digits", load_checkpoint(ckpt).input_shape).x[:32])
    print_conversion(result.report)
    write_atomically(onnx_path, result.onnx_model.SerializeToString())
    row = {"model": name, "compression": f"{result.report['totals']['compression']}x"}

    for target, limit in ((host_target_name(), None), ("rpi4", QEMU_SAMPLES)):
        console.rule(f"{name}: compile for {target}")
        t0 = time.time()
        artifact = compile_model(onnx_path, target, OUT / f"{name}-{target}", batch=1 if limit is None else 8)
        console.print(f"compiled in {time.time() - t0:.1f} s -> {artifact.path}")
        console.rule(f"{name}: verify the {target} artifact")
        report = verify(ckpt, artifact.path, data="digits", limit=limit)
        print_report(report)
        write_json(OUT / f"{name}-{target}-verify.json", report)
        deployed = report["runtimes"]["tvm"]
        row[f"{target} accuracy (n)"] = f"{deployed['top1_accuracy']:.2%} ({report['data']['samples']})"
        row[f"{target} = pytorch"] = f"{deployed['top1_agreement']:.0%}"
        row[f"{target} verify"] = "passed" if report["passed"] else "FAILED"
        if limit is None:
            row["pytorch accuracy (n)"] = f"{report['runtimes']['pytorch']['top1_accuracy']:.2%} ({report['data']['samples']})"
            console.rule(f"{name}: profile the {target} artifact")
            prof = profile_artifact(artifact.path, model=ckpt, threads=1, repeat=30)
            print_profile(prof)
            write_json(OUT / f"{name}-{target}-profile.json", prof)
            row["x86 ms (1 thread)"] = prof["latency"]["median_ms"]
    return row


def main():
    OUT.mkdir(exist_ok=True)
    missing = [str(c) for c in CHECKPOINTS if not c.exists()]
    if missing:
        sys.exit(f"error: demo checkpoints missing: {', '.join(missing)}")
    rows = [demo(c) for c in CHECKPOINTS]
    console.rule("summary")
    table("demo: digits ResNet-20, PyTorch vs deployed (held-out digits)", list(rows[0]),
          [list(r.values()) for r in rows])
    if not all(v != "FAILED" for r in rows for v in r.values()):
        sys.exit("error: a deployed model did not match its PyTorch model")


if __name__ == "__main__":
    main()
