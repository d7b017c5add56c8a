"""Data-driven channel pruning added to a plain Lightning training script: torchvision's ResNet-18 on a
torchvision dataset (FakeData here; any image-classification dataset works), pruned by mutual information with
the AGP schedule and physically slimmed at the end of fit.

    python examples/prune_resnet18.py [--devices 2] [--epochs 3] [--slim-epoch 2] [--out result.pt]
"""
import argparse
import json

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader

from infoprune.callbacks.pruning import ChannelPruning
from infoprune.pruning.metrics import MutualInformation


class ResNetClassifier(pl.LightningModule):
    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.model = torchvision.models.resnet18(num_classes=10)
        self.lr = lr

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class FakeImages(pl.LightningDataModule):
    def __init__(self, size: int = 256, batch_size: int = 32):
        super().__init__()
        self.size, self.batch_size = size, batch_size

    def train_dataloader(self):
        data = torchvision.datasets.FakeData(self.size, (3, 32, 32), 10, torchvision.transforms.ToTensor(),
                                             random_offset=0)
        return DataLoader(data, batch_size=self.batch_size, shuffle=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--slim-epoch", type=int, default=None, help="slim mid-fit at this epoch (default: at the end)")
    parser.add_argument("--schedule", default="agp", choices=["oneshot", "equal", "agp"])
    parser.add_argument("--out", default=None, help="save the slimmed network here")
    parser.add_argument("--report", default=None, help="write scores, widths and steps here (JSON)")
    args = parser.parse_args()
    pl.seed_everything(0)
    pruning = ChannelPruning(MutualInformation(), amount=0.5, scope="global", resource="flops",
                             schedule=args.schedule, start_epoch=0, end_epoch=0 if args.schedule == "oneshot" else 1,
                             steps=2, slim_epoch=args.slim_epoch, network="model",
                             stats={"num_images": 128, "batch_size": 32, "bins": 8}, save_path=args.out)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=args.devices, callbacks=[pruning],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         strategy="ddp" if args.devices > 1 else "auto")
    module = ResNetClassifier()
    trainer.fit(module, datamodule=FakeImages())
    if trainer.is_global_zero:
        print("widths:", pruning.structure)
        if args.report:
            scores = {name: s.tolist() for name, s in pruning.scores.items()}
            optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
            with open(args.report, "w") as f:
                json.dump({"structure": pruning.structure, "scores": scores, "global_step": trainer.global_step,
                           "optimizer_holds_the_parameters": optimized == {id(p) for p in module.parameters()}}, f)


if __name__ == "__main__":
    main()
