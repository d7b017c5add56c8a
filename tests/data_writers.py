"""Write tiny datasets in the exact on-disk formats torchvision reads (pickled CIFAR batches, SVHN .mat, MNIST idx,
ImageFolder JPEG trees and their tar.gz), so the real loaders are exercised without downloads."""
from __future__ import annotations

import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image


def _images(n: int, h: int, w: int, c: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def write_cifar10(root: Path, per_batch: int = 20, test: int = 30) -> None:
    """``root/cifar10/cifar-10-batches-py``: five data batches, a test batch and ``batches.meta``; label i % 10."""
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, n, seed in [(f"data_batch_{i}", per_batch, i) for i in range(1, 6)] + [("test_batch", test, 99)]:
        data = _images(n, 32, 32, 3, seed).transpose(0, 3, 1, 2).reshape(n, -1)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [i % 10 for i in range(n)]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def write_cifar100(root: Path, train: int = 200, test: int = 100) -> None:
    """``root/cifar100/cifar-100-python``: ``train``, ``test``, ``meta`` with fine labels i % 100."""
    folder = root / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", train), ("test", test)):
        data = _images(n, 32, 32, 3, n).transpose(0, 3, 1, 2).reshape(n, -1)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "fine_labels": [i % 100 for i in range(n)],
                         "coarse_labels": [i % 20 for i in range(n)]}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)


def write_svhn(root: Path, train: int = 50, test: int = 20) -> None:
    """``root/svhn/{train,test}_32x32.mat``: X is 32 x 32 x 3 x N, y is N x 1 in 1..10 (10 stands for digit 0)."""
    folder = root / "svhn"
    folder.mkdir(parents=True)
    for name, n in (("train", train), ("test", test)):
        x = _images(n, 32, 32, 3, n).transpose(1, 2, 3, 0)
        y = np.array([[i % 10 + 1] for i in range(n)], dtype=np.uint8)
        scipy.io.savemat(folder / f"{name}_32x32.mat", {"X": x, "y": y})


def write_mnist(root: Path, train: int = 100, test: int = 40, folder: str = "mnist/MNIST") -> None:
    """``root/<folder>/raw``: the four uncompressed idx files; label i % 10."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", train), ("t10k", test)):
        images = _images(n, 28, 28, 1, n)[..., 0]
        with open(raw / f"{prefix}-images-idx3-ubyte", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        with open(raw / f"{prefix}-labels-idx1-ubyte", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n)))


def write_image_folder(root: Path, splits: dict[str, int], classes: int = 3, size: int = 32) -> None:
    """``root/<split>/class<k>/NNNN.jpg`` with ``splits[split]`` images per class."""
    for split, per_class in splits.items():
        for k in range(classes):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True)
            for i, img in enumerate(_images(per_class, size, size, 3, 7 * k + len(split))):
                Image.fromarray(img).save(folder / f"{i:04d}.jpg", quality=90)


def write_cifar10_jpeg_archive(root: Path, train_per_class: int = 6, test_per_class: int = 2) -> Path:
    """``root/cifar10-jpeg.tar.gz`` holding ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (10 classes)."""
    tree = root / "tree"
    write_image_folder(tree, {"train": train_per_class, "test": test_per_class}, classes=10)
    archive = root / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(tree / split, arcname=split)
    return archive
