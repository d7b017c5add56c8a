"""Cost of collecting channel statistics: each statistics pass over N images divided by a plain inference pass over
the same N images (same batches, eval mode), for SimpleNet and LeNet-5; and the collector's state size at N and 4N
(flat: it does not grow with the number of images).

    python -m benchmarks.stats_overhead [--images 1280] [--simplenet-width 0.25]

Target: every pass at most 1.3x plain inference. Last line: JSON with ``stats_over_inference`` (worst pass)."""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import print_json
from infoprune.models import LeNet5, SimpleNet
from infoprune.pruning.layers import find_prunable_layers
from infoprune.pruning.stats import collect_statistics


class TimedBatches:
    """The same pre-built batches on every call, recording each pass's wall time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
        self.batches = list(zip(images.split(batch_size), labels.split(batch_size)))
        self.times: list[float] = []

    def __call__(self):
        start = time.perf_counter()
        yield from self.batches
        self.times.append(time.perf_counter() - start)


def state_bytes(stats) -> int:
    return sum(t.numel() * t.element_size() for s in stats.values() for t in (s.edges, s.counts, s.abs_sum))


def measure(name: str, net: torch.nn.Module, shape: tuple[int, int, int], n: int, batch: int, repeats: int):
    torch.manual_seed(0)
    images, labels = torch.randn(n, *shape), torch.randint(0, 10, (n,))
    layers = find_prunable_layers(net, images[:1])
    net.eval()
    plain = TimedBatches(images, labels, batch)
    with torch.no_grad():
        for _ in range(repeats + 1):  # first run warms up
            for x, _ in plain():
                net(x)
    inference = min(plain.times[1:])
    timed = TimedBatches(images, labels, batch)
    for _ in range(repeats):
        stats = collect_statistics(net, layers, timed, 10, bins=32, progress=False)
    passes = [min(timed.times[i::2]) for i in range(2)]
    big = torch.randn(4 * n, *shape)
    stats_4n = collect_statistics(net, layers, lambda: zip(big.split(batch), torch.randint(0, 10, (4 * n,)).split(batch)),
                                  10, bins=32, progress=False)
    return {"network": name, "images": n, "inference_s": inference, "range_pass_s": passes[0],
            "count_pass_s": passes[1], "ratio_range": passes[0] / inference, "ratio_count": passes[1] / inference,
            "state_bytes_n": state_bytes(stats), "state_bytes_4n": state_bytes(stats_4n)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1280)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--simplenet-width", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [measure(f"SimpleNet x{args.simplenet_width}", SimpleNet(width=args.simplenet_width), (3, 32, 32),
                    args.images, args.batch_size, args.repeats),
            measure("LeNet-5", LeNet5(), (1, 28, 28), args.images, args.batch_size, args.repeats)]
    print(f"{'network':18s}{'images':>8s}{'inference s':>13s}{'range pass':>12s}{'count pass':>12s}"
          f"{'state @N':>11s}{'state @4N':>11s}")
    for r in rows:
        print(f"{r['network']:18s}{r['images']:>8d}{r['inference_s']:>13.3f}{r['ratio_range']:>11.2f}x"
              f"{r['ratio_count']:>11.2f}x{r['state_bytes_n']:>11,d}{r['state_bytes_4n']:>11,d}")
    print(f"(CPU, {torch.get_num_threads()} threads; ratios are pass time / plain inference time on the same batches)")
    figures = {"stats_over_inference": round(max(max(r["ratio_range"], r["ratio_count"]) for r in rows), 3),
               "memory_flat": all(r["state_bytes_n"] == r["state_bytes_4n"] for r in rows),
               **{f"{r['network']}/{k}": round(r[k], 3) for r in rows for k in ("ratio_range", "ratio_count")}}
    print_json(figures)


if __name__ == "__main__":
    main()
