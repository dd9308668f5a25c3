"""Reports: a readable table on the terminal (rich) and the same facts as JSON for machines."""
import json

from rich.console import Console
from rich.table import Table

console = Console(highlight=False, width=None if Console().is_terminal else 160)


def table(title, columns, rows):
    """Print rows (lists of values) under column names; columns of numbers are right-aligned."""
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        numeric = bool(rows) and all(isinstance(r[i], (int, float)) for r in rows if r[i] not in (None, "-"))
        t.add_column(c, justify="right" if numeric else "left")
    for r in rows:
        t.add_row(*[_fmt(v) for v in r])
    console.print(t)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.4f}".rstrip("0").rstrip(".")
    if isinstance(v, (list, tuple)):
        return "x".join(map(str, v))
    return str(v)


def write_json(path, obj):
    """Write a JSON report atomically."""
    from sdbnn_deploy.convert import write_atomically

    write_atomically(path, (json.dumps(obj, indent=2, default=_plain) + "\n").encode())


def _plain(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def print_conversion(report):
    rows = []
    for r in report["layers"]:
        if ".dybeta" in r["name"]:
            continue  # the squeeze-excitation of a dynamic ASD: listed with its binary layer's fold
        exact = "-" if r["kind"] == "float" else ("yes" if r.get("conv_mismatches") == 0 else
                                                   f"NO ({r.get('conv_mismatches')})")
        rows.append([r["name"], r["kind"], r["weight_shape"], r["fold"], r.get("flipped_channels", "-"),
                     r["bytes"], r["fp32_bytes"], exact, r.get("input_bit_mismatches", "-")])
    table(f"{report['arch'] or 'model'} ({report['asd']} ASD), input {report['input_shape']}",
          ["layer", "kind", "weights", "fold", "flipped", "bytes", "fp32 bytes", "exact", "bit mism."], rows)
    for w in report.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {w}")
    t, c = report["totals"], report["check"]
    console.print(f"{t['binary_layers']} binary and {t['float_layers']} float layers; constants "
                  f"{t['deployed_constant_bytes']:,} bytes against {t['fp32_parameter_bytes']:,} fp32 bytes: "
                  f"{t['compression']}x smaller")
    verdict = "[green]PASSED[/green]" if c["passed"] else f"[red]FAILED[/red]: {c['failure']}"
    console.print(f"check on {c['probe_batch']} inputs (onnxruntime vs PyTorch): top-1 agreement "
                  f"{c['top1_agreement']:.0%}, relative logit error {c['relative_logit_error']:.2e} "
                  f"(limit {c['max_relative_logit_error']:.0e}), binary layers bit-exact: "
                  f"{'yes' if c['binary_layers_exact'] else 'NO'}; {verdict}")
    if c.get("input_ties_resolved"):
        console.print(f"{c['input_ties_resolved']} input bits lay on a binarisation threshold to float precision "
                      "(x + shift == 0 or within rounding of it) and were resolved as deployed in the PyTorch run; "
                      "relative logit error without resolving them: "
                      f"{c['relative_logit_error_without_resolving_ties']:.2e}")
