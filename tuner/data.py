"""Datasets as uint8 tensors: read from their standard layouts, split, and shipped to trials.

Layouts (under the data dir, or the data dir itself being that folder):
  digits          sklearn's load_digits, embedded; a fixed, stratified 20% is its test set
  mnist           MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]    (torchvision's layout)
  fashion_mnist   FashionMNIST/raw/... the same IDX files
  cifar10         cifar-10-batches-py/data_batch_*, test_batch, batches.meta       (python pickles)
  cifar100        cifar-100-python/train, test, meta (fine labels)
Any number of images the files hold is accepted. The data dir is --data-dir, else $TUNER_DATA_DIR,
else ./data. Only the training part ever reaches a trial; the test part is read after the search.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from tuner.errors import UserError

DIGITS_TEST_FRACTION = 0.2   # digits ships no test split: this fixed, stratified share is its test set
DIGITS_TEST_SEED = 0         # independent of the search seed, so every search sees the same test set


@dataclass(frozen=True)
class DatasetSpec:
    folder: str | None           # folder under the data dir (None: embedded in a package)
    torchvision: str | None      # torchvision.datasets class that downloads it
    files: dict[str, tuple[str, ...]]  # part -> files that must exist


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(None, None, {}),
    "mnist": DatasetSpec("MNIST", "MNIST", {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}),
    "fashion_mnist": DatasetSpec("FashionMNIST", "FashionMNIST", {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}),
    "cifar10": DatasetSpec("cifar-10-batches-py", "CIFAR10", {
        "train": ("data_batch_1",), "test": ("test_batch",)}),
    "cifar100": DatasetSpec("cifar-100-python", "CIFAR100", {"train": ("train",), "test": ("test",)}),
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


@dataclass
class ImageSet:
    """One part of a dataset: uint8 images (N, C, H, W), int64 labels (N,), class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def resolve_data_dir(arg: str | os.PathLike | None) -> Path:
    return Path(arg or os.environ.get("TUNER_DATA_DIR") or "data").expanduser().resolve()


# ---- readers ---------------------------------------------------------------------------------------------

def _open(path: Path):
    gz = path.with_name(path.name + ".gz")
    return open(path, "rb") if path.is_file() else gzip.open(gz, "rb")


def _exists(path: Path) -> bool:
    # files, not folders: a data dir that holds train/ and test/ folders is not CIFAR-100's train and test
    return path.is_file() or path.with_name(path.name + ".gz").is_file()


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format): magic (2 zero bytes, dtype code, ndim), big-endian dims, data."""
    try:
        with _open(path) as f:
            raw = bytearray(f.read())   # writable, so tensors made from it need no copy
    except (OSError, EOFError, zlib.error) as exc:  # a .gz cut short or damaged, or not gzip at all
        raise UserError(f"{path} (or its .gz) cannot be read ({exc}); fetch it again (--download)") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file; fetch it again (--download)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise UserError(f"{path} is truncated inside its header; fetch it again (--download)")
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated: {data.size} bytes for shape {tuple(dims)}; fetch it again")
    return data.reshape(dims)


class CifarUnpickler(pickle.Unpickler):
    """An unpickler for what a CIFAR batch holds and nothing else: dicts, lists, text, bytes, numbers and
    numpy arrays. Any other global (``os.system``, ``builtins.eval``, ...) is refused before it is looked up,
    so a data folder from elsewhere cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),   # protocol 5
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}   # how protocol 2 pickles written by Python 3 spell bytes

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch never holds")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    # The CIFAR distribution is a set of python pickles: read with an unpickler that only builds data.
    try:
        with open(path, "rb") as f:
            d = CifarUnpickler(f, encoding="latin1").load()
        if not isinstance(d, dict):
            raise pickle.UnpicklingError(f"it holds a {type(d).__name__}, not a dict")
    except Exception as exc:   # a damaged or hostile file fails in many ways; the user needs one line
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a CIFAR batch ({reason}); fetch the dataset again (--download)") from None
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _read_mnist_like(folder: Path, spec: DatasetSpec, part: str, classes: list[str]) -> ImageSet:
    img_file, lbl_file = spec.files[part]
    images, labels = read_idx(folder / img_file), read_idx(folder / lbl_file)
    if images.ndim != 3 or labels.ndim != 1:
        raise UserError(f"{folder}: {img_file} should hold images (3 dimensions) and {lbl_file} labels (1), not "
                        f"{images.ndim} and {labels.ndim}; fetch the dataset again (--download)")
    check_counts(folder, len(images), len(labels))
    return ImageSet(np.ascontiguousarray(images[:, None, :, :]), labels.astype(np.int64), classes)


def check_counts(folder: Path, images: int, labels: int) -> None:
    """Every image has its label: a labels file from another part or release would mislabel silently."""
    if images != labels:
        raise UserError(f"{folder} holds {images} images but {labels} labels; fetch the dataset again (--download)")


def _read_cifar(folder: Path, part: str, fine: bool) -> ImageSet:
    if fine:
        batches = [folder / part]
        meta, label_key, names_key = folder / "meta", "fine_labels", "fine_label_names"
    else:
        batches = sorted(folder.glob("data_batch_*")) if part == "train" else [folder / "test_batch"]
        meta, label_key, names_key = folder / "batches.meta", "labels", "label_names"
    dicts = [_unpickle(b) for b in batches]
    try:
        images = np.concatenate([np.asarray(d["data"], dtype=np.uint8) for d in dicts]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([np.asarray(d[label_key], dtype=np.int64) for d in dicts])
        classes = list(_unpickle(meta)[names_key]) if meta.is_file() else [str(i) for i in range(labels.max() + 1)]
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{folder} does not hold CIFAR batches ({type(exc).__name__}: {str(exc)[:160]}); fetch "
                        f"the dataset again (--download)") from None
    check_counts(folder, len(images), len(labels))
    return ImageSet(np.ascontiguousarray(images), labels, classes)


def _read_digits(part: str) -> ImageSet:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]   # 0..16 -> 0..255
    labels = digits.target.astype(np.int64)
    train, test = train_test_split(np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION,
                                   random_state=DIGITS_TEST_SEED, stratify=labels)
    idx = train if part == "train" else test
    return ImageSet(images[idx], labels[idx], [str(i) for i in range(10)])


# ---- finding and fetching --------------------------------------------------------------------------------

def _find_folder(name: str, data_dir: Path, part: str) -> Path | None:
    """The folder holding ``name``'s files: <dir>/<folder>/raw, <dir>/<folder>, <dir> itself, or <dir>/raw
    (where <dir> is torchvision's MNIST/ or FashionMNIST/ folder)."""
    spec = DATASETS[name]
    own = [data_dir / "raw"] if data_dir.name == spec.folder else []     # MNIST and Fashion-MNIST share file names
    for folder in (data_dir / spec.folder / "raw", data_dir / spec.folder, data_dir, *own):
        if all(_exists(folder / f) for f in spec.files[part]):
            return folder
    return None


def _download(name: str, data_dir: Path) -> None:
    import torchvision.datasets as tvd

    cls = getattr(tvd, DATASETS[name].torchvision)
    data_dir.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        try:
            cls(root=str(data_dir), train=train, download=True)
        except Exception as exc:  # network errors come in many types; the user needs the one line
            raise UserError(f"could not download {name} into {data_dir}: {exc}") from None


def where_read(name: str, data_dir: Path | None, part: str) -> str:
    """Where a dataset's part is read from: its folder, or what embeds it."""
    if name == "digits":
        return "sklearn.datasets.load_digits"
    folder = _find_folder(name, data_dir, part) if data_dir is not None else None
    return str(folder or data_dir)


def find_part(name: str, data_dir: Path, part: str, download: bool = False) -> Path:
    """The folder that holds a dataset's 'train' or 'test' files, fetched first if asked."""
    spec = DATASETS[name]
    folder = _find_folder(name, data_dir, part)
    if folder is None and download:
        _download(name, data_dir)
        folder = _find_folder(name, data_dir, part)
    if folder is None:
        wanted = ", ".join(spec.files[part])
        raise UserError(
            f"dataset {name} not found in {data_dir}: expected {data_dir / spec.folder}/ with {wanted}; "
            f"pass --download to fetch it, or --data-dir (or TUNER_DATA_DIR) pointing at the folder that holds "
            f"{spec.folder}/")
    return folder


def check_test_files(name: str, data_dir: Path, download: bool = False) -> None:
    """A search reads the test files only after its trials end: a missing one is told before they start."""
    if DATASETS.get(name) is not None and name != "digits":
        find_part(name, data_dir, "test", download)


def load_part(name: str, data_dir: Path, part: str, download: bool = False) -> ImageSet:
    """Read the 'train' or 'test' part of a dataset."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if name == "digits":
        return _read_digits(part)
    spec, folder = DATASETS[name], find_part(name, data_dir, part, download)
    if name == "mnist":
        return _read_mnist_like(folder, spec, part, [str(i) for i in range(10)])
    if name == "fashion_mnist":
        return _read_mnist_like(folder, spec, part, FASHION_CLASSES)
    return _read_cifar(folder, part, fine=name == "cifar100")


# ---- what a trial gets -----------------------------------------------------------------------------------

@dataclass
class TrialData:
    """The training part, split into train and validation, as it travels to trials through Ray's object
    store (numpy arrays are read there without a copy). It never holds the test part."""

    name: str
    images: np.ndarray      # uint8 (N, C, H, W)
    labels: np.ndarray      # int64 (N,)
    train_idx: np.ndarray
    val_idx: np.ndarray
    classes: list[str]
    mean: tuple[float, ...]  # per channel, of the train split, in [0, 1] units
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def key(self) -> tuple:
        """Identifies this split in a worker's cache: the dataset and exactly which images are in it."""
        digest = hashlib.blake2b(self.train_idx.tobytes() + self.val_idx.tobytes(), digest_size=16).hexdigest()
        return (self.name, len(self.labels), digest)


def split_indices(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified, disjoint train/val indices that together cover every training image."""
    idx = np.arange(len(labels))
    try:
        train, val = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=labels)
    except ValueError as exc:   # stratified: every class needs an image on each side of the split
        raise UserError(f"val_fraction {val_fraction} cannot split {len(labels)} images with every class on both "
                        f"sides ({exc}); choose a val_fraction nearer 0.1") from None
    return np.sort(train), np.sort(val)


def limit_indices(idx: np.ndarray, labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """A stratified subset of at most n of ``idx`` (for --smoke)."""
    if n is None or n >= len(idx):
        return idx
    keep, _ = train_test_split(idx, train_size=n, random_state=seed, stratify=labels[idx])
    return np.sort(keep)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.astype(np.float32) / 255.0
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3)) + 1e-6
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def prepare_trial_data(name: str, data_dir: Path, val_fraction: float, seed: int, download: bool = False,
                       limit: int | None = None) -> TrialData:
    part = load_part(name, data_dir, "train", download)
    train_idx, val_idx = split_indices(part.labels, val_fraction, seed)
    if limit is not None:
        train_idx = limit_indices(train_idx, part.labels, limit, seed)
        val_idx = limit_indices(val_idx, part.labels, max(limit // 4, part.labels.max() + 1), seed)
    mean, std = channel_stats(part.images[train_idx])
    return TrialData(name, part.images, part.labels, train_idx, val_idx, part.classes, mean, std)
