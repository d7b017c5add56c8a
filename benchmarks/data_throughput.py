"""Is training bottlenecked by data? Images/s of the in-memory datamodule alone (batch gather + on-device crop, flip,
normalisation) vs the SimpleNet training step, and the share of step time spent waiting for data.

    DATA_DIR=../shared/datasets python -m benchmarks.data_throughput [--width 0.25] [--batches 30]

Target: data share under 5%."""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from benchmarks.common import cifar_datamodule, print_json
from infoprune.models import SimpleNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    dm = cifar_datamodule(args.batch_size)
    net = SimpleNet(num_classes=10, width=args.width)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loader = dm.train_dataloader()

    def data_batches():
        for i, (images, labels) in enumerate(loader):
            if i == args.batches:
                return
            yield dm.transform_batch(images, train=True), labels

    start = time.perf_counter()
    batches = list(data_batches())
    data_time = time.perf_counter() - start

    net.train()
    step_time = 0.0
    for i, (x, y) in enumerate(batches):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        if i > 0:  # first step warms up allocators
            step_time += time.perf_counter() - start
    step_time *= len(batches) / (len(batches) - 1)

    images = len(batches) * args.batch_size
    figures = {
        "dataset": dm.name, "width": args.width, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "data_images_per_s": round(images / data_time, 1),
        "train_images_per_s": round(images / step_time, 1),
        "data_wait_share": round(data_time / (data_time + step_time), 4),
    }
    print(f"{'':28s}{'images/s':>12s}")
    print(f"{'datamodule alone':28s}{figures['data_images_per_s']:>12,.0f}")
    print(f"{'SimpleNet training step':28s}{figures['train_images_per_s']:>12,.0f}")
    print(f"share of step time waiting for data: {100 * figures['data_wait_share']:.2f}% ({dm.name}, width "
          f"{args.width}, batch {args.batch_size}, {torch.get_num_threads()} threads)")
    print_json(figures)


if __name__ == "__main__":
    main()
