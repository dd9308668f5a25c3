"""The main job on the bundled demo models, end to end: `make demo`.

For each shipped digits ResNet-20 (static and dynamic ASD):
    convert (proved against PyTorch) -> compile for this x86 host and for a Raspberry Pi 4
    -> run both artifacts (the Pi 4 one under qemu-aarch64) -> compare with PyTorch and onnxruntime
and print one summary table. Outputs go to demo-out/.
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sdbnn_deploy.checkpoint import load_checkpoint
from sdbnn_deploy.compile import compile_model
from sdbnn_deploy.convert import convert, write_atomically
from sdbnn_deploy.data import load_dataset
from sdbnn_deploy.report import console, print_conversion, table
from sdbnn_deploy.run import run_artifact
from sdbnn_deploy.targets import host_target_name
from sdbnn_deploy.verify_conversion import ort_session

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
CHECKPOINTS = [ROOT / "models" / "checkpoints" / f"digits_resnet20_{asd}.pt" for asd in ("static", "dynamic")]
QEMU_SAMPLES = 8  # a Pi 4 artifact under emulation is slow; its results are exact all the same


def run_batch1(artifact, x):
    """Run a batch-1 artifact over every sample of x; return the stacked logits."""
    return np.concatenate([next(iter(run_artifact(artifact, x[i:i + 1]).values())) for i in range(len(x))])


def demo(ckpt):
    name = ckpt.stem
    loaded = load_checkpoint(ckpt)
    data = load_dataset("digits", loaded.input_shape)
    console.rule(f"{name}: convert")
    onnx_path = OUT / f"{name}.onnx"
    result = convert(ckpt, probe=data.x[:32])
    print_conversion(result.report)
    write_atomically(onnx_path, result.onnx_model.SerializeToString())

    with torch.no_grad():
        logits_torch = loaded.model(torch.from_numpy(data.x)).numpy()
    logits_ort = ort_session(result.onnx_model).run(None, {"input": data.x})[0]
    row = {"model": name, "samples": len(data.x),
           "pytorch acc": float(np.mean(logits_torch.argmax(1) == data.y)),
           "onnxruntime acc": float(np.mean(logits_ort.argmax(1) == data.y))}

    host = host_target_name()
    for target, n in ((host, len(data.x)), ("rpi4", QEMU_SAMPLES)):
        console.rule(f"{name}: compile for {target}")
        t0 = time.time()
        artifact = compile_model(onnx_path, target, OUT / f"{name}-{target}")
        console.print(f"compiled in {time.time() - t0:.1f} s -> {artifact.path}")
        logits = run_batch1(artifact.path, data.x[:n])
        agree = float(np.mean(logits.argmax(1) == logits_torch[:n].argmax(1)))
        exact = float(np.max(np.abs(logits - logits_ort[:n])))
        row[f"{target} top-1 = pytorch"] = f"{agree:.0%} of {n}"
        row[f"{target} max |diff| vs ort"] = exact
    return row


def main():
    OUT.mkdir(exist_ok=True)
    missing = [str(c) for c in CHECKPOINTS if not c.exists()]
    if missing:
        sys.exit(f"error: demo checkpoints missing: {', '.join(missing)}")
    rows = [demo(c) for c in CHECKPOINTS]
    console.rule("summary")
    table("demo: digits ResNet-20, PyTorch vs deployed", list(rows[0]), [list(r.values()) for r in rows])


if __name__ == "__main__":
    main()
