"""Datasets: real Fashion-MNIST offline, the fixed split, dequantization, CIFAR-10 and ImageNet folders."""

import gzip
import pickle

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import gclib
from gclib.data import DEBIAN_FASHION_MNIST, dequantize


def test_fashion_mnist_loads_offline_with_a_fixed_split(fashion):
    train, val, test = fashion
    assert (len(train), len(val), len(test)) == (55000, 5000, 10000)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert set(test.labels.unique().tolist()) == set(range(10))
    assert (test.labels.bincount() == 1000).all()  # the real test set is balanced
    again = gclib.data.load("fashion-mnist")
    assert torch.equal(again[1].images, val.images)
    # validation images come from the training file and are not in the training split
    train_rows = {bytes(r) for r in train.images[:, 0].reshape(55000, -1).numpy()[:20000]}
    assert not any(bytes(r) in train_rows for r in val.images[:200, 0].reshape(200, -1).numpy())


def test_batched_access_matches_single_items(fashion):
    test = fashion[2]
    xb, yb = test.__getitems__([3, 5, 7])
    for j, i in enumerate([3, 5, 7]):
        x, y = test[i]
        assert torch.equal(xb[j], x) and int(yb[j]) == y


def test_dequantize_is_uniform_within_the_pixel_bin():
    x = torch.tensor([0.0, 1 / 255, 128 / 255, 1.0]).repeat(1000)
    g = torch.Generator().manual_seed(0)
    d = dequantize(x, g)
    k = torch.round(x * 255)
    assert ((d * 256 - k) >= 0).all() and ((d * 256 - k) < 1).all()
    assert torch.equal(d, dequantize(x, torch.Generator().manual_seed(0)))


def _write_idx(folder, truncate_images=False):
    folder.mkdir(parents=True, exist_ok=True)
    for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"]:
        data = gzip.open(DEBIAN_FASHION_MNIST / (name + ".gz")).read() if DEBIAN_FASHION_MNIST.exists() else None
        if data is None:
            pytest.skip("needs the Debian package dataset-fashion-mnist")
        if truncate_images and name == "t10k-images-idx3-ubyte":
            data = data[: len(data) // 2]
        (folder / name).write_bytes(data)


def test_explicit_root_with_uncompressed_files(tmp_path):
    _write_idx(tmp_path / "fm")
    train, val, test = gclib.data.load("fashion-mnist", root=tmp_path / "fm", val_size=1000)
    assert (len(train), len(val), len(test)) == (59000, 1000, 10000)


def test_truncated_file_gives_one_clear_error(tmp_path):
    _write_idx(tmp_path / "fm", truncate_images=True)
    with pytest.raises(gclib.DataError, match="truncated or corrupt"):
        gclib.data.load("fashion-mnist", root=tmp_path / "fm")


def test_missing_data_names_the_three_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(gclib.data, "DEBIAN_FASHION_MNIST", tmp_path / "nothing")
    monkeypatch.delenv("GCLIB_DATA", raising=False)
    with pytest.raises(gclib.DataError) as err:
        gclib.data.load("fashion-mnist", root=tmp_path / "empty")
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message and "GCLIB_DATA" in message and "download" in message


def test_gclib_data_environment_variable(tmp_path, monkeypatch):
    _write_idx(tmp_path / "fm")
    monkeypatch.setattr(gclib.data, "DEBIAN_FASHION_MNIST", tmp_path / "nothing")
    monkeypatch.setenv("GCLIB_DATA", str(tmp_path / "fm"))
    assert len(gclib.data.load("fashion-mnist")[2]) == 10000


def test_unknown_dataset():
    with pytest.raises(gclib.DataError, match="known: fashion-mnist"):
        gclib.data.load("mnist-but-typo")


def test_cifar10_loader_on_a_synthetic_stand_in(tmp_path, monkeypatch):
    # torchvision's CIFAR-10 format (python pickles of numpy arrays), 20 random images per batch file.
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 20).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(gclib.data.CIFAR10_CLASSES)}, f)
    # the md5 sums of the real files cannot match a synthetic stand-in
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    train, val, test = gclib.data.load("cifar10", root=tmp_path, val_size=10)
    assert (len(train), len(val), len(test)) == (90, 10, 20)
    x, y = train[0]
    assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1
    model = gclib.GenerativeClassifier.from_config("cifar10", seed=0)
    assert model(test[:2][0]).shape == (2, 10)


def test_imagenet_folder_loader_on_a_tiny_synthetic_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in [("train", 6), ("val", 2)]:
        for wnid in ["n01440764", "n01443537"]:
            (tmp_path / split / wnid).mkdir(parents=True)
            for i in range(n):
                image = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
                image.save(tmp_path / split / wnid / f"{i}.JPEG", "JPEG")
    train, val, test = gclib.data.load("imagenet", root=tmp_path, val_size=2)
    assert (len(train), len(val), len(test)) == (11, 1, 4)
    x, y = test[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert train[0][0].shape == (3, 224, 224)


def test_imagenet_missing_folder(tmp_path):
    with pytest.raises(gclib.DataError, match="ImageFolder"):
        gclib.data.load("imagenet", root=tmp_path)


def test_augment_keeps_shape_range_and_pixels_and_is_seeded(fashion):
    x, _ = fashion[2][:32]
    a = gclib.data.augment(x, torch.Generator().manual_seed(0), flip=True, max_shift=2)
    b = gclib.data.augment(x, torch.Generator().manual_seed(0), flip=True, max_shift=2)
    assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b)
    assert 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, x)
    # a flip alone is a permutation of the pixels of each image
    f = gclib.data.augment(x, torch.Generator().manual_seed(1), flip=True, max_shift=0)
    assert torch.equal(f.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    assert torch.equal(gclib.data.augment(x, None, flip=False, max_shift=0), x)


def test_missing_cifar10_is_one_clear_error(tmp_path):
    with pytest.raises(gclib.DataError, match="cifar-10-batches-py"):
        gclib.data.load("cifar10", root=tmp_path, download=False)
