"""Datasets and budgets of `proxies`: real Fashion-MNIST, ImageFolder, the split, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from proxies import BUDGETS, Budget, DatasetError, carve_validation, load_dataset
from proxies.data import FASHION_MNIST_DIR

needs_fmnist = pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                                  reason="Debian package dataset-fashion-mnist not installed")


@needs_fmnist
def test_fashion_mnist_real_files_and_balanced_split():
    ds = load_dataset("fashion-mnist")
    assert (ds.num_classes, ds.in_chans, ds.image_size) == (10, 1, 28)
    # Only the 60k training images are read (the 10k test images never are).
    assert len(ds.train_y) + len(ds.val_y) == 60000
    assert torch.bincount(ds.val_y).tolist() == [500] * 10
    assert ds.train_x.dtype == torch.uint8
    x = ds.batch(ds.val_x[:8], 32)
    assert x.shape == (8, 1, 32, 32) and torch.isfinite(x).all()
    assert abs(float(ds.batch(ds.train_x[:2000], 28).mean())) < 0.1  # normalized


def test_split_is_deterministic_balanced_and_disjoint():
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, 4, size=400))
    train, val = carve_validation(labels, val_per_class=10)
    train2, val2 = carve_validation(labels, val_per_class=10)
    assert torch.equal(val, val2) and torch.equal(train, train2)
    assert torch.bincount(labels[val]).tolist() == [10] * 4
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(400))


def test_split_rejects_tiny_classes():
    with pytest.raises(DatasetError, match="at least 5 per class"):
        carve_validation(torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1, 1]))


def _folder(root, classes=("cat", "dog"), n=10, mode="RGB", size=(12, 10)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")


def test_imagefolder_rgb_with_carved_split(tmp_path):
    _folder(tmp_path / "train")
    ds = load_dataset(f"imagefolder:{tmp_path}", image_size=16)
    assert ds.classes == ("cat", "dog") and ds.in_chans == 3 and ds.image_size == 16
    assert torch.bincount(ds.val_y).tolist() == [2, 2] and len(ds.train_y) == 16


def test_imagefolder_gray_with_val_folder(tmp_path):
    _folder(tmp_path / "train", mode="L")
    _folder(tmp_path / "val", n=3, mode="L")
    ds = load_dataset(f"imagefolder:{tmp_path}", image_size=8)
    assert ds.in_chans == 1 and len(ds.train_y) == 20 and len(ds.val_y) == 6


@pytest.mark.parametrize("case, match", [
    ("missing", "is not a folder"), ("no_train", "no train/ folder"),
    ("empty_class", "has no images"), ("one_class", "at least 2 class"),
])
def test_imagefolder_errors(tmp_path, case, match):
    if case == "no_train":
        (tmp_path / "images").mkdir()
    elif case == "empty_class":
        _folder(tmp_path / "train", n=5)
        (tmp_path / "train" / "zebra").mkdir()
    elif case == "one_class":
        _folder(tmp_path / "train", classes=("cat",))
    path = tmp_path / "nowhere" if case == "missing" else tmp_path
    with pytest.raises(DatasetError, match=match):
        load_dataset(f"imagefolder:{path}")


def test_unknown_dataset():
    with pytest.raises(DatasetError, match="unknown dataset 'mnist-2'"):
        load_dataset("mnist-2")


def test_cifar_without_files_fails_clearly(tmp_path):
    with pytest.raises(DatasetError, match=r"cifar10: not found \(download=False\)"):
        load_dataset("cifar10", root=tmp_path, download=False)


@pytest.mark.slow
def test_cifar_offline_download_fails_clearly(tmp_path):
    try:
        ds = load_dataset("cifar100", root=tmp_path)
    except DatasetError as e:
        assert "cifar100: download failed" in str(e)
    else:  # a network exists here
        assert ds.num_classes == 100 and ds.in_chans == 3


def test_budget_levels_and_parsing():
    assert Budget.parse("quick") == BUDGETS["quick"]
    b = Budget.parse("smoke,steps=10,lr=0.01")
    assert (b.steps, b.lr, b.batch_size) == (10, 0.01, BUDGETS["smoke"].batch_size)
    assert Budget.parse({"resolution": 64}).resolution == 64
    assert BUDGETS["full"].cost >= 10 * BUDGETS["quick"].cost
    with pytest.raises(ValueError, match="unknown level 'fast'"):
        Budget.parse("fast")
    with pytest.raises(ValueError, match="unknown field 'epochs'"):
        Budget.parse("epochs=3")
    with pytest.raises(ValueError, match="budget.steps"):
        Budget(steps=0)
