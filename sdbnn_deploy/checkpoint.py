"""The one checkpoint loader every command uses, and the writer of our own format.

`load_checkpoint(path)` accepts:
- what the released SD-BNN training scripts save: {'epoch', 'state_dict', 'best_prec1'} of a
  DataParallel model (keys start with `module.`);
- a bare state dict, with or without the `module.` prefix;
- our own format {"format": "sdbnn-deploy/1", "arch", "asd", "num_classes", "in_channels",
  "input_shape", "state_dict", "meta"} (written by `save_checkpoint`);
- the released ImageNet layout (HardBinaryConv): flat `weights` (Cout*Cin*k*k, 1) and the SE block
  named `beta` (keys `...beta.fc.0.weight`); a static-ASD ImageNet checkpoint has a plain `beta` vector.

It infers the architecture, the ASD form, num_classes and in_channels from the keys and shapes
(`arch=` overrides the architecture). Files are read with `torch.load(weights_only=True)`; a
pickled nn.Module, or anything else that needs code to load, needs `trust_pickle=True`.
Every problem a user can cause is a one-line UserError naming the file.
"""
import json
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from sdbnn_deploy.errors import UserError
from sdbnn_deploy.models import ARCHITECTURES, DEFAULT_INPUT_SHAPE, asd_form, build

FORMAT = "sdbnn-deploy/1"

# source_format values: how the file was laid out
OURS, TRAINING, STATE_DICT, PICKLED = FORMAT, "training-checkpoint", "state-dict", "pickled-module"
IMAGENET_SUFFIX = "/imagenet-layout"

# first full-precision conv and last linear layer of each architecture
STEM_KEY = {"resnet20": "conv1.weight", "resnet18": "conv1.weight", "vgg_small": "conv0.weight",
            "bireal18": "conv1.weight", "bireal18_32w1a": "conv1.weight"}
HEAD_KEY = {"resnet20": "linear.weight", "resnet18": "linear.weight", "vgg_small": "fc.weight",
            "bireal18": "fc.weight", "bireal18_32w1a": "fc.weight"}


@dataclass
class LoadedModel:
    """A loaded SD-BNN model (in eval mode) and what we know about it."""

    model: nn.Module
    arch: str
    asd: str
    num_classes: int
    in_channels: int
    input_shape: tuple
    source_format: str
    meta: dict = field(default_factory=dict)


def load_checkpoint(path, arch=None, trust_pickle=False) -> LoadedModel:
    """Load any accepted checkpoint layout into our model zoo; see the module docstring."""
    path = Path(path)
    if arch is not None and arch not in ARCHITECTURES:
        raise UserError(f"--arch {arch!r} is not one of {', '.join(ARCHITECTURES)}")
    obj = _read(path, trust_pickle)
    if isinstance(obj, nn.Module):
        return _whole_module(obj, path, arch)
    state, source_format, info = _unwrap(obj, path)
    state = {_strip_prefix(k): v for k, v in state.items()}
    state, flat_keys = _from_imagenet_layout(state)
    if flat_keys:
        source_format += IMAGENET_SUFFIX
    _check_tensors(state, path)

    arch = arch or info.get("arch") or infer_arch(state, path)
    asd = info.get("asd") or infer_asd(state, path)
    num_classes = _dim(state, HEAD_KEY[arch], 0) or info.get("num_classes")
    in_channels = _dim(state, STEM_KEY[arch], 1) or info.get("in_channels") or 3
    model = build(arch, asd, num_classes, in_channels, reduction=infer_reduction(state))
    state = _reshape_flat(state, flat_keys, model)
    _check_keys(model, state, path, arch, asd)
    _check_finite(state, path)
    model.load_state_dict(state, strict=False)  # _check_keys allowed only missing num_batches_tracked
    model.eval()

    input_shape = tuple(info.get("input_shape") or (in_channels,) + DEFAULT_INPUT_SHAPE[arch][1:])
    num_classes = model.state_dict()[HEAD_KEY[arch]].shape[0]
    return LoadedModel(model, arch, asd, num_classes, in_channels, input_shape, source_format,
                       dict(info.get("meta") or {}))


def save_checkpoint(path, model, arch, asd, input_shape, meta=None):
    """Write `model` in our format, atomically (a temporary file in the same folder, then os.replace).

    `meta` must be JSON-serialisable (so the file loads with weights_only=True).
    """
    meta = dict(meta or {})
    json.dumps(meta)  # raises TypeError for values that would need pickled code to load
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "arch": arch,
        "asd": asd,
        "num_classes": int(state[HEAD_KEY[arch]].shape[0]),
        "in_channels": int(state[STEM_KEY[arch]].shape[1]),
        "input_shape": [int(d) for d in input_shape],
        "state_dict": state,
        "meta": meta,
    }
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# --- reading the file ---------------------------------------------------------------------------

def _read(path, trust_pickle):
    """torch.load the file (weights_only unless trusted), turning every failure into a UserError."""
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise UserError(f"{path}: empty file, not a checkpoint")
    is_zip = head.startswith(b"PK\x03\x04")
    is_legacy_pickle = head[0] == 0x80
    if not (is_zip or is_legacy_pickle):
        raise UserError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)")
    if is_zip and not zipfile.is_zipfile(path):
        raise UserError(f"{path}: truncated or corrupt torch file (the zip archive has no central directory)")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if not trust_pickle and "Unsupported global" in str(e):
            raise UserError(f"{path}: holds pickled Python objects (e.g. a whole nn.Module) that run code "
                            "when loaded; if you trust this file, pass --trust-pickle") from None
        raise UserError(f"{path}: not a readable torch checkpoint ({_first_line(e)})") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: truncated or corrupt torch file ({_first_line(e)})") from None
    except (AttributeError, ModuleNotFoundError, ImportError) as e:
        raise UserError(f"{path}: the pickled objects need code that is not installed ({_first_line(e)})") from None


def _first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _whole_module(model, path, arch):
    """A whole pickled module (loaded only with trust_pickle) is converted as it is, layer by layer."""
    state = model.state_dict()
    _check_finite(state, path)
    if arch is None:
        try:
            arch = infer_arch(state, path)
        except UserError:
            arch = None  # a model of the user's own: its layers are checked when it is traced
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    in_channels = convs[0].in_channels if convs else 3
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    num_classes = heads[-1].out_features if heads else 0
    input_shape = (in_channels,) + DEFAULT_INPUT_SHAPE[arch][1:] if arch else None
    return LoadedModel(model.eval(), arch, asd_form(model), num_classes, in_channels,
                       input_shape, PICKLED, {})


def _unwrap(obj, path):
    """(state dict, source_format, info) of a loaded object; info holds what our format records."""
    if isinstance(obj, nn.Module):
        return obj.state_dict(), PICKLED, {}
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not a checkpoint (holds a {type(obj).__name__}, not a dict or state dict)")
    if "format" in obj:
        if obj["format"] != FORMAT:
            raise UserError(f"{path}: unsupported checkpoint format {obj['format']!r} (expected {FORMAT!r})")
        info = {k: obj.get(k) for k in ("arch", "asd", "num_classes", "in_channels", "input_shape", "meta")}
        return _as_state_dict(obj.get("state_dict"), path), OURS, info
    if "state_dict" in obj:
        meta = {k: _plain(v) for k, v in obj.items() if k != "state_dict" and _plain(v) is not None}
        return _as_state_dict(obj["state_dict"], path), TRAINING, {"meta": meta}
    return _as_state_dict(obj, path), STATE_DICT, {}


def _as_state_dict(obj, path):
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, dict) or not obj:
        raise UserError(f"{path}: not a checkpoint (no state dict of tensors found)")
    return obj


def _plain(v):
    """A JSON-friendly scalar for the meta of a training checkpoint (epoch, best_prec1), else None."""
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, (int, float, str, bool)):
        return v
    return None


# --- normalising the keys ----------------------------------------------------------------------

def _strip_prefix(key):
    """Drop the `module.` prefix a DataParallel model adds."""
    return key[len("module."):] if key.startswith("module.") else key


def _from_imagenet_layout(state):
    """Rename the released ImageNet keys to ours: `X.weights` -> `X.weight` (still flat), `X.beta.fc.` ->
    `X.dybeta.fc.`. Returns the new state and the keys whose weights are still flat."""
    out, flat = {}, []
    for key, value in state.items():
        if key.endswith(".weights"):
            key = key[: -len("s")]
            flat.append(key)
        key = key.replace(".beta.fc.", ".dybeta.fc.")
        out[key] = value
    return out, flat


def _reshape_flat(state, flat_keys, model):
    """Give flat ImageNet `weights` the (Cout, Cin, k, k) shape of the model's conv weight."""
    target = model.state_dict()
    for key in flat_keys:
        if key in target and state[key].numel() == target[key].numel():
            state[key] = state[key].reshape(target[key].shape)
    return state


# --- inferring what the checkpoint holds --------------------------------------------------------

def infer_arch(state, path="checkpoint"):
    """The architecture whose key names the state dict carries."""
    keys = set(state)
    if any(".binary_conv." in k for k in keys):
        return "bireal18"
    if "conv0.weight" in keys:
        return "vgg_small"
    if any(k.startswith("layer4.") for k in keys):
        return "resnet18"
    if any(k.startswith("layer3.") for k in keys):
        return "resnet20"
    first = ", ".join(list(state)[:3])
    raise UserError(f"{path}: no recognisable SD-BNN architecture in its keys (first: {first}); "
                    f"pass --arch ({', '.join(ARCHITECTURES)})")


def infer_asd(state, path="checkpoint"):
    """'dynamic' if the binary convs carry an SE block (dybeta), 'static' if a plain beta vector."""
    if any(k.endswith(".dybeta.fc.0.weight") for k in state):
        return "dynamic"
    if any(k.endswith(".beta") for k in state):
        return "static"
    raise UserError(f"{path}: no ASD parameters (dybeta.fc.* or beta) in its keys; not an SD-BNN checkpoint?")


def infer_reduction(state):
    """The SE reduction Cin // hidden, read at the widest SE block (None if there is none)."""
    se = [v for k, v in state.items() if k.endswith(".dybeta.fc.0.weight") and v.dim() == 2]
    if not se:
        return None
    hidden, cin = max(se, key=lambda w: w.shape[1]).shape
    return max(1, cin // max(1, hidden))


def _dim(state, key, axis):
    t = state.get(key)
    return int(t.shape[axis]) if isinstance(t, torch.Tensor) and t.dim() > axis else None


# --- checks -------------------------------------------------------------------------------------

def _check_tensors(state, path):
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{path}: entry {key!r} of the state dict is a {type(value).__name__}, not a tensor")


def _check_keys(model, state, path, arch, asd):
    """Same key set (old checkpoints may lack BatchNorm's num_batches_tracked) and same shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys, first {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, first {unexpected[0]!r}")
        raise UserError(f"{path}: keys do not match {arch} (asd={asd}): {'; '.join(parts)}")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise UserError(f"{path}: {key} has shape {tuple(value.shape)}, {arch} (asd={asd}) "
                            f"expects {tuple(expected[key].shape)}")


def _check_finite(state, path):
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"{path}: tensor {key} holds NaN or infinite values")
