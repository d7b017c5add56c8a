"""Datamodules over torchvision's own loaders: MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100, SVHN.

Each reads its files in the original on-disk format from ``data_dir/<subdir>`` and downloads only when
``download=true`` (which needs a network)."""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import torch
from torchvision import datasets

from infoprune.datamodules.base import DataCorruptError, InMemoryImageDataModule, missing_data_error


def _files_present(root: Path, files: list[str]) -> bool:
    return all((root / f).is_file() for f in files)


class _PresentFilesCIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR-10 reader, accepting any copy of the pickled batches (files checked for presence, not
    md5, so re-packed or test-generated copies load)."""

    def _check_integrity(self) -> bool:
        return _files_present(Path(self.root) / self.base_folder,
                              [f for f, _ in self.train_list + self.test_list] + [self.meta["filename"]])

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class _PresentFilesCIFAR100(_PresentFilesCIFAR10, datasets.CIFAR100):
    """torchvision's CIFAR-100 reader, accepting any copy of the pickled files."""


class _PresentFilesSVHN(datasets.SVHN):
    """torchvision's SVHN reader (scipy ``.mat`` files), accepting any copy of the files."""

    def _check_integrity(self) -> bool:
        return (Path(self.root) / self.filename).is_file()


def check_idx_file(path: Path) -> None:
    """An uncompressed IDX file of unsigned bytes (MNIST's format) is ``4 + 4 d + n_1 ... n_d`` bytes long: a
    4-byte magic number (0, 0, type 0x08, ``d``), ``d`` big-endian dimensions, then the data; a
    ``DataCorruptError`` naming the file otherwise."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(4)
        dims = handle.read(4 * header[3]) if len(header) == 4 else b""
    if len(header) < 4 or header[:3] != bytes([0, 0, 8]) or len(dims) < 4 * header[3]:
        raise DataCorruptError(f"{path} is not an IDX file of unsigned bytes ({size} bytes): replace it with the "
                               f"dataset's original file")
    shape = [int.from_bytes(dims[i:i + 4], "big") for i in range(0, len(dims), 4)]
    expected = 4 + len(dims) + math.prod(shape)
    if size != expected:
        raise DataCorruptError(f"{path} has {size} bytes where its header ({' x '.join(map(str, shape))}) needs "
                               f"{expected}: the file is truncated; replace it with the dataset's original file")


class TorchvisionDataModule(InMemoryImageDataModule):
    """Loads a torchvision dataset once into uint8 tensors. Subclasses name the reader, its folder and files."""

    subdir: str = ""
    expected: list[str] = []

    @property
    def root(self) -> Path:
        return self.data_dir / self.subdir

    def check_files(self) -> None:
        if _files_present(self.root, self.expected):
            return
        if self.download:
            self.read(train=True, download=True)
            self.read(train=False, download=True)
            return
        raise missing_data_error(self.name, self.root, self.expected,
                                 "set datamodule.download=true on a machine with internet access")

    def read(self, train: bool, download: bool = False):
        """The torchvision dataset object of the split."""
        raise NotImplementedError

    def load(self, train: bool):
        ds = self.read(train)
        return self.to_tensors(ds)

    @staticmethod
    def to_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 N x C x H x W images, int64 labels) of a torchvision dataset."""
        raise NotImplementedError


class MNISTDataModule(TorchvisionDataModule):
    """MNIST: 60,000 train / 10,000 test 28x28 grayscale digits, read from ``data_dir/mnist/MNIST/raw``."""

    name, subdir = "MNIST", "mnist"
    reader = datasets.MNIST
    num_classes, in_channels, image_size = 10, 1, 28
    mean, std = (0.1307,), (0.3081,)
    expected = [f"MNIST/raw/{f}" for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]

    def __init__(self, crop_padding: int = 2, flip: bool = False, **kwargs) -> None:
        super().__init__(crop_padding=crop_padding, flip=flip, **kwargs)

    def check_files(self) -> None:
        """The four IDX files are present and each is as long as its header says."""
        super().check_files()
        for name in self.expected:
            check_idx_file(self.root / name)

    def read(self, train: bool, download: bool = False):
        return self.reader(str(self.root), train=train, download=download)

    @staticmethod
    def to_tensors(ds):
        return ds.data.unsqueeze(1).contiguous(), ds.targets.long()


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (same format as MNIST), read from ``data_dir/fashion_mnist/FashionMNIST/raw``."""

    name, subdir = "Fashion-MNIST", "fashion_mnist"
    reader = datasets.FashionMNIST
    mean, std = (0.2860,), (0.3530,)
    expected = [f.replace("MNIST/raw", "FashionMNIST/raw") for f in MNISTDataModule.expected]


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10 from the pickled python batches in ``data_dir/cifar10/cifar-10-batches-py``."""

    name, subdir = "CIFAR-10", "cifar10"
    reader = _PresentFilesCIFAR10
    num_classes = 10
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    expected = [f"cifar-10-batches-py/{f}" for f in
                [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]]

    def read(self, train: bool, download: bool = False):
        return self.reader(str(self.root), train=train, download=download)

    @staticmethod
    def to_tensors(ds):
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets).long()


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (fine labels) from ``data_dir/cifar100/cifar-100-python``."""

    name, subdir = "CIFAR-100", "cifar100"
    reader = _PresentFilesCIFAR100
    num_classes = 100
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    expected = [f"cifar-100-python/{f}" for f in ("train", "test", "meta")]


class SVHNDataModule(TorchvisionDataModule):
    """SVHN (cropped digits, 73,257 train / 26,032 test) from ``data_dir/svhn/{train,test}_32x32.mat``."""

    name, subdir = "SVHN", "svhn"
    num_classes = 10
    mean, std = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
    expected = ["train_32x32.mat", "test_32x32.mat"]

    def __init__(self, flip: bool = False, **kwargs) -> None:
        super().__init__(flip=flip, **kwargs)

    def read(self, train: bool, download: bool = False):
        return _PresentFilesSVHN(str(self.root), split="train" if train else "test", download=download)

    @staticmethod
    def to_tensors(ds):
        return torch.from_numpy(ds.data).contiguous(), torch.from_numpy(ds.labels).long()
