"""Datasets for the proxies, held in memory as tensors, with a validation split carved
from the training data (the search never sees a test split).

`load_dataset(name, ...)` understands

* ``fashion-mnist`` (default; Xiao et al. 2017): read from the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) when present, else
  downloaded by torchvision into ``~/.cache/pconv-nas/``. Only the ``train-*`` files are read.
* ``cifar10`` / ``cifar100`` (Krizhevsky 2009): torchvision's loader under ``root``
  (downloaded where a network exists). Only the training batches are read.
* ``imagefolder:PATH``: ``PATH/train/<class>/*.png|jpg|...`` and an optional
  ``PATH/val/<class>/...``; images are resized to ``image_size`` (default 64, short side
  then centre crop) and kept as uint8. Grayscale if every image is, else RGB.

``heldout="test"`` (the reference trainer, `proxies.reference`) trains on the whole
training split and holds out the dataset's test split instead: Fashion-MNIST's
``t10k-*`` files (10,000 images), CIFAR's test batch, an ImageFolder's ``val/`` folder.
Where a dataset has no such split it is carved from the training data as above (at least
a sixth of it) and `Dataset.heldout` says so. The search itself never reads a test split.

Images stay uint8 at their native size (Fashion-MNIST: 60k x 1 x 28 x 28 = 47 MB);
`Dataset.batch` normalizes and resizes a batch to the training resolution on the fly.

Resolution: FasterNet's stem has stride 4 and the network downsamples 32x, so a 28x28
image would leave a 0x0 map in stage 4. We keep the architecture exactly the one whose
latency is looked up (same stem, same strides) and change only the input size: images are
bilinearly resized to the budget's resolution (32x32 by default: the smallest size at which
every stage has a >= 1x1 map; see `proxies.budget`).

The validation split is deterministic and class-balanced: for each class the same
``val_per_class`` images are chosen by a generator seeded with ``split_seed`` (a fixed
constant, independent of the proxy seed, so every trial sees the same split).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Dataset", "DatasetError", "load_dataset", "DATASETS", "FASHION_MNIST_DIR",
           "carve_validation"]

#: Where the Debian package `dataset-fashion-mnist` installs its files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Named datasets (``imagefolder:PATH`` is accepted too).
DATASETS = ("fashion-mnist", "cifar10", "cifar100")
_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pconv-nas"
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}
_SPLIT_SEED = 20230307  # fixed: the split is a property of the dataset, not of a trial


class DatasetError(ValueError):
    """A dataset cannot be found, read or split; the message says what to do."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Training and validation images (uint8, N x C x H x W) and labels (int64), in memory."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    """Per-channel mean of the training split, in [0, 1] units."""
    std: tuple[float, ...]
    heldout: str = "validation split carved from the training data"
    """Where ``val_x`` comes from (a carved validation split, or a test split)."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to(self, device: torch.device | str) -> Dataset:
        """The same images on `device` (moved once; a no-op where they already are)."""
        device = torch.device(device)
        if self.device == device:
            return self
        moved = {name: getattr(self, name).to(device)
                 for name in ("train_x", "train_y", "val_x", "val_y")}
        return dataclasses.replace(self, **moved)

    def batch(self, x: torch.Tensor, resolution: int) -> torch.Tensor:
        """Normalize uint8 images and resize them (bilinear) to resolution x resolution."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        out = (x.float() / 255.0 - mean) / std
        if out.shape[-1] != resolution or out.shape[-2] != resolution:
            out = F.interpolate(out, size=(resolution, resolution), mode="bilinear",
                                align_corners=False, antialias=resolution < out.shape[-1])
        return out.contiguous(memory_format=torch.channels_last)

    def __repr__(self) -> str:
        return (f"Dataset({self.name}: {len(self.train_y)} train / {len(self.val_y)} held out, "
                f"{self.num_classes} classes, {self.in_chans}x{self.image_size}x{self.image_size})")


def load_dataset(name: str = "fashion-mnist", *, root: str | Path | None = None,
                 val_per_class: int | None = None, image_size: int = 64,
                 download: bool = True, heldout: str = "val") -> Dataset:
    """Load a dataset into memory and carve its validation split.

    Args:
        name: ``fashion-mnist``, ``cifar10``, ``cifar100`` or ``imagefolder:PATH``.
        root: where torchvision keeps (or downloads) the files; default
            ``~/.cache/pconv-nas`` (Fashion-MNIST prefers the Debian package's folder).
        val_per_class: validation images per class carved from the training data;
            default 500 (1/12 of Fashion-MNIST's, 1/10 of CIFAR-10's training set), at
            most a fifth of the smallest class. An ImageFolder with a ``val/`` folder uses it.
        image_size: side (pixels) ImageFolder images are resized to when loaded.
        download: let torchvision download a missing dataset.
        heldout: ``val`` (the search's carved validation split) or ``test`` (the whole
            training split for training, the dataset's test split held out; see above).
    """
    if heldout not in ("val", "test"):
        raise ValueError(f"heldout: {heldout!r} must be 'val' or 'test'")
    return _load_cached(str(name), None if root is None else str(root), val_per_class,
                        int(image_size), bool(download), heldout)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: str | None, val_per_class: int | None, image_size: int,
                 download: bool, heldout: str) -> Dataset:
    key = name.strip().lower()
    if key.startswith("imagefolder:"):
        return _image_folder(Path(name.split(":", 1)[1]).expanduser(), val_per_class, image_size,
                             heldout)
    if key in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        key = "fashion-mnist"
        x, y, classes = _fashion_mnist(root, download)
        test = _fashion_mnist(root, download, split="t10k") if heldout == "test" else None
    elif key in ("cifar10", "cifar100"):
        x, y, classes = _cifar(key, root, download)
        test = _cifar(key, root, download, train=False) if heldout == "test" else None
    else:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} "
                           "or imagefolder:PATH")
    if test is not None:
        return _make(key, x, y, test[0], test[1], classes,
                     heldout=f"the {key} test split ({len(test[1])} images)")
    train_idx, val_idx = carve_validation(y, val_per_class)
    return _make(key, x[train_idx], y[train_idx], x[val_idx], y[val_idx], classes)


def carve_validation(labels: torch.Tensor, val_per_class: int | None = None,
                     seed: int = _SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic class-balanced split of training indices -> (train_idx, val_idx).

    Every class gives the same number of validation images (`val_per_class`, default 500,
    capped at a fifth of the smallest class); both index lists are sorted.
    """
    labels = labels.long()
    counts = torch.bincount(labels)
    present = counts[counts > 0]
    if len(present) == 0:
        raise DatasetError("cannot split an empty dataset")
    cap = int(present.min()) // 5
    k = min(500 if val_per_class is None else int(val_per_class), cap)
    if k < 1:
        raise DatasetError(f"a class has only {int(present.min())} training images; need at "
                           "least 5 per class to carve a validation split")
    rng = np.random.default_rng(seed)
    val = []
    for c in torch.nonzero(counts).flatten().tolist():
        idx = torch.nonzero(labels == c).flatten().numpy()
        val.append(np.sort(rng.choice(idx, size=k, replace=False)))
    val_idx = torch.from_numpy(np.sort(np.concatenate(val)))
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val_idx] = False
    return torch.nonzero(mask).flatten(), val_idx


def _make(name: str, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
          val_y: torch.Tensor, classes: tuple[str, ...], heldout: str | None = None) -> Dataset:
    sample = train_x[:: max(1, len(train_x) // 10000)].float() / 255.0  # stats from <= 10k images
    mean = tuple(float(m) for m in sample.mean(dim=(0, 2, 3)))
    std = tuple(max(float(s), 1e-3) for s in sample.std(dim=(0, 2, 3)))
    return Dataset(name, train_x.contiguous(), train_y.long(), val_x.contiguous(), val_y.long(),
                   classes, mean, std, *([heldout] if heldout else []))


# ---------------------------------------------------------------------- Fashion-MNIST
_FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist(root: str | None, download: bool,
                   split: str = "train") -> tuple[torch.Tensor, torch.Tensor, tuple]:
    for folder in ([Path(root)] if root else []) + [FASHION_MNIST_DIR]:
        for suffix in (".gz", ""):
            images = folder / f"{split}-images-idx3-ubyte{suffix}"
            labels = folder / f"{split}-labels-idx1-ubyte{suffix}"
            if images.is_file() and labels.is_file():
                x = torch.from_numpy(_read_idx(images).copy()).unsqueeze(1)
                y = torch.from_numpy(_read_idx(labels).astype(np.int64))
                return x, y, _FMNIST_CLASSES
    from torchvision.datasets import FashionMNIST

    ds = _torchvision(FashionMNIST, "fashion-mnist", Path(root) if root else _CACHE, download,
                      hint="or install the Debian package dataset-fashion-mnist",
                      train=split == "train")
    return ds.data.unsqueeze(1).clone(), ds.targets.clone().long(), _FMNIST_CLASSES


def _cifar(name: str, root: str | None, download: bool,
           train: bool = True) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    ds = _torchvision(cls, name, Path(root) if root else _CACHE, download, train=train)
    x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(ds.targets, dtype=torch.int64), tuple(ds.classes)


# What torchvision raises for a dataset it cannot fetch or read: offline or refused (URLError,
# HTTPError: OSErrors), a failed integrity check (RuntimeError), a truncated or corrupt archive
# or batch file. Anything else is a bug, not a missing dataset, and is not reworded.
_UNREADABLE = (OSError, RuntimeError, ValueError, EOFError, tarfile.TarError, zipfile.BadZipFile,
               pickle.UnpicklingError)


def _torchvision(cls: type, name: str, root: Path, download: bool, hint: str = "",  # noqa: ANN202
                 train: bool = True):
    try:
        return cls(str(root), train=train, download=download)
    except _UNREADABLE as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        action = "download failed" if download else "not found (download=False)"
        extra = f" {hint}" if hint else ""
        raise DatasetError(f"{name}: {action} under {root} ({why}); put the files there "
                           f"or run where a network exists{extra}") from None


# ---------------------------------------------------------------------- ImageFolder
def _image_folder(path: Path, val_per_class: int | None, image_size: int,
                  heldout: str = "val") -> Dataset:
    if not path.is_dir():
        raise DatasetError(f"imagefolder: {path} is not a folder")
    train_dir = path / "train"
    if not train_dir.is_dir():
        raise DatasetError(f"imagefolder: {path} has no train/ folder (expected "
                           "train/<class>/<image> and optionally val/<class>/<image>)")
    classes = tuple(sorted(d.name for d in train_dir.iterdir() if d.is_dir()))
    if len(classes) < 2:
        raise DatasetError(f"imagefolder: {train_dir} needs at least 2 class subfolders, "
                           f"found {len(classes)}")
    x, y = _read_split(train_dir, classes, image_size, require_all=True)
    val_dir = path / "val"
    name = f"imagefolder:{path}"
    if val_dir.is_dir():
        vx, vy = _read_split(val_dir, classes, image_size, require_all=False)
        gray = x.shape[1] == 1 and vx.shape[1] == 1
        x, vx = (x, vx) if gray else (_rgb(x), _rgb(vx))
        return _make(name, x, y, vx, vy, classes, heldout=f"the val/ folder ({len(vy)} images)")
    if heldout == "test":
        # No test split: hold out a sixth of every class (as Fashion-MNIST's 10k of 60k).
        per_class = max(1, int(torch.bincount(y)[torch.bincount(y) > 0].min()) // 6)
        train_idx, val_idx = carve_validation(y, per_class)
        return _make(name, x[train_idx], y[train_idx], x[val_idx], y[val_idx], classes,
                     heldout=f"no test split: {len(val_idx)} images ({per_class} per class) "
                             "carved from train/ and held out")
    train_idx, val_idx = carve_validation(y, val_per_class)
    return _make(name, x[train_idx], y[train_idx], x[val_idx], y[val_idx], classes)


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def _read_split(folder: Path, classes: tuple[str, ...], size: int,
                require_all: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    images, labels, gray = [], [], True
    for label, cls in enumerate(classes):
        cdir = folder / cls
        files = sorted(f for f in cdir.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES) \
            if cdir.is_dir() else []
        if not files and (require_all or cdir.is_dir()):
            raise DatasetError(f"imagefolder: class folder {cdir} has no images "
                               f"({', '.join(sorted(_IMAGE_SUFFIXES))})")
        for f in files:
            try:
                with Image.open(f) as im:
                    gray &= im.mode in ("L", "1", "I;16", "I")
                    images.append(_square(im.convert("RGB"), size))
            except (OSError, UnidentifiedImageError) as e:
                raise DatasetError(f"imagefolder: cannot read {f} ({e})") from None
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    if gray:
        x = x[:, :1].contiguous()
    return x, torch.tensor(labels, dtype=torch.int64)


def _square(im, size: int) -> np.ndarray:  # noqa: ANN001  (PIL image)
    """Resize the short side to `size` and centre-crop (torchvision's eval transform)."""
    from PIL import Image

    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                   Image.Resampling.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
