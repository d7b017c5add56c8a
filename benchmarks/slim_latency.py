"""Is a slimmed network really faster? CPU latency (batch 64, eval mode) of the original SimpleNet, the slimmed one
(layer-wise, 70% of the parameters of every conv layer removed), and a dense SimpleNet built directly at the slimmed
widths, measured interleaved in one run; with kept channels as chosen and rounded up to multiples of 8; in the
default (contiguous NCHW) and the channels-last memory format (oneDNN's preferred CPU layout).

Then torchvision's ResNet-18 and MobileNetV2 (random weights) with 50% of the FLOPs removed by global pruning
(``l1_in`` scores over coupled channel groups, residual widths included), at ``--tv-size`` pixels: latency of the
original and the slimmed network in both memory formats, and the speed-up divided by the FLOP reduction factor.

    python -m benchmarks.slim_latency [--width 1.0] [--repeats 7] [--tv-size 224]

Targets: slimmed / same-width dense within 1.05; speed-up over the original at least 0.85 of the FLOP
reduction. Last line: JSON with ``slim_vs_dense`` and ``speedup_over_flop_ratio`` (channels-last, kept channels as chosen), and
the same figures for every setting (``*_round8``, ``*_contiguous``); ``speedup_over_flop_ratio_resnet18`` and
``speedup_over_flop_ratio_mobilenet_v2`` (channels-last; ``*_contiguous`` too)."""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import print_json
from infoprune.models import SimpleNet
from infoprune.models.network import build_network
from infoprune.pruning.cost import PruningCost, count_flops
from infoprune.pruning.layers import find_prunable_layers
from infoprune.pruning.metrics import InputL1, score_group
from infoprune.pruning.selection import select_global, select_layerwise
from infoprune.pruning.slim import slim


def latencies(nets: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per forward of each network, measured round-robin so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in nets}
    with torch.inference_mode():
        for net in nets.values():
            net(x)
        for _ in range(repeats):
            for name, net in nets.items():
                start = time.perf_counter()
                net(x)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def print_latencies(seconds: dict[str, float], flops: dict[str, int], original: str) -> None:
    """A table of FLOPs, milliseconds per batch and speed-up over network ``original``."""
    print(f"{'network':22s}{'MFLOPs/img':>12s}{'ms/batch':>10s}{'speed-up':>10s}")
    for name, s in seconds.items():
        print(f"{name:22s}{flops[name] / 1e6:>12.1f}{1000 * s:>10.1f}{seconds[original] / s:>9.2f}x")


def torchvision_figures(batch_size: int, size: int, repeats: int) -> dict[str, float]:
    """ResNet-18 and MobileNetV2 with half their FLOPs removed (global, l1_in group scores): latency of the original
    and slimmed network per memory format, and speed-up over FLOP reduction."""
    figures = {}
    x = torch.randn(batch_size, 3, size, size)
    for network, target in (("resnet18", "torchvision.models.resnet18"),
                            ("mobilenet_v2", "torchvision.models.mobilenet_v2")):
        torch.manual_seed(0)
        original = build_network({"_target_": target}, 1000, 3).eval()
        slimmed = build_network({"_target_": target}, 1000, 3).eval()
        slimmed.load_state_dict(original.state_dict())
        layers = find_prunable_layers(slimmed, x[:1])
        scores = {layer.name: score_group(InputL1(), layer, None) for layer in layers}
        keep = select_global(scores, layers, PruningCost(slimmed, layers, x[:1]), 0.5, resource="flops")
        slim(slimmed, layers, keep, x[:1])
        nets = {f"{network}/original": original, f"{network}/slimmed": slimmed}
        flops = {name: count_flops(net, x[:1]) for name, net in nets.items()}
        flop_ratio = flops[f"{network}/original"] / flops[f"{network}/slimmed"]
        for memory_format, suffix in ((torch.channels_last, ""), (torch.contiguous_format, "_contiguous")):
            fmt_nets = {name: net.to(memory_format=memory_format) for name, net in nets.items()}
            seconds = latencies(fmt_nets, x.contiguous(memory_format=memory_format), repeats)
            print(f"\n{network}, {size}x{size}, {str(memory_format).replace('torch.', '')}, "
                  f"{len(layers)} channel groups, global 50% of FLOPs removed")
            print_latencies(seconds, flops, f"{network}/original")
            speedup = seconds[f"{network}/original"] / seconds[f"{network}/slimmed"]
            figures[f"speedup_{network}{suffix}"] = round(speedup, 3)
            figures[f"flop_ratio_{network}{suffix}"] = round(flop_ratio, 3)
            figures[f"speedup_over_flop_ratio_{network}{suffix}"] = round(speedup / flop_ratio, 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--amount", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tv-size", type=int, default=224, help="image size of the torchvision networks")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32)
    original = SimpleNet(width=args.width).eval()
    nets, flops, rows = {"original": original}, {"original": count_flops(original, x[:1])}, {}
    for round_to in (1, 8):
        net = SimpleNet(width=args.width).eval()
        net.load_state_dict(original.state_dict())
        layers = find_prunable_layers(net, x[:1])
        keep = select_layerwise({l.name: InputL1()(l) for l in layers}, layers, args.amount, mode="params",
                                round_to=round_to)
        widths = slim(net, layers, keep, x[:1])
        nets[f"slimmed/{round_to}"] = net
        nets[f"dense/{round_to}"] = SimpleNet(channels=widths).eval()
        flops[f"slimmed/{round_to}"] = flops[f"dense/{round_to}"] = count_flops(net, x[:1])
        rows[round_to] = widths
    print(f"SimpleNet width {args.width}, {args.amount:.0%} of every conv layer's parameters removed, batch "
          f"{args.batch_size}, CPU {torch.get_num_threads()} threads, median of {args.repeats}")
    for round_to in (1, 8):
        print(f"kept widths, rounded to {round_to}: {rows[round_to]}")
    figures = {}
    for memory_format, fmt_suffix in ((torch.channels_last, ""), (torch.contiguous_format, "_contiguous")):
        fmt_nets = {name: net.to(memory_format=memory_format) for name, net in nets.items()}
        seconds = latencies(fmt_nets, x.contiguous(memory_format=memory_format), args.repeats)
        print(f"\n{str(memory_format).replace('torch.', '')}")
        print_latencies(seconds, flops, "original")
        for round_to, suffix in ((1, fmt_suffix), (8, f"_round8{fmt_suffix}")):
            speedup = seconds["original"] / seconds[f"slimmed/{round_to}"]
            flop_ratio = flops["original"] / flops[f"slimmed/{round_to}"]
            figures[f"slim_vs_dense{suffix}"] = round(seconds[f"slimmed/{round_to}"] / seconds[f"dense/{round_to}"], 3)
            figures[f"speedup{suffix}"] = round(speedup, 3)
            figures[f"flop_ratio{suffix}"] = round(flop_ratio, 3)
            figures[f"speedup_over_flop_ratio{suffix}"] = round(speedup / flop_ratio, 3)
            print(f"round to {round_to}: slimmed/dense {figures[f'slim_vs_dense{suffix}']:.3f}, speed-up "
                  f"{speedup:.2f}x for {flop_ratio:.2f}x fewer FLOPs ({speedup / flop_ratio:.2f} of the FLOP ratio)")
    figures.update(torchvision_figures(args.batch_size, args.tv_size, args.repeats))
    print_json(figures)


if __name__ == "__main__":
    main()
