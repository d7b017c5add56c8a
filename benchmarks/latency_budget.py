"""Does a latency budget deliver the latency it asks for on this machine, and what does it buy over a FLOPs budget
at the same measured latency?

1. ``latency_over_target``: SimpleNet (``--width``, 32x32 inputs, batch ``--batch-size``) and torchvision's
   ResNet-18 (``--tv-size`` pixels, batch ``--tv-batch``), random weights, ``l1_in`` group scores; channels chosen
   by ``ChannelPruning`` under a latency budget of ``--target`` of the dense network's latency (tables measured
   here, then select - measure - select again); the slimmed network's latency is then measured anew against the
   dense one (interleaved, twice the repeats) and divided by the target.
2. ``acc_latency_vs_flops``: prune.py on the embedded digits SimpleNet at width ``--digits-width`` (batch
   ``--digits-batch`` for timing), ``l1_in``, once under the latency budget and once under the FLOPs budget whose
   slimmed network measures the same latency (found by bisection on the FLOPs target), both fine-tuned alike from
   one cached baseline; the two final networks and the dense one are then timed side by side. The figure is the
   fine-tuned test accuracy of the latency-selected network minus that of the FLOPs-selected one (points), the mean
   over ``--seeds`` paired by seed (each seed its own baseline).

    python -m benchmarks.latency_budget [--target 0.5] [--repeats 15] [--tv-size 224] [--tv-batch 8]
        [--digits-width 1.0] [--digits-batch 256] [--epochs 0] [--seeds 0 1 2] [--skip-accuracy]

Last line: JSON with ``latency_over_target_simplenet``, ``latency_over_target_resnet18``, ``latency_over_target``
(the larger), the selection rounds of each, and ``acc_latency_vs_flops`` with both accuracies and measured
latencies."""
from __future__ import annotations

import argparse
import copy
import statistics

import torch

from benchmarks.common import compose, print_json, scratch_dir
from infoprune.callbacks import ChannelPruning
from infoprune.models import SimpleNet
from infoprune.models.classifier import ImageClassifier
from infoprune.models.network import build_network
from infoprune.pipeline import prune
from infoprune.pruning.cost import PruningCost, count_flops
from infoprune.pruning.latency import (
    LatencySettings,
    batch_of,
    interleaved_seconds,
    memory_format,
    relative_latency,
)
from infoprune.pruning.layers import find_prunable_layers
from infoprune.pruning.metrics import InputL1, score_group
from infoprune.pruning.selection import select_global
from infoprune.pruning.slim import slim


def l1_scores(net: torch.nn.Module, example: torch.Tensor) -> tuple[list, dict[str, torch.Tensor]]:
    layers = find_prunable_layers(net, example)
    return layers, {layer.name: score_group(InputL1(), layer, None) for layer in layers}


def latency_target_figures(name: str, net: torch.nn.Module, example: torch.Tensor, target: float,
                           settings: LatencySettings) -> dict[str, float]:
    """Select under the latency budget with ``ChannelPruning``, then measure the slimmed network anew."""
    net.eval()
    layers, scores = l1_scores(net, example)
    pruning = ChannelPruning(InputL1(), 1.0 - target, scope="global", resource="latency", latency=settings)
    keep = pruning.select(net, layers, scores, 1.0 - target, example)
    slimmed = copy.deepcopy(net)
    slim(slimmed, find_prunable_layers(slimmed, example), keep, example)
    batch = batch_of(example, settings.batch_size)
    measured = relative_latency(net, slimmed, batch, 2 * settings.repeats)
    flops = count_flops(slimmed, example) / count_flops(net, example)
    rounds = pruning.latency_record["latency_rounds"]
    print(f"\n{name}: latency target {target:.2f} of the dense network's, batch {settings.batch_size}, "
          f"{len(layers)} channel groups")
    print(f"{'round':>6s}{'goal':>8s}{'measured':>10s}")
    for i, r in enumerate(rounds):
        print(f"{i:>6d}{r['goal']:>8.3f}{r['measured']:>10.3f}")
    print(f"measured again: {measured:.3f} of the dense latency ({measured / target:.3f} of the target), "
          f"{flops:.3f} of its FLOPs")
    return {f"latency_over_target_{name}": round(measured / target, 3), f"latency_remaining_{name}": round(measured, 4),
            f"flops_remaining_{name}": round(flops, 4), f"rounds_{name}": len(rounds)}


def flops_target_at_latency(net: torch.nn.Module, example: torch.Tensor, latency: float, batch: torch.Tensor,
                            repeats: int, steps: int = 8) -> float:
    """The fraction of FLOPs whose global ``l1_in`` selection measures ``latency`` of the dense network's
    (bisection over the FLOPs remaining)."""
    low, high = 0.02, 1.0
    for _ in range(steps):
        middle = (low + high) / 2
        layers, scores = l1_scores(net, example)
        keep = select_global(scores, layers, PruningCost(net, layers, example), middle, resource="flops")
        slimmed = copy.deepcopy(net)
        slim(slimmed, find_prunable_layers(slimmed, example), keep, example)
        measured = relative_latency(net, slimmed, batch, repeats)
        low, high = (middle, high) if measured < latency else (low, middle)
    return (low + high) / 2


def compare_at_equal_latency(args: argparse.Namespace, seed: int) -> dict[str, float]:
    """One seed: the digits jobs under the latency budget and under the FLOPs budget of the same measured latency,
    and the two final networks timed against the dense one, side by side."""
    out = scratch_dir(f"latency_budget-{seed}-")
    common = [f"model.net.width={args.digits_width}", "pruning/metric=l1_in", "pruning/scope=global", "logger=none",
              f"seed={seed}", f"baseline_cache={out / 'baselines'}", f"latency_cache={out / 'latency'}"]
    if args.epochs:
        common += [f"trainer.max_epochs={args.epochs}", f"finetune.max_epochs={args.epochs}"]
    latency_run = prune(compose("prune", common + [
        "pruning.scope.resource=latency", f"pruning.target={1 - args.target}",
        f"pruning.scope.latency.batch_size={args.digits_batch}",
        f"pruning.scope.latency.repeats={args.repeats}"], out / "latency"))
    baseline = ImageClassifier.load_from_checkpoint(next((out / "baselines").glob("*.ckpt")), weights_only=True)
    dense, example = baseline.net.eval(), baseline.example_input_array
    batch = batch_of(example, args.digits_batch, memory_format(dense))
    flops_kept = flops_target_at_latency(dense, example, latency_run["latency_remaining"], batch, args.repeats)
    flops_run = prune(compose("prune", common + ["pruning.scope.resource=flops", f"pruning.target={1 - flops_kept}"],
                              out / "flops"))
    finals = {name: ImageClassifier.load_from_checkpoint(out / name / "final.ckpt", weights_only=True).net.eval()
              for name in ("latency", "flops")}
    seconds = interleaved_seconds({"dense": lambda: dense(batch), **{n: (lambda m=m: m(batch))
                                                                     for n, m in finals.items()}},
                                  2 * args.repeats, batch.device)
    runs = {"latency": latency_run, "flops": flops_run}
    return {**{f"acc_{name}_budget": run["acc_finetuned"] for name, run in runs.items()},
            **{f"latency_kept_{name}_budget": seconds[name] / seconds["dense"] for name in runs},
            **{f"flops_kept_{name}_budget": run["flops_remaining"] for name, run in runs.items()},
            "acc_baseline": latency_run["acc_baseline"]}


def accuracy_figures(args: argparse.Namespace) -> dict[str, float]:
    """:func:`compare_at_equal_latency` for every seed; the accuracy difference paired by seed (points)."""
    per_seed = [compare_at_equal_latency(args, seed) for seed in args.seeds]
    print(f"\ndigits SimpleNet width {args.digits_width}, batch {args.digits_batch}: latency budget {args.target:.2f} "
          f"against FLOPs at the same measured latency, seeds {args.seeds}")
    print(f"{'seed':>5s}{'baseline':>10s}{'budget':>9s}{'FLOPs kept':>12s}{'latency kept':>14s}{'test acc':>10s}")
    for seed, row in zip(args.seeds, per_seed):
        for name in ("latency", "flops"):
            print(f"{seed:>5d}{row['acc_baseline']:>10.2%}{name:>9s}{row[f'flops_kept_{name}_budget']:>12.3f}"
                  f"{row[f'latency_kept_{name}_budget']:>14.3f}{row[f'acc_{name}_budget']:>10.2%}")
    gains = [100 * (row["acc_latency_budget"] - row["acc_flops_budget"]) for row in per_seed]
    spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
    print(f"latency budget minus FLOPs budget: {statistics.mean(gains):+.2f} ± {spread:.2f} points (paired by seed)")
    return {"acc_latency_vs_flops": round(statistics.mean(gains), 2), "acc_latency_vs_flops_std": round(spread, 2),
            "acc_latency_vs_flops_per_seed": [round(g, 2) for g in gains],
            **{key: round(statistics.mean(row[key] for row in per_seed), 4) for key in per_seed[0]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.5, help="fraction of the dense latency to keep")
    parser.add_argument("--width", type=float, default=1.0, help="SimpleNet width (32x32 inputs)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--tv-size", type=int, default=224)
    parser.add_argument("--tv-batch", type=int, default=8)
    parser.add_argument("--digits-width", type=float, default=1.0)
    parser.add_argument("--digits-batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=0, help="baseline and fine-tuning epochs of the digits jobs "
                        "(0: the prune.py defaults)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the digits comparison")
    parser.add_argument("--skip-accuracy", action="store_true", help="only the latency_over_target figures")
    args = parser.parse_args()
    print(f"CPU {torch.get_num_threads()} threads, median of {args.repeats} timed passes per measurement")
    torch.manual_seed(0)
    figures = latency_target_figures("simplenet", SimpleNet(width=args.width), torch.randn(1, 3, 32, 32),
                                     args.target, LatencySettings(batch_size=args.batch_size, repeats=args.repeats))
    torch.manual_seed(0)
    resnet = build_network({"_target_": "torchvision.models.resnet18"}, 1000, 3)
    figures.update(latency_target_figures("resnet18", resnet, torch.randn(1, 3, args.tv_size, args.tv_size),
                                          args.target, LatencySettings(batch_size=args.tv_batch, repeats=args.repeats)))
    figures["latency_over_target"] = max(figures["latency_over_target_simplenet"],
                                         figures["latency_over_target_resnet18"])
    if not args.skip_accuracy:
        figures.update(accuracy_figures(args))
    print_json(figures)


if __name__ == "__main__":
    main()
