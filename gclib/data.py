"""Datasets: Fashion-MNIST (offline by default), CIFAR-10 and ImageNet folders, and dequantization.

``load(name)`` returns ``(train, val, test)``; images are float tensors in [0, 1], labels int64. The
validation split is a fixed, seeded part of the training set. Dequantization (uniform noise, for the
density) belongs to training and evaluation, not to the loader: see ``dequantize``.

Where Fashion-MNIST is looked for, in order: ``root``; the environment variable ``GCLIB_DATA``; the
Debian package ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist); torchvision's download
into the cache folder (only where the machine has internet).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import socket
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, default_collate

from .errors import DataError

__all__ = [
    "ImageDataset",
    "collate",
    "load",
    "dataset_names",
    "dequantize",
    "augment",
    "cache_dir",
    "FASHION_MNIST_CLASSES",
    "DEBIAN_FASHION_MNIST",
]

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_FM_FILES = {
    "train-images-idx3-ubyte": (60000, 28, 28),
    "train-labels-idx1-ubyte": (60000,),
    "t10k-images-idx3-ubyte": (10000, 28, 28),
    "t10k-labels-idx1-ubyte": (10000,),
}


class _Samples(list):
    """The list of ``(image, label)`` samples that ``ImageDataset.__getitems__`` returns, carrying the
    stacked batch the images are views of, so that :func:`collate` need not stack them again."""

    __slots__ = ("batch", "_items")

    def __init__(self, images: Tensor, labels: Tensor):
        super().__init__(zip(images.unbind(0), labels.tolist()))
        self.batch = (images, labels)
        self._items = tuple(self)  # to notice a list changed after it was made


def collate(samples):
    """DataLoader's ``collate_fn`` for gclib's datasets: ``(images [B, C, H, W], labels [B])``.

    The samples of an :class:`ImageDataset` batch (also through ``Subset``) come already stacked: their
    batch is returned as it is, without stacking the images again. Anything else (another dataset, a
    ``ConcatDataset``, a list changed after ``__getitems__`` made it) goes to PyTorch's ``default_collate``,
    so the result is always what the default collate would give.
    """
    if (type(samples) is _Samples and len(samples) == len(samples._items)
            and all(a is b for a, b in zip(samples, samples._items))):
        return samples.batch
    return default_collate(samples)


class ImageDataset(Dataset):
    """Images held in memory as uint8 [N, C, H, W] with int64 labels; items are float in [0, 1].

    A map-style dataset with the usual PyTorch contract: ``dataset[i]`` is ``(image [C, H, W], label int)``,
    and ``torch.utils.data.DataLoader`` works with its default collate, workers, shuffling, samplers,
    ``Subset`` and ``ConcatDataset``. Batched access is faster than collating single items:
    ``dataset[:64]``, ``dataset[[3, 5, 7]]`` and ``dataset.batch(indices)`` return ``(images [B, C, H, W],
    labels [B])``; ``__getitems__`` (which DataLoader calls with the indices of one batch) slices the batch
    at once and returns it as the list of samples the contract wants, and ``collate_fn=gclib.data.collate``
    hands that batch on without stacking it again.
    """

    def __init__(self, images: Tensor, labels: Tensor, classes: tuple[str, ...] = ()):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"ImageDataset wants uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()
        self.classes = classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        if isinstance(i, (slice, list, np.ndarray)) or (isinstance(i, Tensor) and i.dim() > 0):
            return self.batch(i)  # a batch: dataset[:64], dataset[[3, 5, 7]]
        return self.images[i].float() / 255, int(self.labels[i])

    def batch(self, indices) -> tuple[Tensor, Tensor]:
        """Images [B, C, H, W] float in [0, 1] and labels [B] of ``indices`` (a slice, a list or a tensor)."""
        if not isinstance(indices, slice):
            indices = torch.as_tensor(indices, dtype=torch.long)
        return self.images[indices].float() / 255, self.labels[indices]

    def __getitems__(self, indices) -> list[tuple[Tensor, int]]:
        # DataLoader's batched fetch: the list of samples [dataset[i] for i in indices], sliced in one go.
        return _Samples(*self.batch(indices))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def subset(self, n: int, seed: int = 0) -> "ImageDataset":
        """A fixed random subset of ``n`` items (class balance not enforced)."""
        index = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return ImageDataset(self.images[index], self.labels[index], self.classes)

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images as float [N, C, H, W] in [0, 1] and labels [N]."""
        return self.images.float() / 255, self.labels


def dequantize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantization of 8-bit images given in [0, 1]: ``(round(255 x) + u) / 256``, u ~ U[0, 1).

    The result is a continuous sample whose density on [0, 1] relates to the probability of the 8-bit
    image; ``bits_per_dim`` of it is the usual 8-bit figure.
    """
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (torch.round(x * 255) + noise) / 256


def augment(x: Tensor, generator: torch.Generator | None = None, flip: bool = True, max_shift: int = 0) -> Tensor:
    """Label-preserving augmentation of a batch [B, C, H, W]: random horizontal flips (p = 0.5) and random
    translations by up to ``max_shift`` pixels with zero fill, drawn per image from ``generator``.

    Done on whole batches with tensor ops (not per-image torchvision transforms) because per-item
    transforms cost more than the model's own step on a 2-core machine at 28x28.
    """
    batch, _, height, width = x.shape
    if flip:
        flips = torch.rand(batch, generator=generator, device=generator.device if generator else x.device) < 0.5
        x = torch.where(flips.to(x.device)[:, None, None, None], x.flip(3), x)
    if max_shift > 0:
        s = max_shift
        shifts = torch.randint(-s, s + 1, (2, batch), generator=generator,
                               device=generator.device if generator else x.device).to(x.device)
        padded = torch.nn.functional.pad(x, (s, s, s, s))
        rows = (torch.arange(height, device=x.device) + s)[None, :] + shifts[0][:, None]  # [B, H]
        cols = (torch.arange(width, device=x.device) + s)[None, :] + shifts[1][:, None]  # [B, W]
        index = torch.arange(batch, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return x


def cache_dir() -> Path:
    """Where gclib keeps decompressed or downloaded data: $GCLIB_CACHE, else ~/.cache/gclib."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gclib"
    return Path(os.environ.get("GCLIB_CACHE", default))


def dataset_names() -> list[str]:
    return ["fashion-mnist", "cifar10", "imagenet"]


def _fixed_split(n: int, val_size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:], perm[:val_size]


def _fm_candidates(root) -> list[Path]:
    dirs = []
    for base in [root, os.environ.get("GCLIB_DATA"), DEBIAN_FASHION_MNIST]:
        if base:
            base = Path(base)
            dirs += [base, base / "fashion-mnist", base / "FashionMNIST" / "raw"]
    return dirs


def _read_idx(path: Path, shape: tuple[int, ...]) -> Tensor:
    """Read an IDX file (gzipped or not), checking its header and length against ``shape``."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:  # gzip raises EOFError on a truncated file
        raise DataError(f"cannot read {path}: {err}; the file is truncated or corrupt, reinstall or re-download it "
                        f"(e.g. apt-get install --reinstall dataset-fashion-mnist)") from err
    ndim = len(shape)
    header = 4 + 4 * ndim
    if len(data) < header or struct.unpack(">HBB", data[:4])[2] != ndim:
        raise DataError(f"{path} is not an IDX file with {ndim} dimension(s)")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    expected = header + int(torch.tensor(dims).prod())
    if tuple(dims) != shape or len(data) != expected:
        raise DataError(
            f"{path} is truncated or corrupt: header says {dims}, expected {shape}, "
            f"{len(data)} bytes where {expected} are needed; reinstall or re-download it"
        )
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def _find_fashion_mnist(root) -> dict[str, Path] | None:
    for d in _fm_candidates(root):
        found = {}
        for name in _FM_FILES:
            for candidate in (d / name, d / (name + ".gz")):
                if candidate.is_file():
                    found[name] = candidate
                    break
        if len(found) == len(_FM_FILES):
            return found
    return None


@contextlib.contextmanager
def _network_timeout(seconds: float = 20):
    """An offline machine should fail a download fast, not hang on a mirror."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download_fashion_mnist() -> dict[str, Path] | None:
    import torchvision

    target = cache_dir()
    try:
        with _network_timeout():
            torchvision.datasets.FashionMNIST(str(target), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(target), train=False, download=True)
    except Exception:  # no internet, blocked host, ...: the caller raises the one clear error
        shutil.rmtree(target / "FashionMNIST", ignore_errors=True)
        return None
    return _find_fashion_mnist(target)


def _load_fashion_mnist(root, val_size: int, download: bool):
    files = _find_fashion_mnist(root)
    if files is None and download:
        files = _download_fashion_mnist()
    if files is None:
        looked = ", ".join(str(d) for d in _fm_candidates(root)[::3])
        raise DataError(
            "Fashion-MNIST not found (looked in: " + looked + "). Get it one of three ways: "
            "(1) apt-get install dataset-fashion-mnist (Debian/Ubuntu, offline); "
            "(2) put the four IDX files (train-images-idx3-ubyte[.gz], ...) in a folder and pass "
            "root=FOLDER or set GCLIB_DATA=FOLDER; "
            "(3) on a machine with internet, torchvision's download into " + str(cache_dir()) + " (tried: "
            + ("failed" if download else "download=False") + ")."
        )
    arrays = {name: _read_idx(path, _FM_FILES[name]) for name, path in files.items()}
    train_x = arrays["train-images-idx3-ubyte"][:, None]
    train_y = arrays["train-labels-idx1-ubyte"]
    test = ImageDataset(arrays["t10k-images-idx3-ubyte"][:, None], arrays["t10k-labels-idx1-ubyte"],
                        FASHION_MNIST_CLASSES)
    train_idx, val_idx = _fixed_split(len(train_x), val_size)
    train = ImageDataset(train_x[train_idx], train_y[train_idx], FASHION_MNIST_CLASSES)
    val = ImageDataset(train_x[val_idx], train_y[val_idx], FASHION_MNIST_CLASSES)
    return train, val, test


def _load_cifar10(root, val_size: int, download: bool):
    import torchvision

    root = root or os.environ.get("GCLIB_DATA") or cache_dir()
    try:
        with _network_timeout():
            sets = [torchvision.datasets.CIFAR10(str(root), train=t, download=download) for t in (True, False)]
    except Exception as err:  # not found, corrupt, or the download failed
        raise DataError(
            f"CIFAR-10 not found under {root} ({str(err)[:200]}). Put torchvision's 'cifar-10-batches-py' folder "
            "there (root=FOLDER or GCLIB_DATA=FOLDER), or load it with download=True on a machine with internet."
        ) from err

    def to_dataset(ds):
        images = torch.as_tensor(ds.data).permute(0, 3, 1, 2).contiguous()
        return ImageDataset(images, torch.as_tensor(ds.targets), CIFAR10_CLASSES)

    full, test = (to_dataset(s) for s in sets)
    train_idx, val_idx = _fixed_split(len(full), val_size)
    return (ImageDataset(full.images[train_idx], full.labels[train_idx], CIFAR10_CLASSES),
            ImageDataset(full.images[val_idx], full.labels[val_idx], CIFAR10_CLASSES), test)


def _load_imagenet(root, val_size: int, image_size: int = 224):
    """ImageNet in the ImageFolder layout: ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG."""
    import torchvision.transforms.v2 as T
    from torchvision.datasets import ImageFolder

    root = Path(root or os.environ.get("GCLIB_DATA") or "")
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise DataError(
            f"ImageNet folder not found at {root!s}: pass root=FOLDER (or GCLIB_DATA=FOLDER) containing "
            "train/<class>/*.JPEG and val/<class>/*.JPEG (torchvision ImageFolder layout)"
        )
    to_tensor = [T.ToImage(), T.ToDtype(torch.float32, scale=True)]
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *to_tensor])
    eval_tf = T.Compose([T.Resize(image_size * 8 // 7), T.CenterCrop(image_size), *to_tensor])
    train_full = ImageFolder(str(root / "train"), transform=train_tf)
    train_eval = ImageFolder(str(root / "train"), transform=eval_tf)
    test = ImageFolder(str(root / "val"), transform=eval_tf)
    val_size = min(val_size, len(train_full) // 10)
    train_idx, val_idx = _fixed_split(len(train_full), val_size)
    return Subset(train_full, train_idx.tolist()), Subset(train_eval, val_idx.tolist()), test


def load(name: str = "fashion-mnist", root: str | os.PathLike | None = None, val_size: int | None = None,
         download: bool = True):
    """Load a dataset as ``(train, val, test)``.

    Arguments:
        name: ``"fashion-mnist"`` (default, offline), ``"cifar10"`` or ``"imagenet"`` (a folder).
        root: a folder to look in first (else $GCLIB_DATA, then the defaults of each dataset).
        val_size: images held out from the training set for validation (fixed split, seed 0);
            default 5000 (10000 for ImageNet).
        download: if nothing is found locally, let torchvision download Fashion-MNIST / CIFAR-10 into
            ``cache_dir()`` (needs internet; an offline machine fails within seconds).

    Returns:
        Three datasets whose items are ``(image [C, H, W] float in [0, 1], label int)``.

    >>> train, val, test = load("fashion-mnist")
    >>> len(train), len(val), len(test)
    (55000, 5000, 10000)
    """
    if name in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        return _load_fashion_mnist(root, 5000 if val_size is None else val_size, download)
    if name == "cifar10":
        return _load_cifar10(root, 5000 if val_size is None else val_size, download)
    if name == "imagenet":
        return _load_imagenet(root, 10000 if val_size is None else val_size)
    raise DataError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")


# -- out-of-distribution sets that need no download ------------------------------------------------
def _quantize(x: Tensor) -> Tensor:
    # OoD images are put on the same 8-bit grid as Fashion-MNIST, so likelihoods compare like with like.
    return torch.round(x.clamp(0, 1) * 255) / 255


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def _digits(n: int, shape: tuple[int, int, int], generator: torch.Generator) -> Tensor:
    from sklearn.datasets import load_digits  # shipped with scikit-learn: 1,797 8x8 digits, values 0..16

    images = torch.as_tensor(load_digits().images, dtype=torch.float32)[:, None] / 16
    index = torch.randperm(len(images), generator=generator)[:n] if n <= len(images) else \
        torch.randint(len(images), (n,), generator=generator)
    return _resize(images[index], shape[1:]).expand(-1, shape[0], -1, -1)


def _photos(n: int, shape: tuple[int, int, int], generator: torch.Generator) -> Tensor:
    from sklearn.datasets import load_sample_images  # two 427x640 photos shipped with scikit-learn

    photos = [torch.tensor(img, dtype=torch.float32).permute(2, 0, 1) / 255 for img in load_sample_images().images]
    crop = 4 * max(shape[1:])  # a 112 px crop of a 640 px photo, shrunk to 28 px: a recognisable patch
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        top = int(torch.randint(photo.shape[1] - crop + 1, (1,), generator=generator))
        left = int(torch.randint(photo.shape[2] - crop + 1, (1,), generator=generator))
        patch = photo[:, top:top + crop, left:left + crop]
        if shape[0] == 1:
            patch = (0.299 * patch[0] + 0.587 * patch[1] + 0.114 * patch[2])[None]
        out.append(patch)
    return _resize(torch.stack(out), shape[1:])


def _uniform_noise(n, shape, generator):
    return torch.rand((n, *shape), generator=generator)


def _gaussian_noise(n, shape, generator):
    return (0.5 + 0.25 * torch.randn((n, *shape), generator=generator)).clamp(0, 1)


def _constant(n, shape, generator):
    return torch.rand((n, 1, 1, 1), generator=generator).expand(n, *shape).clone()


OOD_SETS = {
    "digits": _digits,  # handwritten digits (scikit-learn), upsampled: the classic likelihood failure case
    "photos": _photos,  # grayscale crops of scikit-learn's sample photos
    "uniform-noise": _uniform_noise,
    "gaussian-noise": _gaussian_noise,
    "constant": _constant,  # one random grey level per image
}


# Fashion-MNIST made strange: the same images, transformed (torchvision.transforms.v2 does the maths).
def _inverted(x):
    return 1 - x


def _rotated(x):
    from torchvision.transforms.v2 import functional as F

    return F.rotate(x, 90)


def _blurred(x):
    from torchvision.transforms.v2 import functional as F

    return F.gaussian_blur(x, [5, 5], [1.5, 1.5])


def _low_contrast(x):
    return 0.5 + 0.25 * (x - 0.5)


TRANSFORMS = {"inverted": _inverted, "rotated": _rotated, "blurred": _blurred, "low-contrast": _low_contrast}


def transformed(images: Tensor, name: str) -> Tensor:
    """In-distribution ``images`` [N, C, H, W] in [0, 1] made out-of-distribution by transform ``name``.

    ``inverted`` (1 - x), ``rotated`` (by 90 degrees), ``blurred`` (Gaussian, sigma 1.5 px) or
    ``low-contrast`` (contrast x 0.25 around grey); the result is on the 8-bit grid like the data.
    """
    if name not in TRANSFORMS:
        raise DataError(f"unknown transform {name!r}; choose from {', '.join(TRANSFORMS)}")
    return _quantize(TRANSFORMS[name](images.float())).contiguous()


def ood_names() -> list[str]:
    """Names of the out-of-distribution sets :func:`ood` can make."""
    return list(OOD_SETS)


def ood(name: str, n: int = 1000, shape: tuple[int, int, int] = (1, 28, 28), seed: int = 0) -> Tensor:
    """``n`` out-of-distribution images ``[n, *shape]`` in [0, 1] on the 8-bit grid, needing no download.

    Args:
        name: one of :func:`ood_names` (``digits``, ``photos``, ``uniform-noise``, ``gaussian-noise``,
            ``constant``).
        n: number of images (digits repeat when ``n`` exceeds the 1,797 shipped with scikit-learn).
        shape: ``(channels, height, width)`` of the model's input.
        seed: the draw (same seed, same images).
    """
    if name not in OOD_SETS:
        raise DataError(f"unknown out-of-distribution set {name!r}; choose from {', '.join(OOD_SETS)}")
    if n < 1:
        raise DataError(f"n must be >= 1, got {n}")
    generator = torch.Generator().manual_seed(seed)
    return _quantize(OOD_SETS[name](n, tuple(shape), generator)).contiguous()
