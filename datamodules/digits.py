"""scikit-learn's 8x8 handwritten digits: 1,797 images, 10 classes, shipped inside scikit-learn (no download)."""
from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from infoprune.datamodules.base import InMemoryImageDataModule

#: The test split is carved from the 1,797 images with this fixed seed, so every run tests on the same images.
DIGITS_TEST_SEED = 20161106


class DigitsDataModule(InMemoryImageDataModule):
    """Digits as 1 x 8 x 8 uint8 images (scikit-learn's 0..16 values scaled to 0..255).

    There is no official test split: ``test_fraction`` of the images (seeded by ``DIGITS_TEST_SEED``) are held
    out for testing, the rest are split into train and validation as in every datamodule.
    """

    name = "digits"
    num_classes, in_channels, image_size = 10, 1, 8
    mean, std = (0.3060,), (0.3793,)

    def __init__(self, test_fraction: float = 0.2, crop_padding: int = 1, flip: bool = False, **kwargs) -> None:
        super().__init__(crop_padding=crop_padding, flip=flip, **kwargs)
        self.test_fraction = test_fraction

    def check_files(self) -> None:
        """Nothing to check: the data ships with scikit-learn."""

    def load(self, train: bool):
        digits = load_digits()
        images = torch.from_numpy(digits.images).mul(255.0 / 16.0).round().to(torch.uint8).unsqueeze(1)
        labels = torch.from_numpy(digits.target).long()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(DIGITS_TEST_SEED))
        n_test = int(round(len(labels) * self.test_fraction))
        index = order[n_test:] if train else order[:n_test]
        return images[index], labels[index]
