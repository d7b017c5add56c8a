"""Cost of scoring channels: all the statistics and scores a criterion needs over N calibration images, divided by
one plain inference pass over the same N images (same batches, eval mode, same run), for SimpleNet and LeNet-5;
and the peak memory the histogram statistics hold at N and at 8N images (every live tensor, sampled at each batch).

    python -m benchmarks.stats_overhead [--images 1280] [--metric wmi] [--simplenet-width 0.25] [--memory-images 0]

The histogram criteria (mi, wmi, entropy) run the network once and replay the pooled maps they kept for the later
stages while a process sees at most ``pruning.stats.buffer_images`` images; past that they run it once per stage
with state independent of N. Targets: ``scoring_over_one_inference_pass`` <= 1.15 and
``memory_growth`` (peak held memory at 8N over that at N) < 2. Last line: JSON with both, per network."""
from __future__ import annotations

import argparse
import gc
import warnings

import torch

from benchmarks.common import print_json, timed
from infoprune.callbacks.channel_scores import StatisticsSettings, score_channels
from infoprune.models import LeNet5, SimpleNet
from infoprune.pruning import metrics
from infoprune.pruning.layers import find_prunable_layers
from infoprune.pruning.stats import collect_statistics

METRICS = {"wmi": metrics.WeightedMutualInformation, "mi": metrics.MutualInformation, "entropy": metrics.Entropy,
           "l1_in": metrics.InputL1}
NETWORKS = {"SimpleNet": ((3, 32, 32), lambda width: SimpleNet(width=width)), "LeNet-5": ((1, 28, 28),
                                                                                           lambda width: LeNet5())}


class FixedBatches:
    """The same pre-built batches on every call."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
        self.batches = list(zip(images.split(batch_size), labels.split(batch_size)))

    def __call__(self):
        yield from self.batches


def overhead(name: str, width: float, metric: str, n: int, batch: int, repeats: int) -> dict:
    shape, build = NETWORKS[name]
    torch.manual_seed(0)
    net = build(width).eval()
    images, labels = torch.randn(n, *shape), torch.randint(0, 10, (n,))
    layers = find_prunable_layers(net, images[:1])
    batches = FixedBatches(images, labels, batch)

    def inference():
        with torch.no_grad():
            for x, _ in batches():
                net(x)

    settings = StatisticsSettings(num_images=n, batch_size=batch)
    def scoring():
        score_channels(net, layers, METRICS[metric](), batches, 10, settings)

    inference(), scoring()  # warm-up
    plain, scored = timed(inference, repeats), timed(scoring, repeats)
    return {"network": name, "images": n, "inference_s": plain, "scoring_s": scored, "ratio": scored / plain}


def live_tensor_bytes() -> int:
    """Bytes of every tensor storage the garbage collector can reach (each storage counted once)."""
    storages = {}
    with warnings.catch_warnings():  # isinstance on some lazily imported objects warns
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def peak_added_bytes(name: str, width: float, n: int, batch: int) -> int:
    """Peak bytes of tensors held while the histogram statistics are collected over ``n`` images generated batch by
    batch (so that the images themselves take no memory), over those held before; sampled at every batch."""
    shape, build = NETWORKS[name]
    torch.manual_seed(0)
    net = build(width).eval()
    layers = find_prunable_layers(net, torch.zeros(1, *shape))
    samples = []

    def batches():
        generator = torch.Generator().manual_seed(0)
        for start in range(0, n, batch):
            size = min(batch, n - start)
            samples.append(live_tensor_bytes())
            yield torch.randn(size, *shape, generator=generator), torch.randint(0, 10, (size,), generator=generator)
        samples.append(live_tensor_bytes())

    before = live_tensor_bytes()
    collect_statistics(net, layers, batches, 10, progress=False)
    return max(samples) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1280)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--metric", choices=sorted(METRICS), default="wmi")
    parser.add_argument("--simplenet-width", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-images", type=int, default=0, help="N of the memory check (0: --images)")
    args = parser.parse_args()
    rows = [overhead(name, args.simplenet_width, args.metric, args.images, args.batch_size, args.repeats)
            for name in NETWORKS]
    print(f"{args.metric} over {args.images} images, batch {args.batch_size}, CPU {torch.get_num_threads()} threads")
    print(f"{'network':12s}{'inference s':>13s}{'scoring s':>11s}{'ratio':>8s}")
    for r in rows:
        print(f"{r['network']:12s}{r['inference_s']:>13.3f}{r['scoring_s']:>11.3f}{r['ratio']:>7.2f}x")
    n = args.memory_images or args.images
    memory = {name: [peak_added_bytes(name, args.simplenet_width, k, args.batch_size) for k in (n, 8 * n)]
              for name in NETWORKS}
    print(f"\npeak tensor memory held by the statistics at {n} and {8 * n} images")
    for name, (small, large) in memory.items():
        print(f"{name:12s}{small / 2**20:>10.1f} MiB{large / 2**20:>10.1f} MiB{large / max(small, 1):>8.2f}x")
    figures = {"scoring_over_one_inference_pass": round(max(r["ratio"] for r in rows), 3),
               "memory_growth": round(max(large / max(small, 1) for small, large in memory.values()), 3),
               "metric": args.metric, "images": args.images, "memory_images": n,
               **{f"{r['network']}/scoring_over_one_inference_pass": round(r["ratio"], 3) for r in rows},
               **{f"{name}/peak_added_bytes": sizes for name, sizes in memory.items()}}
    print_json(figures)


if __name__ == "__main__":
    main()
