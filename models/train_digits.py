"""Train the demo model: an SD-BNN ResNet-20 on the 16x16 digits data, on 2 CPU cores in a few minutes.

    python models/train_digits.py --asd static|dynamic [--epochs N] [--out PATH]

Everything is fixed by the seed: weights, batch order, and the held-out split (sdbnn_deploy.data).
The recipe follows the SD-BNN / IR-Net training code: Adam with a cosine learning rate, and the EDE
gradient estimator of sign() whose sharpness t grows each epoch from T_MIN to T_MAX:
    t = T_MIN * 10 ** (epoch / epochs * log10(T_MAX / T_MIN)),   k = max(1 / t, 1).
After training, the model is evaluated on the held-out split and saved with save_checkpoint; its
metadata (and digits_results.json next to it) records the test accuracy and how it was made.
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sdbnn_deploy.checkpoint import save_checkpoint
from sdbnn_deploy.data import digits_spec, digits_split
from sdbnn_deploy.models import build
from sdbnn_deploy.models.layers import IRConv2d

ARCH = "resnet20"
INPUT_SIZE = 16
SEED = 0
T_MIN, T_MAX = 0.1, 10.0
CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
RESULTS_NAME = "digits_results.json"


def ede_schedule(epoch: int, epochs: int):
    """The (k, t) of the EDE estimator for this epoch (0-based)."""
    t = T_MIN * 10 ** (epoch / epochs * math.log10(T_MAX / T_MIN))
    return max(1.0 / t, 1.0), t


def set_ede(model, k: float, t: float):
    """Set the estimator's k and t on every binary conv."""
    for layer in model.modules():
        if isinstance(layer, IRConv2d):
            layer.k = k
            layer.t = t


@torch.no_grad()
def count_correct(model, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> int:
    """How many of the inputs `x` the model in eval mode classifies as `y`."""
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(torch.from_numpy(x[start : start + batch_size]))
        correct += int((logits.argmax(1).numpy() == y[start : start + batch_size]).sum())
    return correct


def train(asd: str, epochs: int, batch_size: int, lr: float):
    """Train one model from the seed; return it and its training time in seconds."""
    torch.manual_seed(SEED)
    x_train, y_train, _, _ = digits_split(INPUT_SIZE)
    x_train, y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
    model = build(ARCH, asd=asd, num_classes=10, in_channels=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    order = torch.Generator().manual_seed(SEED)
    started = time.perf_counter()
    for epoch in range(epochs):
        set_ede(model, *ede_schedule(epoch, epochs))
        model.train()
        total = 0.0
        for batch in torch.randperm(len(x_train), generator=order).split(batch_size):
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        schedule.step()
        print(f"epoch {epoch + 1}/{epochs}  loss {total / len(x_train):.4f}  {time.perf_counter() - started:.0f} s", flush=True)
    return model, time.perf_counter() - started


def record_result(out: Path, result: dict):
    """Add this checkpoint's figures to digits_results.json in the checkpoint's folder."""
    path = out.parent / RESULTS_NAME
    results = json.loads(path.read_text()) if path.exists() else {}
    results[out.name] = result
    path.write_text(json.dumps(dict(sorted(results.items())), indent=2) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--asd", choices=["static", "dynamic"], required=True)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--out", type=Path, help="default: models/checkpoints/digits_resnet20_ASD.pt")
    args = parser.parse_args()
    out = args.out or CHECKPOINTS / f"digits_{ARCH}_{args.asd}.pt"

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    model, seconds = train(args.asd, args.epochs, args.batch_size, args.lr)
    _, _, x_test, y_test = digits_split(INPUT_SIZE)
    correct = count_correct(model, x_test, y_test)
    result = {
        "arch": ARCH,
        "asd": args.asd,
        "test_accuracy": correct / len(y_test),
        "test_correct": correct,
        "test_count": len(y_test),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": f"Adam lr={args.lr}, cosine schedule",
        "ede": {"t_min": T_MIN, "t_max": T_MAX},
        "seed": SEED,
        "data": digits_spec(INPUT_SIZE),
        "training_seconds": round(seconds, 1),
        "torch_version": str(torch.__version__),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model, ARCH, args.asd, (1, INPUT_SIZE, INPUT_SIZE), meta=result)
    record_result(out, result)
    print(f"{out}: held-out accuracy {correct}/{len(y_test)} = {correct / len(y_test):.4f}")


if __name__ == "__main__":
    main()
