"""Datamodules over ImageFolder trees (``<split>/<class>/<image>``): CIFAR-10-JPEG, decoded once into an in-memory
uint8 cache, and ImageNet, streamed through PIL transforms."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets, transforms
from tqdm import tqdm

from infoprune.datamodules.base import (
    DataCorruptError,
    ImageDataModule,
    InMemoryImageDataModule,
    missing_data_error,
)
from infoprune.io import atomic_save

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def default_cache_dir() -> Path:
    """``$INFOPRUNE_CACHE``, else ``~/.cache/infoprune``: where decoded datasets are cached."""
    return Path(os.environ.get("INFOPRUNE_CACHE") or Path.home() / ".cache" / "infoprune")


def decode_rgb(source: str | io.BytesIO, where: str) -> Image.Image:
    """The RGB image in ``source`` (a file path or the bytes of one), decoded at once, or a ``DataCorruptError``
    naming ``where`` it came from (PIL's own errors for a truncated file do not name it)."""
    try:
        with Image.open(source) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:  # PIL's errors for truncated and unknown data
        raise DataCorruptError(f"{where} is not a readable image ({type(error).__name__}: {error}); replace the "
                               f"file") from None


def load_image(path: str) -> Image.Image:
    """ImageFolder's loader: :func:`decode_rgb` of the file at ``path``."""
    return decode_rgb(path, path)


def _iter_image_folder(source: Path):
    """Yield ``(split, class, file name, bytes)`` for every image of an ImageFolder tree or a tar(.gz) of one."""
    if source.is_dir():
        for path in sorted(source.glob("*/*/*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                yield path.parts[-3], path.parts[-2], path.name, path.read_bytes()
        return
    with tarfile.open(source) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) >= 3 and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                yield parts[-3], parts[-2], parts[-1], tar.extractfile(member).read()


def decode_image_folder(source: Path, splits=("train", "test")) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Decode a tree (or tar) of same-size images into ``{split: (uint8 N x C x H x W, labels)}``; class indices
    follow ImageFolder's convention (sorted class-folder names), files are taken in sorted order."""
    found: dict[str, list[tuple[str, str, np.ndarray]]] = {s: [] for s in splits}
    for split, cls, name, data in tqdm(_iter_image_folder(source), desc=f"decoding {source.name}", unit="img"):
        if split in found:
            pixels = np.asarray(decode_rgb(io.BytesIO(data), f"{source}/{split}/{cls}/{name}"), dtype=np.uint8)
            found[split].append((cls, name, pixels))
    classes = sorted({cls for items in found.values() for cls, _, _ in items})
    out = {}
    for split, items in found.items():
        items.sort(key=lambda t: (t[0], t[1]))
        images = torch.from_numpy(np.stack([img for _, _, img in items])).permute(0, 3, 1, 2).contiguous()
        labels = torch.tensor([classes.index(cls) for cls, _, _ in items], dtype=torch.long)
        out[split] = (images, labels)
    return out


class CIFAR10JPEGDataModule(InMemoryImageDataModule):
    """The JPEG copy of CIFAR-10 (``data_dir/cifar10-jpeg.tar.gz`` or the extracted ``data_dir/cifar10-jpeg/``).

    The 60,000 images are decoded once and cached as a uint8 tensor file in ``cache_dir`` (keyed by the source's
    size and modification time); later runs load the cache in about a second.
    """

    name = "CIFAR-10-JPEG"
    num_classes = 10
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    archive, folder = "cifar10-jpeg.tar.gz", "cifar10-jpeg"

    def __init__(self, cache_dir: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()

    def source(self) -> Path | None:
        for candidate in (self.data_dir / self.folder, self.data_dir / self.archive):
            if candidate.exists():
                return candidate
        return None

    def check_files(self) -> None:
        if self.source() is None:
            raise missing_data_error(self.name, self.data_dir, [self.archive, f"{self.folder}/{{train,test}}/<class>/*.jpg"])

    def cache_file(self) -> Path:
        """``<cache_dir>/<folder>-<key>.pt``: for an archive the key is its content's SHA-1 (a copy of the same
        archive, e.g. a data directory re-created with new timestamps, reuses the decoded images); for an
        extracted folder, its size and modification time."""
        source = self.source()
        if source.is_file():
            if getattr(self, "_archive_digest", (None,))[0] != source:
                self._archive_digest = (source, file_sha1(source))
            key = self._archive_digest[1]
        else:
            stat = source.stat()
            key = f"{stat.st_size}-{stat.st_mtime_ns}"
        return self.cache_dir / f"{self.folder}-{key}.pt"

    def prepare_data(self) -> None:
        self.check_files()
        cache = self.cache_file()
        if not cache.exists():
            atomic_save(decode_image_folder(self.source()), cache)

    def load(self, train: bool):
        if not self.cache_file().exists():
            self.prepare_data()
        return torch.load(self.cache_file())["train" if train else "test"]


def file_sha1(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-1 of a file's bytes."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


class ImageNetDataModule(ImageDataModule):
    """ImageNet (ILSVRC-2012) as ImageFolder trees ``data_dir/imagenet/train`` and ``data_dir/imagenet/val``
    (one folder per class). Images stream through PIL transforms in ``num_workers`` processes (random resized crop
    and flip for training; resize and center crop for evaluation); normalisation runs on the device. The
    validation split used during training is carved from train; ``val/`` is the test set, as usual."""

    name = "ImageNet"
    num_classes, image_size = 1000, 224
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    subdir = "imagenet"

    def __init__(self, num_workers: int = 8, val_fraction: float = 0.01, num_classes: int = 1000,
                 image_size: int = 224, **kwargs) -> None:
        super().__init__(num_workers=num_workers, val_fraction=val_fraction, augment=False, **kwargs)
        self.num_classes, self.image_size = num_classes, image_size

    def check_files(self) -> None:
        root = self.data_dir / self.subdir
        if not ((root / "train").is_dir() and (root / "val").is_dir()):
            raise missing_data_error(self.name, root, ["train/<wnid>/*.JPEG", "val/<wnid>/*.JPEG"])

    def calibration_dataset(self):
        """The validation split (carved from train, evaluation transforms): un-augmented training images."""
        return self.val_set

    def _datasets(self):
        root = self.data_dir / self.subdir
        size = self.image_size
        train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                       transforms.PILToTensor()])
        eval_tf = transforms.Compose([transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size),
                                      transforms.PILToTensor()])
        train_full = datasets.ImageFolder(str(root / "train"), transform=train_tf, loader=load_image)
        if len(train_full.classes) != self.num_classes:
            raise ValueError(f"{root / 'train'} has {len(train_full.classes)} classes, config says {self.num_classes}")
        eval_train = datasets.ImageFolder(str(root / "train"), transform=eval_tf, loader=load_image)
        order = torch.randperm(len(train_full), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        n_val = int(round(len(order) * self.val_fraction))
        return (torch.utils.data.Subset(train_full, order[n_val:]), torch.utils.data.Subset(eval_train, order[:n_val]),
                datasets.ImageFolder(str(root / "val"), transform=eval_tf, loader=load_image))
