"""The shipped demo models really learned the digits, and the demo data loads the same every time."""
import json

import numpy as np
import pytest
from PIL import Image

from sdbnn_deploy.checkpoint import load_checkpoint
from sdbnn_deploy.data import DIGITS_MEAN, DIGITS_STD, digits_split, load_dataset
from sdbnn_deploy.errors import UserError
from sdbnn_deploy.models.train_digits import CHECKPOINTS, RESULTS_NAME, count_correct

RESULTS = json.loads((CHECKPOINTS / RESULTS_NAME).read_text())


@pytest.mark.parametrize("asd", ["static", "dynamic"])
def test_shipped_checkpoint_reaches_its_recorded_accuracy(asd):
    name = f"digits_resnet20_{asd}.pt"
    loaded = load_checkpoint(CHECKPOINTS / name)
    assert (loaded.arch, loaded.asd, loaded.num_classes, loaded.in_channels) == ("resnet20", asd, 10, 1)
    assert tuple(loaded.input_shape) == (1, 16, 16)

    data = load_dataset("digits", loaded.input_shape)
    correct = count_correct(loaded.model, data.x, data.y)

    recorded = RESULTS[name]
    assert correct == recorded["test_correct"] == loaded.meta["test_correct"]
    assert len(data.y) == recorded["test_count"] == 359
    assert correct / len(data.y) == recorded["test_accuracy"] >= 0.90


def test_digits_split_is_fixed_stratified_and_disjoint():
    x_train, y_train, x_test, y_test = digits_split(16)
    assert x_train.shape == (1438, 1, 16, 16) and x_test.shape == (359, 1, 16, 16)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    # every class is split 80/20 (rounded)
    for label in range(10):
        n_test, n_all = (y_test == label).sum(), (y_train == label).sum() + (y_test == label).sum()
        assert n_test == round(0.2 * n_all)
    # no test image is also a training image (no digits image has an exact duplicate with the same label)
    train_rows = {(row.tobytes(), label) for row, label in zip(x_train, y_train)}
    assert not any((row.tobytes(), label) in train_rows for row, label in zip(x_test, y_test))
    # the same arrays on every call
    again = digits_split(16)
    assert all(np.array_equal(a, b) for a, b in zip((x_train, y_train, x_test, y_test), again))


def test_digits_pixels_are_upsampled_and_normalised_with_the_fixed_constants():
    from sklearn.datasets import load_digits

    _, _, x8, y8 = digits_split(8)  # no resize: just the normalisation
    images = load_digits().images / 16.0
    first = x8[0, 0] * DIGITS_STD + DIGITS_MEAN
    match = [i for i in range(len(images)) if np.allclose(images[i], first, atol=1e-6)]
    assert match, "the 8x8 test image is not a scaled digits image"
    _, _, x16, _ = digits_split(16)
    # bilinear 2x upsampling with half-pixel centres: the top-left output pixel equals the input corner
    assert np.isclose(x16[0, 0, 0, 0], x8[0, 0, 0, 0], atol=1e-6)
    assert np.isclose(x16[0, 0, 1, 1], 0.5625 * x8[0, 0, 0, 0] + 0.1875 * (x8[0, 0, 0, 1] + x8[0, 0, 1, 0])
                      + 0.0625 * x8[0, 0, 1, 1], atol=1e-5)


def test_load_dataset_digits_is_the_held_out_split():
    _, _, x_test, y_test = digits_split(16)
    for shape in [(1, 16, 16), (4, 1, 16, 16)]:
        data = load_dataset("digits", shape)
        assert np.array_equal(data.x, x_test) and np.array_equal(data.y, y_test)


def test_load_dataset_digits_rejects_a_three_channel_model():
    with pytest.raises(UserError, match="digits.*1-channel.*\\(3, 32, 32\\)"):
        load_dataset("digits", (3, 32, 32))


def test_load_dataset_npz_with_and_without_labels(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 3, 8, 8))
    labelled, unlabelled, single = tmp_path / "l.npz", tmp_path / "u.npz", tmp_path / "one.npz"
    np.savez(labelled, x=x, y=np.array([0, 1, 2, 3, 4], dtype=np.int32))
    np.savez(unlabelled, x=x)
    np.savez(single, x=x[0])

    data = load_dataset(str(labelled), (3, 8, 8))
    assert data.x.dtype == np.float32 and np.allclose(data.x, x)
    assert data.y.dtype == np.int64 and data.y.tolist() == [0, 1, 2, 3, 4]
    data = load_dataset(str(unlabelled), (1, 3, 8, 8))
    assert data.y is None and data.x.shape == (5, 3, 8, 8)
    assert load_dataset(str(single), (3, 8, 8)).x.shape == (1, 3, 8, 8)


def test_load_dataset_npz_errors_name_the_file(tmp_path):
    wrong, no_x, bad_y = tmp_path / "wrong.npz", tmp_path / "no_x.npz", tmp_path / "bad_y.npz"
    np.savez(wrong, x=np.zeros((2, 3, 8, 8)))
    np.savez(no_x, inputs=np.zeros((2, 3, 8, 8)))
    np.savez(bad_y, x=np.zeros((2, 3, 8, 8)), y=np.array([1, 2, 3]))

    with pytest.raises(UserError, match=r"wrong\.npz.*\(2, 3, 8, 8\).*\(N, 1, 16, 16\)"):
        load_dataset(str(wrong), (1, 16, 16))
    with pytest.raises(UserError, match=r"no_x\.npz.*no array named 'x'.*inputs"):
        load_dataset(str(no_x), (3, 8, 8))
    with pytest.raises(UserError, match=r"bad_y\.npz.*2 integer labels"):
        load_dataset(str(bad_y), (3, 8, 8))
    with pytest.raises(UserError, match=r"missing\.npz.*no such file"):
        load_dataset(str(tmp_path / "missing.npz"), (3, 8, 8))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match=r"notes\.txt.*not a \.npz file or a folder"):
        load_dataset(str(tmp_path / "notes.txt"), (3, 8, 8))


def test_load_dataset_folder_of_images(tmp_path):
    white = np.full((10, 12), 255, dtype=np.uint8)
    for label in ("0", "7"):
        (tmp_path / "labelled" / label).mkdir(parents=True)
        Image.fromarray(white).save(tmp_path / "labelled" / label / "a.png")
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.stack([white] * 3, axis=-1)).save(tmp_path / "flat" / "b.png")

    data = load_dataset(str(tmp_path / "labelled"), (1, 16, 16), mean=0.5, std=0.25)
    assert data.x.shape == (2, 1, 16, 16) and data.y.tolist() == [0, 7]
    assert np.allclose(data.x, (1.0 - 0.5) / 0.25)
    data = load_dataset(str(tmp_path / "flat"), (3, 8, 8))
    assert data.y is None and data.x.shape == (1, 3, 8, 8) and np.allclose(data.x, 1.0)

    (tmp_path / "labelled" / "cats").mkdir()
    with pytest.raises(UserError, match="'cats' is not an integer class label"):
        load_dataset(str(tmp_path / "labelled"), (1, 16, 16))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty.*no image files"):
        load_dataset(str(tmp_path / "empty"), (1, 16, 16))
