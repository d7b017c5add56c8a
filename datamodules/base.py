"""Shared machinery of all datamodules: data-directory checks, the in-memory uint8 fast path, normalisation and
batch augmentation on the model's device."""
from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from infoprune.datamodules.augment import normalize, random_crop, random_hflip

#: Seed of the fixed order of every validation and test set (see ``ImageDataModule.setup``).
EVALUATION_SEED = 0


class DataNotFoundError(FileNotFoundError):
    """The dataset's files are not where the datamodule looks; the message says which files and where."""


class DataCorruptError(ValueError):
    """A dataset file is there but cannot be read (truncated, not an image); the message names the file."""


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir``, or ``$DATA_DIR``, or ``./data``; an existing path that is not a directory is an error."""
    path = Path(data_dir or os.environ.get("DATA_DIR") or "data").expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"data_dir {str(path)!r} is a file; it must be the directory that holds the datasets")
    return path


def missing_data_error(name: str, root: Path, expected: Sequence[str], how: str = "") -> DataNotFoundError:
    """The error raised when ``name``'s files are absent: lists them, where they are looked for, and the remedies."""
    files = "\n".join(f"  {root / f}" for f in expected)
    return DataNotFoundError(
        f"{name} not found. Expected these files:\n{files}\n"
        f"Put them there, point DATA_DIR (or datamodule.data_dir=...) at the directory that holds them"
        f"{', or ' + how if how else ''}."
    )


class TensorBatchDataset(Dataset):
    """Images (uint8, N x C x H x W) and labels held in memory; ``__getitems__`` gathers a whole batch at once."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError("expected uint8 images of shape N x C x H x W and N labels")
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]):
        index = torch.as_tensor(indices)
        return self.images[index], self.labels[index]


def _batch_is_collated(batch):
    """Collate function for ``TensorBatchDataset``: the batch is already stacked by ``__getitems__``."""
    return batch


class ImageDataModule(pl.LightningDataModule):
    """Base of every datamodule: normalises uint8 batches after their transfer to the model's device and, in
    training, augments them there (random crop with ``crop_padding``, horizontal flip when ``flip``).

    Subclasses set the class attributes and implement ``check_files`` and ``_datasets``.
    """

    name: str = "dataset"
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.5,)

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        augment: bool = True,
        crop_padding: int = 4,
        flip: bool = True,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        download: bool = False,
        resize: int | None = None,
    ) -> None:
        super().__init__()
        if resize is not None and resize < 1:
            raise ValueError(f"resize must be a positive image size, got {resize}")
        self.resize = resize
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.data_dir = resolve_data_dir(data_dir)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.download = num_workers, download
        self.augment, self.crop_padding, self.flip = augment, crop_padding, flip
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self._mean, self._std = torch.tensor(self.mean), torch.tensor(self.std)
        self.train_set = self.val_set = self.test_set = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        size = self.resize or self.image_size
        return (self.in_channels, size, size)

    @property
    def preprocessing(self) -> dict:
        """What ``transform_batch`` does to stored uint8 pixels outside training augmentation:
        ``(pixels * scale - mean) / std`` per channel (recorded in checkpoints for export)."""
        return {"scale": 1.0 / 255.0, "mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std]}

    def check_files(self) -> None:
        """Raise ``DataNotFoundError`` (or download, when ``download`` is set) unless the files are present."""
        raise NotImplementedError

    def _datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """The train, validation and test datasets, yielding uint8 images."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        self.check_files()

    def setup(self, stage: str | None = None) -> None:
        """Load the splits once; validation and test sets are put in a fixed seeded order (``EVALUATION_SEED``,
        the same in every run whatever the split seed), so that their first batches (``limit_val_batches``,
        ``limit_test_batches``) hold every class in proportion even where the files are sorted by class."""
        if self.train_set is None:
            self.check_files()
            train, val, test = self._datasets()
            self.train_set = train
            self.val_set, self.test_set = evaluation_order(val), evaluation_order(test)

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        """Shuffled, last-partial-batch-dropped batches for training; in-order batches for evaluation. In-memory
        datasets gather each batch with one indexing op (``__getitems__``) and skip collation."""
        in_memory = isinstance(dataset, TensorBatchDataset)
        return DataLoader(dataset, batch_size=self.batch_size if train else self.eval_batch_size, shuffle=train,
                          drop_last=train, num_workers=self.num_workers,
                          collate_fn=_batch_is_collated if in_memory else None,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

    def calibration_dataset(self) -> Dataset:
        """Un-augmented images that statistics are collected on (the training split)."""
        return self.train_set

    def calibration_batches(self, num_images: int, batch_size: int, seed: int, device: torch.device,
                            rank: int = 0, world_size: int = 1, augment: bool = False):
        """A callable yielding normalised ``(images, labels)`` batches on ``device`` for channel statistics:
        ``num_images`` images drawn (seeded) from ``calibration_dataset()``, cut into batches of ``batch_size``,
        batch ``i`` going to process ``i % world_size``. No image is repeated or padded, and every batch is the
        same as in a single-process run, so per-image activations do not depend on the number of processes.
        ``augment``: the training augmentation applied to them, drawn from a generator seeded with ``seed`` (the
        same crops and flips on every call and process; the global random state is left as it was)."""
        if self.train_set is None:
            self.setup("fit")
        dataset = self.calibration_dataset()
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_images]
        mine = [b.tolist() for b in order.split(batch_size)][rank::world_size]
        collate = _batch_is_collated if isinstance(dataset, TensorBatchDataset) else None
        loader = DataLoader(dataset, batch_sampler=mine, collate_fn=collate, num_workers=self.num_workers)

        def batches():
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices) if augment else nullcontext():
                if augment:
                    torch.manual_seed(seed)
                for images, labels in loader:
                    yield self.transform_batch(images.to(device), train=augment), labels.to(device)

        return batches

    def transform_batch(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 batch -> normalised float batch, augmented when ``train`` and ``augment``, and bilinearly resized to
        ``resize`` x ``resize`` when set (a network built for larger inputs, as a ViT-B/16 for 224, on small
        images)."""
        if train and self.augment:
            images = random_crop(images, self.crop_padding)
            if self.flip:
                images = random_hflip(images)
        images = normalize(images, self._mean, self._std)
        if self.resize is not None and images.shape[-2:] != (self.resize, self.resize):
            images = F.interpolate(images, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return images

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Normalise (and in training augment) ``(uint8 images, labels)`` batches; anything else (the model
        summary's example input) passes through unchanged."""
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and batch[0].dtype == torch.uint8):
            return batch
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.transform_batch(images, training), labels


def evaluation_permutation(size: int) -> torch.Tensor:
    """The fixed order of an evaluation set of ``size`` items: position ``i`` holds item ``order[i]``."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(EVALUATION_SEED))


def evaluation_order(dataset: Dataset) -> Dataset:
    """``dataset`` reordered by :func:`evaluation_permutation` (in-memory tensors are gathered once)."""
    order = evaluation_permutation(len(dataset))
    if isinstance(dataset, TensorBatchDataset):
        return TensorBatchDataset(dataset.images[order], dataset.labels[order])
    return Subset(dataset, order.tolist())


def split_train_val(images: torch.Tensor, labels: torch.Tensor, val_fraction: float, seed: int):
    """A seeded random split of the training tensors into (train, val) ``TensorBatchDataset``s."""
    n_val = int(round(len(labels) * val_fraction))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:n_val], order[n_val:]
    return (TensorBatchDataset(images[train_idx], labels[train_idx]),
            TensorBatchDataset(images[val_idx], labels[val_idx]))


class InMemoryImageDataModule(ImageDataModule):
    """A datamodule whose decoded images fit in memory as one uint8 tensor; subclasses implement ``load`` ."""

    def load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (N x C x H x W) and int labels of the train or test split."""
        raise NotImplementedError

    def _datasets(self):
        train, val = split_train_val(*self.load(train=True), self.val_fraction, self.split_seed)
        return train, val, TensorBatchDataset(*self.load(train=False))
