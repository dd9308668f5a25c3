"""The one checkpoint loader: every accepted layout round-trips, inference, --arch, and every error."""
import zipfile

import pytest
import torch

from conftest import TEST_INPUT

from sdbnn_deploy.checkpoint import FORMAT, LoadedModel, load_checkpoint, save_checkpoint
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.models import ARCHITECTURES, IRConv2d, build



def trained_like(arch, asd, num_classes=None, in_channels=3, seed=0):
    """A model whose alpha/beta/SE weights and BN statistics are not at their initial values."""
    torch.manual_seed(seed)
    model = build(arch, asd, num_classes=num_classes, in_channels=in_channels)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha", "beta")) or ".dybeta." in name:
                p.normal_()
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2)
    return model.eval()


def same_outputs(model_a, model_b, arch, in_channels=3):
    x = torch.randn((2, in_channels) + TEST_INPUT[arch][1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(model_a(x), model_b(x))


def released(model):
    """What the released training scripts save: a DataParallel state dict inside a training dict."""
    return {"epoch": 12, "state_dict": {"module." + k: v for k, v in model.state_dict().items()},
            "best_prec1": torch.tensor(91.5)}


def imagenet_layout(state):
    """Our bireal18 keys -> the released ImageNet code's: flat `weights`, SE block named `beta`."""
    out = {}
    for key, value in state.items():
        if key.endswith("binary_conv.weight"):
            key, value = key[:-len("weight")] + "weights", value.reshape(-1, 1)
        out["module." + key.replace(".dybeta.fc.", ".beta.fc.")] = value
    return out


@pytest.mark.parametrize("asd", ["static", "dynamic"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_released_training_checkpoint_round_trip(tmp_path, arch, asd):
    model = trained_like(arch, asd)
    path = tmp_path / "model_best.pth.tar"
    torch.save(released(model), path)
    # a 32/1 checkpoint has the keys of the 1/1 model: only --arch tells them apart
    loaded = load_checkpoint(path, arch="bireal18_32w1a" if arch == "bireal18_32w1a" else None)
    assert isinstance(loaded, LoadedModel)
    assert (loaded.arch, loaded.asd) == (arch, asd)
    assert loaded.num_classes == (1000 if arch.startswith("bireal18") else 10) and loaded.in_channels == 3
    assert loaded.source_format == "training-checkpoint"
    assert loaded.meta == {"epoch": 12, "best_prec1": pytest.approx(91.5)}
    assert not loaded.model.training
    assert same_outputs(loaded.model, model, arch)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_bare_state_dict(tmp_path, prefix):
    model = trained_like("vgg_small", "dynamic", num_classes=7)
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, tmp_path / "sd.pt")
    loaded = load_checkpoint(tmp_path / "sd.pt")
    assert (loaded.arch, loaded.asd, loaded.num_classes, loaded.source_format) == ("vgg_small", "dynamic", 7, "state-dict")
    assert loaded.input_shape == (3, 32, 32)
    assert same_outputs(loaded.model, model, "vgg_small")


def test_old_checkpoint_without_num_batches_tracked(tmp_path):
    model = trained_like("resnet20", "static")
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pt")
    assert same_outputs(load_checkpoint(tmp_path / "old.pt").model, model, "resnet20")


@pytest.mark.parametrize("asd", ["static", "dynamic"])
def test_our_format_round_trip(tmp_path, asd):
    model = trained_like("resnet20", asd, num_classes=10, in_channels=1)
    path = tmp_path / "digits.pt"
    save_checkpoint(path, model, "resnet20", asd, (1, 16, 16), meta={"test_accuracy": 0.95, "seed": 0})
    assert [p.name for p in tmp_path.iterdir()] == ["digits.pt"]  # no temporary file left behind
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == FORMAT and raw["input_shape"] == [1, 16, 16]
    loaded = load_checkpoint(path)
    assert (loaded.arch, loaded.asd, loaded.in_channels, loaded.num_classes) == ("resnet20", asd, 1, 10)
    assert loaded.input_shape == (1, 16, 16) and loaded.source_format == FORMAT
    assert loaded.meta == {"test_accuracy": 0.95, "seed": 0}
    assert same_outputs(loaded.model, model, "resnet20", in_channels=1)


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"old contents")
    model = trained_like("resnet20", "static")
    save_checkpoint(path, model, "resnet20", "static", (3, 32, 32))
    assert load_checkpoint(path).arch == "resnet20"
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "bad.pt", model, "resnet20", "static", (3, 32, 32), meta={"x": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


@pytest.mark.parametrize("asd", ["static", "dynamic"])
def test_imagenet_layout(tmp_path, asd):
    model = trained_like("bireal18", asd)
    state = imagenet_layout(model.state_dict())
    assert state["module.layer1.0.binary_conv.weights"].shape == (64 * 64 * 9, 1)
    if asd == "dynamic":
        assert "module.layer1.0.binary_conv.beta.fc.0.weight" in state
    else:
        assert state["module.layer1.0.binary_conv.beta"].shape == (64,)
    torch.save({"epoch": 256, "state_dict": state, "best_top1_acc": 66.1}, tmp_path / "imagenet.pth.tar")
    loaded = load_checkpoint(tmp_path / "imagenet.pth.tar")
    assert (loaded.arch, loaded.asd, loaded.num_classes) == ("bireal18", asd, 1000)
    assert loaded.source_format == "training-checkpoint/imagenet-layout"
    assert loaded.input_shape == (3, 224, 224)
    assert same_outputs(loaded.model, model, "bireal18")


def test_se_reduction_is_read_from_the_shapes(tmp_path):
    model = build("resnet20", "dynamic", reduction=4)
    torch.save(model.state_dict(), tmp_path / "r4.pt")
    loaded = load_checkpoint(tmp_path / "r4.pt")
    assert loaded.model.layer3[1].conv1.dybeta.fc[0].out_features == 16
    assert same_outputs(loaded.model, model.eval(), "resnet20")


def test_pickled_module_needs_trust(tmp_path):
    model = trained_like("resnet20", "dynamic")
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(UserError, match=r"whole\.pt.*--trust-pickle"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, trust_pickle=True)
    assert loaded.source_format == "pickled-module" and loaded.asd == "dynamic"
    assert same_outputs(loaded.model, model, "resnet20")


def test_arch_override(tmp_path):
    model = trained_like("resnet20", "static")
    torch.save(model.state_dict(), tmp_path / "r20.pt")
    assert load_checkpoint(tmp_path / "r20.pt", arch="resnet20").arch == "resnet20"
    with pytest.raises(UserError, match=r"r20\.pt: keys do not match resnet18 \(asd=static\): \d+ missing keys, first "
                       r"'layer2\.0\.shortcut\.0\.weight'; \d+ unexpected keys, first 'layer1\.2\.conv1\.weight'"):
        load_checkpoint(tmp_path / "r20.pt", arch="resnet18")
    with pytest.raises(UserError, match="--arch 'alexnet'"):
        load_checkpoint(tmp_path / "r20.pt", arch="alexnet")


# --- errors -------------------------------------------------------------------------------------

def one_line_error(path, **kwargs):
    with pytest.raises(UserError) as info:
        load_checkpoint(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_error_random_bytes(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(range(256)) * 8)
    assert "not a PyTorch checkpoint" in one_line_error(path)


def test_error_empty_and_missing(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty file" in one_line_error(tmp_path / "empty.pt")
    assert "no such checkpoint file" in one_line_error(tmp_path / "missing.pt")


def test_error_truncated_file(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(trained_like("resnet20", "static").state_dict(), good)
    data = good.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    assert zipfile.is_zipfile(good) and not zipfile.is_zipfile(path)
    assert "truncated" in one_line_error(path)


def test_error_no_architecture(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3), "classifier.weight": torch.zeros(10, 8)}, path)
    message = one_line_error(path)
    assert "no recognisable SD-BNN architecture" in message and "--arch" in message


def test_error_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], path)
    assert "not a checkpoint" in one_line_error(path)


def test_error_renamed_key(tmp_path):
    state = trained_like("resnet20", "dynamic").state_dict()
    state["layer2.1.bn1.gamma"] = state.pop("layer2.1.bn1.weight")
    path = tmp_path / "renamed.pt"
    torch.save(state, path)
    message = one_line_error(path)
    assert "1 missing keys, first 'layer2.1.bn1.weight'" in message
    assert "1 unexpected keys, first 'layer2.1.bn1.gamma'" in message


def test_error_wrong_shape(tmp_path):
    state = trained_like("resnet20", "static").state_dict()
    state["layer1.0.conv2.weight"] = torch.zeros(16, 16, 5, 5)
    torch.save(state, tmp_path / "shape.pt")
    assert "layer1.0.conv2.weight has shape (16, 16, 5, 5)" in one_line_error(tmp_path / "shape.pt")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_error_non_finite_parameter(tmp_path, bad):
    model = trained_like("resnet20", "static")
    state = released(model)
    state["state_dict"]["module.layer3.1.conv1.alpha"][5] = bad
    path = tmp_path / "nan.pth.tar"
    torch.save(state, path)
    assert "tensor layer3.1.conv1.alpha holds NaN or infinite values" in one_line_error(path)


def test_loaded_model_uses_our_binary_conv(tmp_path):
    torch.save(trained_like("resnet20", "static").state_dict(), tmp_path / "m.pt")
    model = load_checkpoint(tmp_path / "m.pt").model
    assert sum(isinstance(m, IRConv2d) for m in model.modules()) == 18
