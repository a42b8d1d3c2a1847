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
    for xb, yb in (test.batch([3, 5, 7]), test[[3, 5, 7]], test[torch.tensor([3, 5, 7])], test[np.array([3, 5, 7])]):
        assert xb.shape == (3, 1, 28, 28) and yb.dtype == torch.int64
        for j, i in enumerate([3, 5, 7]):
            x, y = test[i]
            assert torch.equal(xb[j], x) and int(yb[j]) == y
    assert test[torch.tensor(5)][1] == test[np.int64(5)][1] == test[5][1]  # a scalar index is one item
    assert torch.equal(test[:4][0], test.batch([0, 1, 2, 3])[0])


# -- torch.utils.data idioms: every batch must equal the default collate of dataset[i] items --------------
def _small(fashion, n=300):
    return fashion[2].subset(n, seed=1)


class _Indices(torch.utils.data.Dataset):
    """Item i is i: a loader over it shows which indices the same loader over a dataset would fetch."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def _expected(dataset, indices):
    items = [dataset[i] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def _check_batches(loader, dataset, index_batches):
    batches = list(loader)
    assert len(batches) == len(index_batches)
    for (x, y), indices in zip(batches, index_batches):
        want_x, want_y = _expected(dataset, indices)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(x, want_x) and torch.equal(y, want_y)


def _chunks(indices, size, drop_last=False):
    out = [list(indices[i:i + size]) for i in range(0, len(indices), size)]
    return out[:-1] if drop_last and len(out[-1]) < size else out


def test_getitems_returns_the_list_of_samples_the_contract_promises(fashion):
    test = fashion[2]
    samples = test.__getitems__([3, 5, 7])
    assert isinstance(samples, list) and len(samples) == 3
    for (x, y), i in zip(samples, [3, 5, 7]):
        assert torch.equal(x, test[i][0]) and y == test[i][1] and isinstance(y, int)


@pytest.mark.parametrize("collate_fn", [None, gclib.data.collate], ids=["default-collate", "gclib-collate"])
def test_dataloader_with_the_default_collate_in_order(fashion, collate_fn):
    ds = _small(fashion)
    kwargs = {} if collate_fn is None else {"collate_fn": collate_fn}
    loader = torch.utils.data.DataLoader(ds, batch_size=64, **kwargs)
    _check_batches(loader, ds, _chunks(range(len(ds)), 64))  # 4 full batches and one of 44
    loader = torch.utils.data.DataLoader(ds, batch_size=64, drop_last=True, **kwargs)
    _check_batches(loader, ds, _chunks(range(len(ds)), 64, drop_last=True))


def test_dataloader_with_two_workers(fashion):
    ds = _small(fashion)
    for collate_fn in (torch.utils.data.default_collate, gclib.data.collate):
        loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=2, collate_fn=collate_fn)
        _check_batches(loader, ds, _chunks(range(len(ds)), 64))


def test_dataloader_shuffled_and_with_samplers(fashion):
    ds = _small(fashion)
    # shuffle=True: the index batches are those the same loader gives over a dataset of indices
    for workers in (0, 2):
        kwargs = dict(batch_size=64, shuffle=True, num_workers=workers)
        index_batches = [b.tolist() for b in torch.utils.data.DataLoader(
            _Indices(len(ds)), generator=torch.Generator().manual_seed(3), **kwargs)]
        assert sorted(sum(index_batches, [])) == list(range(len(ds))) and index_batches[0] != list(range(64))
        loader = torch.utils.data.DataLoader(ds, generator=torch.Generator().manual_seed(3), **kwargs)
        _check_batches(loader, ds, index_batches)
    # SubsetRandomSampler, with plain and with tensor indices (it yields 0-d tensors then)
    for subset in ([5, 17, 2, 250, 99, 7, 42], torch.tensor([5, 17, 2, 250, 99, 7, 42])):
        sampler = torch.utils.data.SubsetRandomSampler(subset, generator=torch.Generator().manual_seed(0))
        same = torch.utils.data.SubsetRandomSampler(subset, generator=torch.Generator().manual_seed(0))
        order = [int(i) for i in same]
        _check_batches(torch.utils.data.DataLoader(ds, batch_size=3, sampler=sampler), ds, _chunks(order, 3))
    # a BatchSampler as batch_sampler, over a SequentialSampler and over a RandomSampler
    for base in (torch.utils.data.SequentialSampler(ds),
                 torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(1))):
        batches = list(torch.utils.data.BatchSampler(base, batch_size=50, drop_last=True))
        if isinstance(base, torch.utils.data.RandomSampler):
            base.generator.manual_seed(1)
        sampler = torch.utils.data.BatchSampler(base, batch_size=50, drop_last=True)
        _check_batches(torch.utils.data.DataLoader(ds, batch_sampler=sampler), ds, batches)
    # a BatchSampler as sampler with batch_size=None: DataLoader indexes the dataset with whole batches
    sampler = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(ds), batch_size=64, drop_last=False)
    _check_batches(torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=None), ds, _chunks(range(len(ds)), 64))


def test_dataloader_over_subset_and_concat(fashion):
    ds = _small(fashion)
    indices = [299, 0, 150, 7, 7, 64, 3, 200, 11, 12]
    subset = torch.utils.data.Subset(ds, indices)
    for collate_fn in (torch.utils.data.default_collate, gclib.data.collate):
        _check_batches(torch.utils.data.DataLoader(subset, batch_size=4, collate_fn=collate_fn), ds,
                       _chunks(indices, 4))
    other = fashion[1].subset(40, seed=2)
    concat = torch.utils.data.ConcatDataset([ds, other])
    assert len(concat) == 340
    loader = torch.utils.data.DataLoader(concat, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(5))
    index_batches = [b.tolist() for b in torch.utils.data.DataLoader(
        _Indices(len(concat)), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(5))]
    _check_batches(loader, concat, index_batches)
    assert len(list(torch.utils.data.DataLoader(ds + other, batch_size=64, collate_fn=gclib.data.collate))) == 6


def test_gclib_collate_hands_on_the_sliced_batch_unless_the_list_changed(fashion):
    test = fashion[2]
    samples = test.__getitems__([3, 5, 7])
    x, y = gclib.data.collate(samples)
    assert x is samples.batch[0] and y is samples.batch[1]  # no second stack
    samples[1] = test[9]  # changed after __getitems__ made it: collated from the items
    x, y = gclib.data.collate(samples)
    assert torch.equal(x, _expected(test, [3, 9, 7])[0]) and y.tolist() == [test[i][1] for i in (3, 9, 7)]
    samples.pop()
    assert len(gclib.data.collate(samples)[1]) == 2
    assert torch.equal(gclib.data.collate([test[4], test[2]])[0], _expected(test, [4, 2])[0])


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
