"""The Larq Compute Engine side of the benchmark. Runs ONLY inside the LCE environment (.venv-lce:
tensorflow-cpu 2.15.1, larq 0.14.0, larq-compute-engine 0.16.0, numpy < 2), never in ours; of
sdbnn_deploy it imports only bench_timing (the timing rule, which needs nothing but numpy), and it is
started as a script:

    .venv-lce/bin/python sdbnn_deploy/lce_worker.py convert SPEC.json   # Larq models -> LCE flatbuffers
    .venv-lce/bin/python sdbnn_deploy/lce_worker.py time SPEC.json      # one flatbuffer, one path, N threads

Each prints one JSON object on its last stdout line (sdbnn_deploy.bench_lce reads it).

The Larq models are the equivalents of ours with random weights, for TIMING ONLY:
  - every binary conv is a QuantConv2D with ste_sign input and kernel quantizers and pad_values=1.0
    (one-padding: LCE's fast path; our SD-BNN pads with zeros, so the outputs differ at the borders);
  - BatchNorm where ours has one; hardtanh (a clip to [-1, 1]) only where its output is used as a real
    value (residual paths, the head): before a sign it changes nothing, and LCE folds BN into the
    binary conv's output thresholds there, as our compiler does;
  - no ASD: a static ASD shift is a per-channel threshold, which LCE folds like a BN bias; the
    dynamic ASD's squeeze-excitation block has no Larq equivalent, so the same model stands for both.
Paths of LCE's x86 interpreter: "default" (LCE's portable binary conv), "indirect_bgemm"
(use_indirect_bgemm=True, its fastest x86 binary conv) and "indirect_bgemm_xnnpack" (plus TFLite's
XNNPack delegate for the float ops).
"""
import json
import sys
from pathlib import Path

import numpy as np

if __name__ == "__main__":  # a script in the LCE environment: the package is not installed there
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sdbnn_deploy.bench_timing import samples  # noqa: E402  (the same timing rule for every backend)

PATHS = {
    "default": {},
    "indirect_bgemm": {"use_indirect_bgemm": True},
    "indirect_bgemm_xnnpack": {"use_indirect_bgemm": True, "use_xnnpack": True},
}


# ---- the Larq models -------------------------------------------------------------------------------------

def _layers():
    import larq as lq
    import tensorflow as tf

    return lq, tf, tf.keras.layers


def binary_conv(x, filters, strides=1):
    """A 3x3 binary conv (sign of inputs and weights), one-padded: LCE's fast path."""
    lq = _layers()[0]
    return lq.layers.QuantConv2D(filters, 3, strides=strides, padding="same", pad_values=1.0,
                                 input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                                 kernel_constraint="weight_clip", use_bias=False)(x)


def batch_norm(x):
    return _layers()[2].BatchNormalization(momentum=0.9, epsilon=1e-5)(x)


def hardtanh(x):
    _, tf, layers = _layers()
    return layers.Lambda(lambda t: tf.clip_by_value(t, -1.0, 1.0))(x)


def float_stem(x, filters):
    """The full-precision first conv + BN of every model (its hardtanh is added where it matters)."""
    layers = _layers()[2]
    return batch_norm(layers.Conv2D(filters, 3, padding="same", use_bias=False)(x))


def vgg_small(x, num_classes):
    """conv0 (float) -> five binary convs 128,256,256,512,512 (pool after 1, 3, 5; pool before BN) -> fc."""
    layers = _layers()[2]
    x = float_stem(x, 128)
    for filters, pool in ((128, True), (256, False), (256, True), (512, False), (512, True)):
        x = binary_conv(x, filters)
        if pool:
            x = layers.MaxPool2D(2, 2)(x)
        x = batch_norm(x)
    x = layers.Flatten()(hardtanh(x))
    return layers.Dense(num_classes)(x)


def shortcut_a(x, planes):
    """ResNet option A: every second pixel, channels zero-padded on both sides (StridedSlice + Pad)."""
    _, tf, layers = _layers()
    p = planes // 4
    return layers.Lambda(lambda t: tf.pad(t[:, ::2, ::2, :], [[0, 0], [0, 0], [0, 0], [p, p]]))(x)


def resnet20(x, num_classes):
    """conv1 (float) 16 -> 3 stages x 3 blocks (16, 32, 64); each binary conv has its own residual:
    out = hardtanh(bn(conv(x)) + shortcut(x)); then global average pool -> BN -> dense."""
    layers = _layers()[2]
    x = hardtanh(float_stem(x, 16))
    in_planes = 16
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
        for s in (stride, 1, 1):
            short = shortcut_a(x, planes) if (s != 1 or in_planes != planes) else x
            x = hardtanh(layers.Add()([batch_norm(binary_conv(x, planes, s)), short]))
            x = hardtanh(layers.Add()([batch_norm(binary_conv(x, planes)), x]))
            in_planes = planes
    x = batch_norm(layers.GlobalAveragePooling2D()(x))
    return layers.Dense(num_classes)(x)


def resnet18(x, num_classes):
    """conv1 (float) 64 -> 4 stages x 2 blocks (64, 128, 256, 512):
    out = hardtanh(bn2(conv2(bn1(conv1(x)))) + shortcut(x)), shortcut a float 1x1 conv + BN where the
    shape changes; then global average pool -> BN -> dense."""
    layers = _layers()[2]
    x = hardtanh(float_stem(x, 64))
    in_planes = 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for s in (stride, 1):
            short = x
            if s != 1 or in_planes != planes:
                short = batch_norm(layers.Conv2D(planes, 1, strides=s, use_bias=False)(x))
            out = batch_norm(binary_conv(x, planes, s))  # its hardtanh only feeds a sign
            out = batch_norm(binary_conv(out, planes))
            x = hardtanh(layers.Add()([out, short]))
            in_planes = planes
    x = batch_norm(layers.GlobalAveragePooling2D()(x))
    return layers.Dense(num_classes)(x)


ARCHITECTURES = {"vgg_small": vgg_small, "resnet20": resnet20, "resnet18": resnet18}


def randomise_batch_norms(model, seed=0):
    """Random BN statistics and affine parameters, as the benchmark does for our models."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.normal(1.0, 0.3, gamma.shape), rng.normal(0, 0.3, beta.shape),
                               rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2.0, var.shape)])


def build(arch, input_hwc, num_classes=10, seed=0):
    """The Keras (Larq) equivalent of our `arch`, random weights, batch 1."""
    import tensorflow as tf

    tf.random.set_seed(seed)
    inputs = tf.keras.Input(shape=tuple(input_hwc), batch_size=1)
    model = tf.keras.Model(inputs, ARCHITECTURES[arch](inputs, num_classes), name=arch)
    randomise_batch_norms(model, seed)
    return model


def convert(spec):
    """spec: {"models": {name: {"arch", "input_hwc", "output"}}} -> writes each flatbuffer; returns
    {"versions": ..., "models": {name: {"output", "bytes", "binary_convs", "ops"}}}."""
    import larq
    import larq_compute_engine as lce
    import tensorflow as tf

    out = {"versions": {"larq_compute_engine": lce.__version__, "larq": larq.__version__,
                        "tensorflow": tf.__version__}, "models": {}}
    for name, m in spec["models"].items():
        model = build(m["arch"], m["input_hwc"])
        flatbuffer = lce.convert_keras_model(model)
        with open(m["output"], "wb") as f:
            f.write(flatbuffer)
        ops = op_counts(flatbuffer)
        out["models"][name] = {"output": m["output"], "bytes": len(flatbuffer), "ops": ops,
                               "binary_convs": ops.get("LceBconv2d", 0)}
    return out


def op_counts(flatbuffer):
    """How many times each operator occurs in the converted model (e.g. {"LceBconv2d": 5, ...})."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    names = []
    for code in model.operatorCodes:
        if code.customCode:
            names.append(code.customCode.decode())
        else:
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            names.append(next(k for k, v in vars(schema.BuiltinOperator).items() if v == builtin))
    counts = {}
    for graph in model.subgraphs:
        for op in graph.operators:
            counts[names[op.opcodeIndex]] = counts.get(names[op.opcodeIndex], 0) + 1
    return counts


# ---- timing ----------------------------------------------------------------------------------------------

def time_model(spec):
    """spec: {"flatbuffer", "path" (a key of PATHS), "threads", "repeat", "max_seconds"} -> {"samples"}."""
    import larq_compute_engine as lce

    with open(spec["flatbuffer"], "rb") as f:
        interpreter = lce.testing.Interpreter(f.read(), num_threads=spec["threads"], **PATHS[spec["path"]])
    shape = interpreter.input_shapes[0]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    raw = interpreter.interpreter  # the C++ wrapper: one predict call per sample, no Python batching
    return {"samples": samples(lambda: raw.predict([x]), spec["repeat"], spec["max_seconds"])}


COMMANDS = {"convert": convert, "time": time_model}


def main(argv) -> int:
    if len(argv) != 3 or argv[1] not in COMMANDS:
        print(f"usage: lce_worker.py {'|'.join(COMMANDS)} SPEC.json", file=sys.stderr)
        return 2
    with open(argv[2]) as f:
        spec = json.load(f)
    print(json.dumps(COMMANDS[argv[1]](spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
