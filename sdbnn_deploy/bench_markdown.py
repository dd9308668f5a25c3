"""The README's performance tables, rendered from a bench report (the JSON of `sdbnn-deploy bench --json`).

`sdbnn-deploy bench --markdown FILE` writes them after a run; `python -m sdbnn_deploy.bench_markdown
REPORT.json` renders a saved report again, so the README always shows a real run and the command that
produced it.
"""
import json
import sys

STATIC_MODELS = ("vgg_small-static", "resnet18-static", "bireal18-static")  # the per-layer table's models


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _latency_rows(report: dict) -> list[str]:
    rows = ["| model | threads | ours (TVM) | onnxruntime fp32 twin | PyTorch fp32 twin | LCE fastest | vs ort | "
            "vs torch | vs LCE |", "|---|---|---|---|---|---|---|---|---|"]
    for m in report["models"]:
        for threads, latency in m["latency"].items():
            ratios, lce = m["ratios"][threads], latency.get("lce")
            lce_text = f"{_ms(lce['median_ms'])} ({lce['path']})" if lce else "-"
            vs_lce = f"{ratios['vs_lce']:.1f}x" if ratios.get("vs_lce") else "-"
            rows.append(f"| {m['name']} | {threads} | {_ms(latency['ours']['median_ms'])} | "
                        f"{_ms(latency['onnxruntime']['median_ms'])} | {_ms(latency['torch']['median_ms'])} | "
                        f"{lce_text} | {ratios['vs_onnxruntime']:.1f}x | {ratios['vs_torch']:.1f}x | {vs_lce} |")
    return rows


def _layer_rows(report: dict) -> list[str]:
    """One row per distinct binary conv shape of the static models."""
    rows = ["| model | layer | Cin->Cout | output | T bit-MAC/s | of ceiling | 2-thread speed-up | "
            "aarch64 instr / 128 bit-MACs |", "|---|---|---|---|---|---|---|---|"]
    for m in report["models"]:
        if m["name"] not in STATIC_MODELS:
            continue
        seen = set()
        for layer in m["layers"]:
            shape = (layer["cin"], layer["cout"], tuple(layer["output_hw"]), tuple(layer["strides"]))
            if shape in seen or "1" not in layer["bit_macs_per_s"]:
                continue
            seen.add(shape)
            arm = layer.get("arm_instructions_per_128_bit_macs")
            rows.append(f"| {m['name']} | {layer['name']} | {layer['cin']}->{layer['cout']} | "
                        f"{layer['output_hw'][0]}x{layer['output_hw'][1]} | "
                        f"{layer['bit_macs_per_s']['1'] / 1e12:.2f} | {layer['ceiling_fraction']['1']:.0%} | "
                        + (f"{layer['speedup']:.2f}x" if "speedup" in layer else "-") + " | "
                        + (f"{arm:.2f}" if arm is not None else "-") + " |")
    return rows


def _target_rows(report: dict) -> list[str]:
    met = {True: "met", False: "**not met**", None: "-"}
    return ["| target | figure | met |", "|---|---|---|"] + [
        f"| {t['name']} | {t['text']} | {met[t['met']]} |" for t in report["targets"]]


def render(report: dict) -> str:
    """The tables of one report, with the host, versions and ceiling they were measured with."""
    host, options, ceiling = report["host"], report["options"], report["ceiling"]
    versions = ", ".join(f"{k} {v}" for k, v in host["versions"].items())
    lines = [
        f"Host: {host['cpu']}, {host['cores']} cores, target `{host['target']}`; load average "
        f"{host['load_before'][0]:.2f} before and {host['load_after'][0]:.2f} after. Versions: {versions}.",
        f"Threads {', '.join(map(str, options['threads']))}; batch 1; up to {options['repeat']} samples per "
        "backend, each backend timed in its own process. Median ms; ratios against our median in the same run.",
        "", *_latency_rows(report), "",
        f"Popcount ceiling measured in the same run ({ceiling['kind']}, {ceiling['accumulators']} register "
        f"accumulators, one core, best of its repeats): {ceiling['bit_macs_per_s'] / 1e12:.2f} T bit-MAC/s. Per "
        f"binary layer (each kernel timed alone, the best of its repeats in {options.get('kernel_passes', 1)} "
        "passes spread over the run, 1 thread; distinct shapes of the static models; the aarch64 "
        "column is read from "
        f"the disassembly of the `{options.get('arm_target') or '-'}` artifact):",
        "", *_layer_rows(report), "",
        "Targets of issue 6 on this run, as the benchmark prints them:", "", *_target_rows(report),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m sdbnn_deploy.bench_markdown REPORT.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        print(render(json.load(f)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
