"""One LightningDataModule per dataset family, sharing one in-memory fast path (``datamodules.base``)."""
from infoprune.datamodules.base import DataCorruptError, DataNotFoundError, ImageDataModule, InMemoryImageDataModule
from infoprune.datamodules.digits import DigitsDataModule
from infoprune.datamodules.image_folder import CIFAR10JPEGDataModule, ImageNetDataModule
from infoprune.datamodules.torchvision_sets import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    SVHNDataModule,
)

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule", "CIFAR10JPEGDataModule", "DataCorruptError", "DataNotFoundError",
           "DigitsDataModule", "FashionMNISTDataModule", "ImageDataModule", "ImageNetDataModule",
           "InMemoryImageDataModule", "MNISTDataModule", "SVHNDataModule"]
