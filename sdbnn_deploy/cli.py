"""The command line: each command parses its options, calls one library function, prints its report."""
import sys

import click

from sdbnn_deploy.errors import UserError


class _Group(click.Group):
    """Turns a UserError into one line on stderr and exit status 2; anything else is our bug."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sdbnn-deploy")
def main():
    """Deploy Self-Distribution Binary Neural Networks: PyTorch -> ONNX -> TVM, checked against PyTorch."""


@main.command("targets")
def targets_command():
    """List the compilation targets (targets/*.toml) and the aliases."""
    from sdbnn_deploy.targets import aliases, list_targets

    rows = [("NAME", "TRIPLE", "CPU", "FEATURES", "THREADS", "RPC KEY")]
    for t in list_targets():
        rows.append((t.name, t.triple, t.tvm_target.get("mcpu", ""), ",".join(t.features) or "-",
                     str(t.threads), t.rpc_key or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for name, resolved in aliases().items():
        click.echo(f"{name} -> {resolved}" + ("  (this host's best)" if name == "x86" else ""))
