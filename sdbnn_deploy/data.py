"""The demo data set, and loading the inputs that `--data` names.

The demo data is scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), which ships inside
scikit-learn, so nothing is downloaded. The rule, in order:

1. pixels 0..16 are scaled to [0, 1] (divide by 16);
2. each image is resized to `input_size` x `input_size` with bilinear interpolation
   (half-pixel centres, the same as torch's `interpolate(mode="bilinear", align_corners=False)`);
3. normalised with the fixed constants `(x - DIGITS_MEAN) / DIGITS_STD`;
4. split into train and held-out test sets, stratified by class: in each class, a
   `numpy.random.RandomState(SPLIT_SEED)` permutation puts the first `round(TEST_FRACTION * n)` images
   into the test set. The split does not depend on the scikit-learn version, only on the data.

Arrays are float32 NCHW with one channel; labels are int64.
"""

from pathlib import Path
from typing import NamedTuple

import numpy as np

from sdbnn_deploy.errors import UserError

DIGITS_MEAN = 0.3  # mean of the [0, 1]-scaled pixels, rounded
DIGITS_STD = 0.38  # their standard deviation, rounded
TEST_FRACTION = 0.2
SPLIT_SEED = 0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".gif", ".tif", ".tiff")


class Dataset(NamedTuple):
    """Model inputs `x` (float32 N,C,H,W) and integer labels `y` (int64 N), or None when unlabelled."""

    x: np.ndarray
    y: np.ndarray | None


def digits_spec(input_size: int = 16) -> dict:
    """How the digits inputs are made, as recorded in a checkpoint's metadata."""
    return {
        "name": "sklearn-digits",
        "input_size": input_size,
        "resize": "bilinear, align_corners=False",
        "scale": "pixel / 16",
        "mean": DIGITS_MEAN,
        "std": DIGITS_STD,
        "test_fraction": TEST_FRACTION,
        "split_seed": SPLIT_SEED,
    }


def digits_split(input_size: int = 16):
    """Return `(x_train, y_train, x_test, y_test)` of the digits demo data, always the same."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float64) / 16.0  # (N, 8, 8)
    x = _resize_bilinear(images, input_size)
    x = ((x - DIGITS_MEAN) / DIGITS_STD).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    test = _stratified_test_mask(y)
    return x[~test], y[~test], x[test], y[test]


def _stratified_test_mask(y: np.ndarray) -> np.ndarray:
    """A boolean mask of the held-out images: `round(TEST_FRACTION * n)` of each class, fixed seed."""
    rng = np.random.RandomState(SPLIT_SEED)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        chosen = rng.permutation(members)[: int(round(TEST_FRACTION * len(members)))]
        test[chosen] = True
    return test


def _interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) matrix of 1-D linear interpolation with half-pixel centres."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(int(np.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        m[i, lo] += 1.0 - frac
        m[i, hi] += frac
    return m


def _resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, H, W) images to (N, size, size): rows and columns are interpolated separately."""
    rows = _interpolation_matrix(images.shape[1], size)
    cols = _interpolation_matrix(images.shape[2], size)
    return np.einsum("ih,nhw,jw->nij", rows, images, cols)


def load_dataset(spec: str, input_shape, mean: float = 0.0, std: float = 1.0) -> Dataset:
    """Load the inputs that `--data SPEC` names, checked against the model's `input_shape`.

    `input_shape` is (C, H, W) or (N, C, H, W); a leading batch size is ignored. SPEC is one of:
    - `digits`: the held-out test split of the digits demo data (one channel, H == W);
    - `FILE.npz`: array `x` of model inputs, shape (N, C, H, W) or one input (C, H, W), and an optional
      array `y` of N integer labels; the values are used as they are;
    - `FOLDER`: image files, either directly inside it (unlabelled) or in subfolders named by their
      integer label (`FOLDER/3/a.png`); each is converted to grey (C == 1) or RGB (C == 3), resized to
      H x W, scaled to [0, 1], then normalised as `(x - mean) / std`.
    """
    shape = tuple(int(d) for d in input_shape)[-3:]
    if spec == "digits":
        return _load_digits(shape)
    path = Path(spec)
    if not path.exists():
        raise UserError(f"--data {spec}: no such file or folder (expected digits, FILE.npz or FOLDER)")
    if path.is_dir():
        return _load_folder(path, shape, mean, std)
    if path.suffix == ".npz":
        return _load_npz(path, shape)
    raise UserError(f"--data {spec}: not a .npz file or a folder (expected digits, FILE.npz or FOLDER)")


def _load_digits(shape) -> Dataset:
    channels, height, width = shape
    if channels != 1 or height != width:
        raise UserError(
            f"--data digits gives 1-channel square images, but the model takes inputs of shape {shape}"
        )
    _, _, x_test, y_test = digits_split(height)
    return Dataset(x_test, y_test)


def _load_npz(path: Path, shape) -> Dataset:
    try:
        arrays = np.load(path)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read it as an .npz file ({err})") from None
    if "x" not in arrays.files:
        raise UserError(f"{path}: no array named 'x' (it holds {', '.join(arrays.files) or 'nothing'})")
    x = np.asarray(arrays["x"], dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1:] != tuple(shape):
        raise UserError(f"{path}: x has shape {arrays['x'].shape}, but the model takes (N, {', '.join(map(str, shape))})")
    y = None
    if "y" in arrays.files:
        y = np.asarray(arrays["y"]).reshape(-1)
        if len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise UserError(f"{path}: y must hold {len(x)} integer labels, one per input; it has {y.dtype} {arrays['y'].shape}")
        y = y.astype(np.int64)
    return Dataset(x, y)


def _load_folder(path: Path, shape, mean: float, std: float) -> Dataset:
    channels, height, width = shape
    if channels not in (1, 3):
        raise UserError(f"--data {path}: images give 1 or 3 channels, but the model takes {channels}")
    files, labels = _image_files(path)
    if not files:
        raise UserError(f"--data {path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it or its label subfolders")
    x = np.stack([_read_image(f, channels, height, width) for f in files])
    x = ((x - mean) / std).astype(np.float32)
    y = np.array(labels, dtype=np.int64) if labels else None
    return Dataset(x, y)


def _image_files(path: Path):
    """Image files directly in `path` (no labels), or in subfolders named by integer labels."""
    def images_in(folder):
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    flat = images_in(path)
    subfolders = sorted((p for p in path.iterdir() if p.is_dir()), key=lambda p: p.name)
    if flat:
        return flat, []
    files, labels = [], []
    for sub in subfolders:
        if not sub.name.isdigit():
            raise UserError(f"--data {path}: subfolder {sub.name!r} is not an integer class label")
        found = images_in(sub)
        files += found
        labels += [int(sub.name)] * len(found)
    return files, labels


def _read_image(path: Path, channels: int, height: int, width: int) -> np.ndarray:
    """One image as float (C, H, W) in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
            pixels = np.asarray(image, dtype=np.float64) / 255.0
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"{path}: cannot read it as an image ({err})") from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
