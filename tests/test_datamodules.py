"""Datamodules: every config composes; the torchvision-format loaders read files written in the real formats;
batch augmentation; clear errors for missing data and bad paths."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from sklearn.datasets import load_digits

from infoprune.datamodules import (
    CIFAR10DataModule,
    CIFAR10JPEGDataModule,
    CIFAR100DataModule,
    DataNotFoundError,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageNetDataModule,
    MNISTDataModule,
    SVHNDataModule,
    image_folder,
)
from infoprune.datamodules.augment import normalize, random_crop, random_hflip
from infoprune.datamodules.base import evaluation_permutation
from tests import data_writers

DATAMODULES = ["digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "cifar10_jpeg", "imagenet"]


# classes and image shape of every datamodule config, from the datasets' documentation
FACTS = {"digits": (10, (1, 8, 8)), "mnist": (10, (1, 28, 28)), "fashion_mnist": (10, (1, 28, 28)),
         "cifar10": (10, (3, 32, 32)), "cifar100": (100, (3, 32, 32)), "svhn": (10, (3, 32, 32)),
         "cifar10_jpeg": (10, (3, 32, 32)), "imagenet": (1000, (3, 224, 224))}


@pytest.mark.parametrize("name", DATAMODULES)
def test_every_datamodule_config_composes_with_its_classes_and_shape(make_cfg, name, tmp_path):
    cfg = make_cfg([f"datamodule={name}", f"datamodule.data_dir={tmp_path}"])
    dm = instantiate(cfg.datamodule)
    assert (dm.num_classes, dm.input_shape) == FACTS[name]


def in_file_order(values: torch.Tensor) -> torch.Tensor:
    """Evaluation-set ``values`` put back in the order of the files (undoing the seeded evaluation order)."""
    restored = torch.empty_like(values)
    restored[evaluation_permutation(len(values))] = values
    return restored


def check_splits(dm, n_train_total: int, n_test: int, channels: int, size: int, num_classes: int):
    """Split sizes, dtype and shape of a test batch; returns that batch's images and the labels of as many test
    images in file order."""
    dm.setup()
    n_val = round(n_train_total * dm.val_fraction)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (n_train_total - n_val, n_val, n_test)
    images, labels = next(iter(dm.test_dataloader()))
    assert images.dtype == torch.uint8 and images.shape[1:] == (channels, size, size)
    assert labels.max() < num_classes
    every = torch.cat([batch_labels for _, batch_labels in dm.test_dataloader()])
    return images, in_file_order(every)[: len(labels)]


def test_cifar10_reads_pickled_batches(tmp_path):
    data_writers.write_cifar10(tmp_path)
    _, labels = check_splits(CIFAR10DataModule(data_dir=tmp_path, batch_size=8, val_fraction=0.1), 100, 30, 3, 32, 10)
    assert labels.tolist() == [i % 10 for i in range(8)]


def test_cifar100_reads_fine_labels(tmp_path):
    data_writers.write_cifar100(tmp_path)
    dm = CIFAR100DataModule(data_dir=tmp_path, eval_batch_size=100, val_fraction=0.2)
    _, labels = check_splits(dm, 200, 100, 3, 32, 100)
    assert labels.tolist() == list(range(100))


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path):
    data_writers.write_svhn(tmp_path)
    _, labels = check_splits(SVHNDataModule(data_dir=tmp_path, eval_batch_size=20), 50, 20, 3, 32, 10)
    assert labels.tolist() == [i % 10 for i in range(1, 21)]


@pytest.mark.parametrize("cls,folder", [(MNISTDataModule, "mnist/MNIST"),
                                        (FashionMNISTDataModule, "fashion_mnist/FashionMNIST")])
def test_mnist_family_reads_idx_files(tmp_path, cls, folder):
    data_writers.write_mnist(tmp_path, folder=folder)
    _, labels = check_splits(cls(data_dir=tmp_path, eval_batch_size=40), 100, 40, 1, 28, 10)
    assert labels.tolist() == [i % 10 for i in range(40)]


def test_cifar10_jpeg_decodes_archive_once_into_cache(tmp_path, monkeypatch):
    data_writers.write_cifar10_jpeg_archive(tmp_path)
    dm = CIFAR10JPEGDataModule(data_dir=tmp_path, cache_dir=tmp_path / "cache", val_fraction=0.5)
    dm.prepare_data()
    cache = list((tmp_path / "cache").glob("*.pt"))
    assert len(cache) == 1
    written = cache[0].stat().st_mtime_ns

    def no_second_decode(*args, **kwargs):
        raise AssertionError("the archive was decoded a second time")

    monkeypatch.setattr(image_folder, "decode_image_folder", no_second_decode)
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))  # a re-created copy
    again = CIFAR10JPEGDataModule(data_dir=tmp_path, cache_dir=tmp_path / "cache", val_fraction=0.5)
    again.prepare_data(), again.setup()  # a second datamodule reads the cache: same bytes, same cache
    assert cache[0].stat().st_mtime_ns == written and len(again.train_set) == 30
    data_writers.write_cifar10_jpeg_archive(tmp_path / "other", train_per_class=7)  # other images: another cache
    assert CIFAR10JPEGDataModule(data_dir=tmp_path / "other", cache_dir=tmp_path / "cache").cache_file() != cache[0]
    images, labels = check_splits(dm, 60, 20, 3, 32, 10)
    assert labels.tolist() == sorted(labels.tolist())  # test split in ImageFolder order: class by class
    assert labels.bincount().tolist() == [2] * 10


def test_cifar10_jpeg_reads_extracted_tree_like_image_folder(tmp_path):
    data_writers.write_image_folder(tmp_path / "cifar10-jpeg", {"train": 3, "test": 2}, classes=10)
    dm = CIFAR10JPEGDataModule(data_dir=tmp_path, cache_dir=tmp_path / "cache", val_fraction=0.0)
    dm.setup()
    from torchvision.datasets import ImageFolder
    reference = ImageFolder(str(tmp_path / "cifar10-jpeg" / "test"))
    assert in_file_order(dm.test_set.labels).tolist() == reference.targets
    first = torch.from_numpy(__import__("numpy").asarray(reference[0][0])).permute(2, 0, 1)
    assert torch.equal(in_file_order(dm.test_set.images)[0], first)


def test_evaluation_order_is_a_fixed_mix_of_classes_even_when_files_are_sorted_by_class(tmp_path):
    data_writers.write_cifar10_jpeg_archive(tmp_path, train_per_class=2, test_per_class=10)  # 100 test images
    data_writers.write_image_folder(tmp_path / "imagenet", {"train": 4, "val": 10}, classes=3, size=40)
    modules = {"cifar10_jpeg": lambda: CIFAR10JPEGDataModule(data_dir=tmp_path, cache_dir=tmp_path / "cache",
                                                             eval_batch_size=20),
               "imagenet": lambda: ImageNetDataModule(data_dir=tmp_path, num_classes=3, num_workers=0,
                                                      image_size=32, eval_batch_size=9)}
    for name, make in modules.items():
        first, second = make(), make()
        first.setup(), second.setup()
        batch = next(iter(first.test_dataloader()))[1]
        # files are sorted by class, so in file order the first batch would hold one or two classes
        assert len(batch.unique()) >= (6 if name == "cifar10_jpeg" else 3), (name, batch.tolist())
        assert torch.equal(batch, next(iter(second.test_dataloader()))[1])  # the same order in every run
        every = torch.cat([labels for _, labels in first.test_dataloader()])
        assert in_file_order(every).tolist() == sorted(every.tolist())  # nothing lost


def test_imagenet_reads_image_folders(tmp_path):
    data_writers.write_image_folder(tmp_path / "imagenet", {"train": 10, "val": 2}, classes=3, size=64)
    dm = ImageNetDataModule(data_dir=tmp_path, num_classes=3, num_workers=0, val_fraction=0.1, eval_batch_size=6,
                            image_size=56)
    images, labels = check_splits(dm, 30, 6, 3, 56, 3)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]


def rows(dataset) -> Counter:
    """Multiset of (image bytes, label) of a dataset."""
    return Counter((image.numpy().tobytes(), int(label)) for image, label in zip(dataset.images, dataset.labels))


def test_digits_split_is_fixed_and_a_partition_of_the_images():
    a, b = DigitsDataModule(split_seed=0), DigitsDataModule(split_seed=1)
    a.setup(), b.setup()
    digits = load_digits()
    everything = Counter((np.round(image * 255.0 / 16.0).astype(np.uint8).tobytes(), int(label))
                         for image, label in zip(digits.images, digits.target))
    for dm in (a, b):  # train + val + test is the dataset: no image twice, none lost
        assert rows(dm.train_set) + rows(dm.val_set) + rows(dm.test_set) == everything
    assert len(a.train_set) + len(a.val_set) + len(a.test_set) == 1797
    assert torch.equal(a.test_set.images, b.test_set.images)  # test set independent of the split seed
    assert not torch.equal(a.val_set.labels, b.val_set.labels)


def test_augmented_calibration_batches_are_seeded_and_leave_the_global_random_state_alone():
    dm = DigitsDataModule()  # random crops of 1 pixel in training
    clean = list(dm.calibration_batches(200, 64, 3, torch.device("cpu"))())
    state = torch.get_rng_state()
    augmented = list(dm.calibration_batches(200, 64, 3, torch.device("cpu"), augment=True)())
    assert torch.equal(torch.get_rng_state(), state)
    again = list(dm.calibration_batches(200, 64, 3, torch.device("cpu"), augment=True)())
    assert all(torch.equal(a[0], b[0]) for a, b in zip(augmented, again))  # the same crops on every call
    assert all(torch.equal(a[1], c[1]) for a, c in zip(augmented, clean))  # the same images, in the same order
    assert not torch.equal(torch.cat([a[0] for a in augmented]), torch.cat([c[0] for c in clean]))


def test_random_crop_takes_windows_of_the_padded_image():
    torch.manual_seed(0)
    images = torch.randint(0, 255, (16, 3, 8, 8), dtype=torch.uint8)
    out = random_crop(images, padding=2)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for img, crop in zip(padded, out):
        windows = [img[:, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(crop, w) for w in windows)
    assert not all(torch.equal(a, b) for a, b in zip(out, images))
    assert torch.equal(random_crop(images, 0), images)


def test_hflip_and_normalize():
    torch.manual_seed(0)
    images = torch.randint(0, 255, (64, 1, 4, 4), dtype=torch.uint8)
    flipped = random_hflip(images)
    same = [torch.equal(a, b) for a, b in zip(flipped, images)]
    assert all(s or torch.equal(f, i.flip(-1)) for s, f, i in zip(same, flipped, images))
    assert 10 < sum(same) < 54
    x = normalize(images, torch.tensor([0.5]), torch.tensor([0.25]))
    assert torch.allclose(x, (images.double() / 255 - 0.5).float() / 0.25, atol=1e-6)


def test_missing_data_names_the_files_and_where(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        MNISTDataModule(data_dir=tmp_path).prepare_data()
    assert str(tmp_path / "mnist" / "MNIST" / "raw" / "train-images-idx3-ubyte") in str(err.value)
    assert "DATA_DIR" in str(err.value) and "download=true" in str(err.value)
    with pytest.raises(DataNotFoundError, match="cifar10-jpeg.tar.gz"):
        CIFAR10JPEGDataModule(data_dir=tmp_path).prepare_data()


def test_data_dir_that_is_a_file_is_rejected(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        CIFAR10DataModule(data_dir=path)


@pytest.mark.skipif(not (Path(__file__).parents[2] / "shared/datasets/mnist").exists(), reason="no shared MNIST")
def test_real_mnist_matches_the_documented_facts():
    dm = MNISTDataModule(data_dir=Path(__file__).parents[2] / "shared/datasets", val_fraction=0.0)
    dm.setup()
    assert len(dm.train_set) == 60000 and len(dm.test_set) == 10000
    assert in_file_order(dm.test_set.labels)[0] == 7  # the first image of the t10k file
    assert abs(dm.train_set.images.float().mean().item() / 255 - 0.1307) < 1e-3


def test_resize_scales_every_batch_on_the_device_and_sets_the_input_shape():
    from infoprune.datamodules import DigitsDataModule

    dm = DigitsDataModule(resize=16)
    assert dm.input_shape == (1, 16, 16)
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    assert dm.transform_batch(images, train=False).shape == (3, 1, 16, 16)
    assert DigitsDataModule().transform_batch(images, train=False).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="resize"):
        DigitsDataModule(resize=0)
