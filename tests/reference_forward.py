"""An independent numpy (float64) re-implementation of the SD-BNN eval forward passes.

Written straight from design/sdbnn-math.md and the released code's structure; it reads a state dict
of numpy arrays (keys as in our model zoo, no `module.` prefix) and never touches the torch modules.

    forward(state, "resnet20", "static", x)  -> logits (N, classes)
"""
import numpy as np

BN_EPS = 1e-5


# --- layers -------------------------------------------------------------------------------------

def conv2d(x, w, stride=1, pad=0):
    """Cross-correlation of x (N, C, H, W) with w (O, C, kh, kw), zero padding, like torch conv2d."""
    kh, kw = w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    y = np.tensordot(windows, w, axes=([1, 4, 5], [1, 2, 3]))  # (N, OH, OW, O)
    return y.transpose(0, 3, 1, 2)


def batchnorm(state, prefix, x):
    """Eval BatchNorm over axis 1 of a (N, C) or (N, C, H, W) array."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    g = state[prefix + ".weight"] / np.sqrt(state[prefix + ".running_var"] + BN_EPS)
    h = state[prefix + ".bias"] - g * state[prefix + ".running_mean"]
    return x * g.reshape(shape) + h.reshape(shape)


def hardtanh(x):
    return np.clip(x, -1.0, 1.0)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def max_pool(x, k, stride, pad=0):
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return windows.max(axis=(4, 5))


def avg_pool(x, k, stride):
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return windows.mean(axis=(4, 5))


def linear(state, prefix, x):
    return x @ state[prefix + ".weight"].T + state[prefix + ".bias"]


def binary_conv(state, prefix, asd, x, stride, pad, float_weights=False):
    """sdbnn-math.md section 1: WSD on the weights, ASD on the input, conv of the signs.

    float_weights: the released "32/1" ImageNet model (first training stage): sign(x + shift) against
    the plain float weights, no WSD."""
    w = state[prefix + ".weight"]
    mw = 0.01 * w.reshape(w.shape[0], -1).mean(axis=1)
    w = w + (sigmoid(state[prefix + ".alpha"]) * mw)[:, None, None, None]
    if asd == "static":
        shift = sigmoid(state[prefix + ".beta"])[None, :, None, None]
    else:
        s = x.mean(axis=(2, 3))
        s = np.maximum(s @ state[prefix + ".dybeta.fc.0.weight"].T, 0.0)
        shift = sigmoid(s @ state[prefix + ".dybeta.fc.2.weight"].T)[:, :, None, None]
    weights = state[prefix + ".weight"] if float_weights else np.sign(w)
    return conv2d(np.sign(x + shift), weights, stride, pad)


# --- architectures ------------------------------------------------------------------------------

def resnet20(state, asd, x):
    out = hardtanh(batchnorm(state, "bn1", conv2d(x, state["conv1.weight"], 1, 1)))
    for stage, planes in ((1, 16), (2, 32), (3, 64)):
        for block in range(3):
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            if stride == 2 or out.shape[1] != planes:  # option A: subsample, zero channels both sides
                q = planes // 4
                shortcut = np.pad(out[:, :, ::2, ::2], ((0, 0), (q, q), (0, 0), (0, 0)))
            else:
                shortcut = out
            y = batchnorm(state, p + ".bn1", binary_conv(state, p + ".conv1", asd, out, stride, 1))
            out = hardtanh(y + shortcut)
            y = batchnorm(state, p + ".bn2", binary_conv(state, p + ".conv2", asd, out, 1, 1))
            out = hardtanh(y + out)
    out = out.mean(axis=(2, 3))
    return linear(state, "linear", batchnorm(state, "bn2", out))


def resnet18(state, asd, x):
    out = hardtanh(batchnorm(state, "bn1", conv2d(x, state["conv1.weight"], 1, 1)))
    for stage in (1, 2, 3, 4):
        for block in (0, 1):
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            if p + ".shortcut.0.weight" in state:
                shortcut = batchnorm(state, p + ".shortcut.1",
                                     conv2d(out, state[p + ".shortcut.0.weight"], stride, 0))
            else:
                shortcut = out
            y = hardtanh(batchnorm(state, p + ".bn1", binary_conv(state, p + ".conv1", asd, out, stride, 1)))
            y = batchnorm(state, p + ".bn2", binary_conv(state, p + ".conv2", asd, y, 1, 1))
            out = hardtanh(y + shortcut)
    out = out.mean(axis=(2, 3))  # avg-pool 4 over the 4x4 map of a 32x32 input
    return linear(state, "linear", batchnorm(state, "bn2", out))


def vgg_small(state, asd, x):
    out = hardtanh(batchnorm(state, "bn0", conv2d(x, state["conv0.weight"], 1, 1)))
    for i, pool in ((1, True), (2, False), (3, True), (4, False), (5, True)):
        out = binary_conv(state, f"conv{i}", asd, out, 1, 1)
        if pool:  # the max-pool comes BEFORE the BatchNorm
            out = max_pool(out, 2, 2)
        out = hardtanh(batchnorm(state, f"bn{i}", out))
    return linear(state, "fc", out.reshape(out.shape[0], -1))


def bireal18(state, asd, x, float_weights=False):
    out = batchnorm(state, "bn1", conv2d(x, state["conv1.weight"], 2, 3))
    out = max_pool(out, 3, 2, 1)
    for stage in (1, 2, 3, 4):
        for block in range(4):
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            if p + ".downsample.1.weight" in state:
                residual = batchnorm(state, p + ".downsample.2",
                                     conv2d(avg_pool(out, 2, stride), state[p + ".downsample.1.weight"]))
            else:
                residual = out
            y = batchnorm(state, p + ".bn1", binary_conv(state, p + ".binary_conv", asd, out, stride, 1,
                                                         float_weights)) + residual
            slope = state[p + ".prelu.weight"][None, :, None, None]
            out = np.where(y >= 0, y, slope * y)
    return linear(state, "fc", out.mean(axis=(2, 3)))


def bireal18_32w1a(state, asd, x):
    return bireal18(state, asd, x, float_weights=True)


ARCHS = {"resnet20": resnet20, "resnet18": resnet18, "vgg_small": vgg_small, "bireal18": bireal18,
         "bireal18_32w1a": bireal18_32w1a}


def forward(state, arch, asd, x):
    """Logits of `arch` for input x (N, C, H, W); state maps key -> array (torch tensors are converted)."""
    state = {k: np.asarray(v, dtype=np.float64) for k, v in state.items()}
    return ARCHS[arch](state, asd, np.asarray(x, dtype=np.float64))
