"""Datasets: real files in their standard layouts, seeded stratified splits, the test set kept out."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from tuner.data import check_test_files, load_part, prepare_trial_data, read_idx, resolve_data_dir, split_indices
from tuner.errors import UserError


def test_digits_has_a_fixed_disjoint_test_split():
    train, test = load_part("digits", None, "train"), load_part("digits", None, "test")
    assert len(train) + len(test) == 1797 and train.images.shape[1:] == (1, 8, 8)
    assert train.images.dtype == np.uint8 and train.images.max() == 255
    assert set(np.unique(test.labels)) == set(range(10))
    again = load_part("digits", None, "test")
    assert np.array_equal(test.images, again.images)


@pytest.mark.parametrize("seed", [0, 1])
def test_splits_are_disjoint_stratified_and_cover_the_training_set(seed):
    labels = load_part("digits", None, "train").labels
    train, val = split_indices(labels, 0.2, seed)
    assert not set(train) & set(val)
    assert sorted(np.concatenate([train, val])) == list(range(len(labels)))
    share = np.bincount(labels[val], minlength=10) / np.bincount(labels, minlength=10)
    assert np.allclose(share, 0.2, atol=0.03)
    again, _ = split_indices(labels, 0.2, seed)
    assert np.array_equal(train, again)


def test_a_validation_share_too_small_for_every_class_is_one_line():
    labels = load_part("digits", None, "train").labels
    with pytest.raises(UserError, match=r"val_fraction 0.005 cannot split 1437 images with every class on both"):
        split_indices(labels, 0.005, 0)


def test_a_gzipped_idx_file_cut_short_is_one_line(tmp_path, data_dir):
    with open(data_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", "rb") as src:
        packed = gzip.compress(src.read())
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(packed[: len(packed) // 2])    # a download cut short
    with pytest.raises(UserError, match="cannot be read .*; fetch it again"):
        read_idx(tmp_path / "t10k-labels-idx1-ubyte")


def test_a_damaged_gzipped_idx_file_is_one_line(tmp_path, data_dir):
    packed = bytearray(gzip.compress((data_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes()))
    packed[17] ^= 0xFF                                            # a damaged byte in the deflate stream
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(packed))
    with pytest.raises(UserError, match="cannot be read .*; fetch it again"):
        read_idx(tmp_path / "t10k-labels-idx1-ubyte")


@pytest.mark.parametrize("keep", [3, 6])
def test_an_idx_file_cut_inside_its_header_is_one_line(tmp_path, data_dir, keep):
    (tmp_path / "x").write_bytes((data_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte").read_bytes()[:keep])
    with pytest.raises(UserError, match="IDX file|inside its header"):
        read_idx(tmp_path / "x")


def mnist_test_files(folder, data_dir, images="t10k-images-idx3-ubyte", labels="t10k-labels-idx1-ubyte"):
    raw = data_dir / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "t10k-images-idx3-ubyte").symlink_to(raw / images)
    (folder / "t10k-labels-idx1-ubyte").symlink_to(raw / labels)


def test_a_labels_file_in_place_of_the_images_is_one_line(tmp_path, data_dir):
    mnist_test_files(tmp_path / "MNIST" / "raw", data_dir, images="t10k-labels-idx1-ubyte")
    with pytest.raises(UserError, match="should hold images .3 dimensions. and .* labels .1., not 1 and 1"):
        load_part("mnist", tmp_path, "test")


def test_images_and_labels_that_do_not_pair_up_are_one_line(tmp_path, data_dir):
    mnist_test_files(tmp_path / "MNIST" / "raw", data_dir, labels="train-labels-idx1-ubyte")   # 60,000 labels
    with pytest.raises(UserError, match="holds 10000 images but 60000 labels"):
        load_part("mnist", tmp_path, "test")


def test_the_data_dir_may_be_torchvisions_mnist_folder(data_dir):
    assert len(load_part("mnist", data_dir / "MNIST", "test")) == 10000        # MNIST/raw/ under it
    with pytest.raises(UserError, match="dataset fashion_mnist not found"):  # the same file names, not its folder
        load_part("fashion_mnist", data_dir / "MNIST", "test")


def test_folders_named_like_cifar100s_files_are_not_its_files(tmp_path):
    for name in ("train", "test", "meta"):
        (tmp_path / name).mkdir()                    # an image-folder layout, not cifar-100-python's pickles
    with pytest.raises(UserError, match="dataset cifar100 not found"):
        load_part("cifar100", tmp_path, "train")


def test_mnist_from_torchvisions_layout(data_dir):
    train, test = load_part("mnist", data_dir, "train"), load_part("mnist", data_dir, "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert list(train.labels[:5]) == [5, 0, 4, 1, 9]


def test_idx_files_may_be_gzipped(tmp_path, data_dir):
    raw = data_dir / "MNIST" / "raw"
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with open(raw / name, "rb") as src, gzip.open(tmp_path / f"{name}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    assert np.array_equal(read_idx(tmp_path / "t10k-labels-idx1-ubyte"), read_idx(raw / "t10k-labels-idx1-ubyte"))
    assert len(load_part("mnist", tmp_path, "test")) == 10000   # the data dir may be the folder itself


def test_cifar_subset_in_its_pickle_layout(data_dir):
    train = load_part("cifar10", data_dir / "cifar-10-subset", "train")
    test = load_part("cifar10", data_dir / "cifar-10-subset" / "cifar-10-batches-py", "test")
    assert train.images.shape == (8068, 3, 32, 32) and len(test) == 1017
    assert train.classes[0] == "airplane" and len(train.classes) == 10


def test_trial_data_never_needs_the_test_files(tmp_path, data_dir):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in (data_dir / "cifar-10-subset" / "cifar-10-batches-py").iterdir():
        if f.name != "test_batch":
            (folder / f.name).symlink_to(f)
    data = prepare_trial_data("cifar10", tmp_path, 0.1, 0)
    assert len(data.train_idx) + len(data.val_idx) == 8068
    with pytest.raises(UserError, match="test_batch"):
        load_part("cifar10", tmp_path, "test")
    with pytest.raises(UserError, match="test_batch"):     # what a search checks before its trials start
        check_test_files("cifar10", tmp_path)
    check_test_files("cifar10", data_dir / "cifar-10-subset")
    check_test_files("digits", tmp_path)                    # embedded: nothing to find


def test_a_missing_dataset_says_where_to_put_it_in_one_line(tmp_path):
    with pytest.raises(UserError) as err:
        load_part("cifar100", tmp_path, "train")
    msg = str(err.value)
    assert "cifar-100-python" in msg and "--download" in msg and "\n" not in msg


def test_data_dir_comes_from_flag_then_env_then_default(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNER_DATA_DIR", str(tmp_path))
    assert resolve_data_dir("/x") == resolve_data_dir("/x").resolve() and str(resolve_data_dir("/x")) == "/x"
    assert resolve_data_dir(None) == tmp_path.resolve()
    monkeypatch.delenv("TUNER_DATA_DIR")
    assert resolve_data_dir(None).name == "data"


def test_smoke_limit_keeps_every_class(data_dir):
    data = prepare_trial_data("mnist", data_dir, 0.1, 0, limit=1024)
    assert len(data.train_idx) == 1024 and set(np.unique(data.labels[data.train_idx])) == set(range(10))
