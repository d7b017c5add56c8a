"""Is a slimmed network really faster? CPU latency (batch 64, eval mode) of the original SimpleNet, the slimmed one
(layer-wise, 70% of the parameters of every conv layer removed), and a dense SimpleNet built directly at the slimmed
widths, measured interleaved in one run; with kept channels as chosen and rounded up to multiples of 8; in the
default (contiguous NCHW) and the channels-last memory format (oneDNN's preferred CPU layout).

    python -m benchmarks.slim_latency [--width 1.0] [--repeats 7]

Targets (issue 4): slimmed / same-width dense within 1.05; speed-up over the original at least 0.85 of the FLOP
reduction. Last line: JSON with ``slim_vs_dense`` and ``speedup_over_flop_ratio`` (channels-last, kept channels as chosen), and
the same figures for every setting (``*_round8``, ``*_contiguous``)."""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import print_json
from models import SimpleNet
from models.classifier import count_flops
from pruning.layers import find_prunable_layers
from pruning.metrics import InputL1
from pruning.selection import select_layerwise
from pruning.slim import slim


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--amount", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=7)
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
        print(f"{'network':16s}{'MFLOPs/img':>12s}{'ms/batch':>10s}{'speed-up':>10s}")
        for name, s in seconds.items():
            print(f"{name:16s}{flops[name] / 1e6:>12.1f}{1000 * s:>10.1f}{seconds['original'] / s:>9.2f}x")
        for round_to, suffix in ((1, fmt_suffix), (8, f"_round8{fmt_suffix}")):
            speedup = seconds["original"] / seconds[f"slimmed/{round_to}"]
            flop_ratio = flops["original"] / flops[f"slimmed/{round_to}"]
            figures[f"slim_vs_dense{suffix}"] = round(seconds[f"slimmed/{round_to}"] / seconds[f"dense/{round_to}"], 3)
            figures[f"speedup{suffix}"] = round(speedup, 3)
            figures[f"flop_ratio{suffix}"] = round(flop_ratio, 3)
            figures[f"speedup_over_flop_ratio{suffix}"] = round(speedup / flop_ratio, 3)
            print(f"round to {round_to}: slimmed/dense {figures[f'slim_vs_dense{suffix}']:.3f}, speed-up "
                  f"{speedup:.2f}x for {flop_ratio:.2f}x fewer FLOPs ({speedup / flop_ratio:.2f} of the FLOP ratio)")
    print_json(figures)


if __name__ == "__main__":
    main()
