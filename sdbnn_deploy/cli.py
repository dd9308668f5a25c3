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


def _shape_option(text):
    """'N,C,H,W' or 'C,H,W' -> (C, H, W)."""
    if text is None:
        return None
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--input-shape {text!r}: expected N,C,H,W or C,H,W integers") from None
    if len(dims) not in (3, 4) or min(dims) < 1:
        raise UserError(f"--input-shape {text!r}: expected N,C,H,W or C,H,W positive integers")
    return dims[-3:]


@main.command("convert")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write.")
@click.option("--arch", help="Architecture (resnet20, resnet18, vgg_small, bireal18); inferred if left out.")
@click.option("--input-shape", help="N,C,H,W or C,H,W of one input; default from the checkpoint or architecture.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write the report as JSON.")
@click.option("--probe-batch", default=8, show_default=True, help="Random inputs the conversion is proved on.")
@click.option("--trust-pickle", is_flag=True, help="Allow a checkpoint that runs code when loaded (a pickled module).")
def convert_command(model, output, arch, input_shape, report_path, probe_batch, trust_pickle):
    """Fold ASD+BN into thresholds and WSD into packed bits; export ONNX proved against PyTorch."""
    from sdbnn_deploy.convert import convert
    from sdbnn_deploy.report import console, print_conversion, write_json

    with console.status("converting") as status:
        result = convert(model, output=None, arch=arch, input_shape=_shape_option(input_shape),
                         trust_pickle=trust_pickle, probe_batch=probe_batch,
                         progress=lambda step: status.update(f"converting: {step}"))
    print_conversion(result.report)
    if not result.report["check"]["passed"]:
        raise UserError(f"conversion check failed: {result.report['check']['failure']}; {output} not written")
    from sdbnn_deploy.convert import write_atomically

    write_atomically(output, result.onnx_model.SerializeToString())
    result.report["output"] = output
    if report_path:
        write_json(report_path, result.report)
    console.print(f"wrote {output}" + (f" and {report_path}" if report_path else ""))


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


@main.command("compile")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", "-t", default="x86", show_default=True, help="Target name (see `sdbnn-deploy targets`).")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Artifact folder to write.")
@click.option("--threads", type=int, help="Worker threads the artifact uses; default: the target's.")
@click.option("--batch", default=1, show_default=True, help="Batch size the artifact is compiled for.")
@click.option("--tune", is_flag=True, help="First measure the binary convs' schedule parameters and store the "
              "winners in the target's description: on this host (x86 targets this CPU runs) or, with --rpc or "
              "--tracker/--key, on the board.")
@click.option("--rpc", "rpc_address", metavar="HOST:PORT",
              help="With --tune: a board's `python -m tvm.exec.rpc_server`.")
@click.option("--tracker", metavar="HOST:PORT", help="With --tune: a TVM RPC tracker that hands out boards by --key.")
@click.option("--key", help="The board's key at the tracker; default: the target's rpc_key.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the board or tracker.")
def compile_command(model, target, output, threads, batch, tune, rpc_address, tracker, key, timeout):
    """Compile an ONNX from `convert` with TVM into an artifact folder (library + manifest.json)."""
    from sdbnn_deploy.compile import compile_model
    from sdbnn_deploy.report import console

    board = {"rpc_address": rpc_address, "tracker": tracker, "key": key, "timeout": timeout} \
        if rpc_address or tracker or key else None
    with console.status("compiling") as status:
        artifact = compile_model(model, target, output, threads=threads, batch=batch, tune=tune, board=board,
                                 progress=status.update)
    m = artifact.manifest
    if artifact.tuning:
        artifact.tuning.print()
    click.echo(f"compiled {model} for {m['target']['name']} ({m['arch']}, {m['threads']} threads) -> "
               f"{artifact.library} + {artifact.path / 'manifest.json'}")


def _input_option(values):
    """['x.npy'] or ['name=x.npy', ...] -> an array or {name: array}."""
    import numpy as np

    def load(path):
        try:
            return np.load(path)
        except (OSError, ValueError) as e:
            raise UserError(f"--input {path}: cannot read a .npy file ({e})") from None

    if len(values) == 1 and "=" not in values[0]:
        return load(values[0])
    pairs = [v.split("=", 1) for v in values]
    if any(len(p) != 2 for p in pairs):
        raise UserError("--input: give FILE.npy for a one-input model, else NAME=FILE.npy for each input")
    return {name: load(path) for name, path in pairs}


@main.command("run")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--input", "-i", "inputs", multiple=True, required=True, help="FILE.npy, or NAME=FILE.npy per input.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the outputs: .npy holds the first output, .npz all of them by name.")
@click.option("--threads", type=int, help="Worker threads; default: the artifact's.")
def run_command(artifact, inputs, output, threads):
    """Run a compiled artifact on .npy inputs (an aarch64 artifact runs under qemu on x86)."""
    import numpy as np

    from sdbnn_deploy.run import run_artifact

    outputs = run_artifact(artifact, _input_option(inputs), threads=threads)
    for name, value in outputs.items():
        click.echo(f"{name}: {value.dtype}{list(value.shape)}")
    if output and output.endswith(".npz"):
        np.savez(output, **outputs)
    elif output:
        np.save(output, next(iter(outputs.values())))
    if output:
        click.echo(f"wrote {output}")


@main.command("verify")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("deployed", type=click.Path())
@click.option("--data", default="digits", show_default=True, help="digits, FILE.npz (x, optional y) or an image FOLDER.")
@click.option("--limit", type=int, help="Use only the first N inputs.")
@click.option("--batch-size", default=64, show_default=True, help="Batch size for PyTorch and onnxruntime.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the report as JSON.")
@click.option("--min-agreement", type=float, help="Lowest top-1 agreement with PyTorch that passes [default: 0.99].")
@click.option("--max-logit-diff", type=float, help="Largest |logit difference| that passes [default: 1% of the logit scale].")
@click.option("--arch", help="Architecture of the checkpoint; inferred if left out.")
@click.option("--trust-pickle", is_flag=True, help="Allow a checkpoint that runs code when loaded (a pickled module).")
def verify_command(model, deployed, data, limit, batch_size, json_path, min_agreement, max_logit_diff, arch,
                   trust_pickle):
    """Check an ONNX or artifact against the PyTorch model on data; exit 1 when a tolerance is exceeded."""
    from sdbnn_deploy.report import console, write_json
    from sdbnn_deploy.verify import DEFAULT_MIN_AGREEMENT, EXIT_FAILED, print_report, verify

    report = verify(model, deployed, data=data, limit=limit, batch_size=batch_size, arch=arch,
                    min_agreement=DEFAULT_MIN_AGREEMENT if min_agreement is None else min_agreement,
                    max_logit_diff=max_logit_diff, trust_pickle=trust_pickle)
    print_report(report)
    if json_path:
        write_json(json_path, report)
        console.print(f"wrote {json_path}")
    if not report["passed"]:
        sys.exit(EXIT_FAILED)


def _int_list(text):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--threads {text!r}: expected comma-separated integers, e.g. 1,2") from None


@main.command("bench")
@click.option("--models", help="Comma-separated models (default: vgg_small, resnet18, resnet20 in both ASD forms "
              "and bireal18-static); e.g. vgg_small-static,resnet18-dynamic.")
@click.option("--threads", default=None, help="Comma-separated thread counts; default 1 and all cores.")
@click.option("--repeat", default=50, show_default=True, help="Latency samples per model, backend and thread count.")
@click.option("--target", default="x86", show_default=True, help="x86 target our models are compiled for.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep the ONNX files and artifacts here.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the report as JSON.")
@click.option("--lce", is_flag=True, help="Also time Larq Compute Engine 0.16 (installed on first use into "
              ".venv-lce, about 1.4 GB) on Larq equivalents of VGG-Small, ResNet-20 and ResNet-18.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False),
              help="Also write the report's tables as Markdown (the README's Performance section).")
@click.option("--arm-target", default="rpi4", show_default=True, help="Also compile each model for this aarch64 "
              "target and count its binary convs' hot-loop instructions per 128 bit-MACs; 'none' skips it.")
def bench_command(models, threads, repeat, target, workdir, json_path, markdown_path, lce, arm_target):
    """Batch-1 latency against the float twins (PyTorch, onnxruntime), per-layer efficiency, issue-6 targets."""
    from sdbnn_deploy.bench import BenchOptions, print_report, run_bench
    from sdbnn_deploy.report import console, write_json

    options = BenchOptions(repeat=repeat, target=target, workdir=workdir, lce=lce,
                           arm_target=None if arm_target == "none" else arm_target)
    if models:
        options.models = [m.strip() for m in models.split(",") if m.strip()]
    if threads:
        options.threads = _int_list(threads)
    with console.status("benchmarking") as status:
        report = run_bench(options, progress=lambda step: status.update(f"benchmarking: {step}"))
    print_report(report)
    if json_path:
        write_json(json_path, report)
        console.print(f"wrote {json_path}")
    if markdown_path:
        from sdbnn_deploy.bench_markdown import render
        from sdbnn_deploy.convert import write_atomically

        write_atomically(markdown_path, render(report).encode())
        console.print(f"wrote {markdown_path}")


@main.command("profile")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--rpc", "rpc_address", metavar="HOST:PORT", help="A board's `python -m tvm.exec.rpc_server`.")
@click.option("--tracker", metavar="HOST:PORT", help="A TVM RPC tracker that hands out boards by --key.")
@click.option("--key", help="The key the board registered with the tracker (e.g. rpi4).")
@click.option("--threads", type=int, help="Worker threads; default: the artifact's.")
@click.option("--repeat", default=50, show_default=True, help="Timed runs (after the warm-up).")
@click.option("--warmup", default=5, show_default=True, help="Untimed runs first.")
@click.option("--model", type=click.Path(dir_okay=False),
              help="The checkpoint, for the float twin's weights; default: random weights (same timing).")
@click.option("--no-baselines", is_flag=True, help="Skip the PyTorch / onnxruntime fp32 float twin.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the board or tracker.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the report as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Draw the per-layer latency chart (PNG).")
def profile_command(artifact, rpc_address, tracker, key, threads, repeat, warmup, model, no_baselines, timeout,
                    json_path, plot):
    """Latency of an artifact (end to end and per layer) here or on a board over TVM RPC."""
    from sdbnn_deploy.profile import plot_layers, print_profile, profile_artifact
    from sdbnn_deploy.report import console, write_json

    with console.status("profiling") as status:
        report = profile_artifact(artifact, rpc=rpc_address, tracker=tracker, key=key, threads=threads,
                                  repeat=repeat, warmup=warmup, model=model, baselines=not no_baselines,
                                  timeout=timeout, progress=lambda step: status.update(f"profiling: {step}"))
    print_profile(report)
    for path, write in ((json_path, lambda p: write_json(p, report)), (plot, lambda p: plot_layers(report, p))):
        if path:
            write(path)
            console.print(f"wrote {path}")


@main.group("board")
def board_group():
    """An emulated Raspberry Pi: the real aarch64 TVM RPC server under qemu-user."""


@board_group.command("emulate")
@click.option("--port", type=int, help="Port on 127.0.0.1; default: a free one.")
@click.option("--tracker", metavar="HOST:PORT", help="Register with this TVM RPC tracker.")
@click.option("--key", default="rpi4", show_default=True, help="The key to register under (with --tracker).")
@click.option("--rootfs", type=click.Path(file_okay=False),
              help="Root filesystem folder; default: built once in ~/.cache/sdbnn-deploy/board.")
@click.option("--build-only", is_flag=True, help="Build the root filesystem, start nothing.")
def board_emulate_command(port, tracker, key, rootfs, build_only):
    """Build (once) and start an emulated Raspberry Pi 4 serving TVM RPC until Ctrl-C."""
    from sdbnn_deploy.board import emulate

    emulate(port=port, tracker=tracker, key=key, rootfs=rootfs, build_only=build_only, progress=click.echo)
