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
