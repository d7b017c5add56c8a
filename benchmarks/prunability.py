"""Which networks of the zoo can be pruned? For every torchvision classification model
(``torchvision.models.list_models(module=torchvision.models)``), segmentation model
(``torchvision.models.segmentation``) and detection model (``torchvision.models.detection``, through
``DetectionOutputs``) and one model per timm family (module; ``smallest_variant``, at the timm model's own input
size), built with random weights (nothing downloaded) at 10 classes (GoogLeNet and Inception-v3
without their auxiliary classifiers, which run only in training): find the channel groups, score them by weighted
MI (``wmi``) on random images with random labels, remove 50% of the FLOPs by one global ranking, slim, check that
the output has the structure and shapes it had before, then save the slimmed weights with their structure record
(group -> width), rebuild the network from its constructor, slim it to the record (``pruning.slim.slim_to_widths``,
what ``ImageClassifier`` does with ``structure``), load the weights strictly and compare outputs.

    python -m benchmarks.prunability [--family classification segmentation detection timm] [--models PATTERN ...]
        [--size 224] [--images 8] [--records DIR] [--timeout 900] [--threads 2] [--reduce MODEL=SIZE ...]

Every model runs in its own process (a crash or a timeout is that model's failure, not the sweep's) and writes
``<records>/<family>__<model>.json``; a rerun with the same ``--records`` skips the models already recorded.
A model is *prunable* when it has at least one group, at least 30% of its FLOPs are removed, its forward output
keeps its structure and the reloaded network gives the slimmed one's outputs (within 1e-4 of the output scale).

Last line: JSON with ``torchvision_total``, ``torchvision_prunable`` (classification), ``segmentation_total``,
``segmentation_prunable``, ``detection_total``, ``detection_prunable``, ``timm_total``, ``timm_prunable`` (of the
families run) and ``failures``
(model -> reason). ``--reduce`` runs the named timm models at a smaller input than their own (``img_size``), for
models too large for the machine's memory at theirs; their records and the table's input column say so."""
from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torchvision

from benchmarks.common import ROOT, print_json
from infoprune.callbacks.calibration import StatisticsSettings
from infoprune.callbacks.channel_scores import score_channels
from infoprune.pruning.cost import PruningCost, count_flops, count_parameters
from infoprune.pruning.layers import find_prunable_layers
from infoprune.pruning.metrics import WeightedMutualInformation
from infoprune.pruning.selection import select_global
from infoprune.pruning.slim import slim, slim_to_widths

FAMILIES = {"classification": torchvision.models, "segmentation": torchvision.models.segmentation,
            "detection": torchvision.models.detection, "timm": None}
FLOPS_KEPT = 0.5  #: the global budget: fraction of the FLOPs that remains
MIN_REMOVED = 0.30  #: a model counts as prunable from this fraction of FLOPs removed
NUM_CLASSES = 10
#: built without their auxiliary classifiers, which run only in training and cannot be traced in eval mode
AUXILIARY_CLASSIFIERS = ("googlenet", "inception_v3")


#: words timm uses for its smaller variants, smallest first (the model picked for a timm family)
SIZE_WORDS = ("atto", "femto", "pico", "nano", "xxs", "xxsmall", "micro", "xs", "xsmall", "tiny", "t", "mini", "small",
              "s", "base", "b")


def smallest_variant(names: list[str]) -> str:
    """The model of a family that names itself smallest: the earliest ``SIZE_WORDS`` entry among its name's
    ``_``-separated words (trailing digits dropped: ``xxs24``), then the shortest name, then alphabetical."""
    def rank(name: str) -> tuple:
        words = {word.rstrip("0123456789") for word in name.split("_")}
        return min((i for i, w in enumerate(SIZE_WORDS) if w in words), default=len(SIZE_WORDS)), len(name), name
    return min(names, key=rank)


def model_names(family: str, patterns: list[str]) -> list[str]:
    """The family's models (torchvision's registry; for ``timm``, one model per timm module, ``smallest_variant``),
    filtered by shell-style ``patterns`` when given."""
    if family == "timm":
        import timm

        names = [smallest_variant(timm.list_models(module=module)) for module in timm.list_modules()
                 if timm.list_models(module=module)]
    else:
        names = torchvision.models.list_models(module=FAMILIES[family])
    return [n for n in names if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)]


def native_size(family: str, name: str, size: int, reduced: dict[str, int]) -> int:
    """The input size a model is run at: ``reduced[name]`` if given, a timm model's own (its ``pretrained_cfg``),
    ``size`` otherwise."""
    if family != "timm":
        return size
    if name in reduced:
        return reduced[name]
    import timm

    return int(timm.create_model(name, pretrained=False).pretrained_cfg.get("input_size", (3, size, size))[-1])


class DetectionOutputs(torch.nn.Module):
    """A detection model's raw head outputs before box decoding and non-maximum suppression: the backbone (with its
    feature pyramid), then the dense heads on every level (RetinaNet, FCOS, SSD) or the region-proposal head and the
    box, mask and keypoint heads on two fixed boxes per image (Faster, Mask and Keypoint R-CNN). What the pruning
    traces and slims is the detection model itself (``self.model``), which still runs end to end afterwards."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.model.backbone(x)
        features = features if isinstance(features, dict) else {"0": features}
        levels = list(features.values())
        if not hasattr(self.model, "rpn"):
            return self.model.head(levels)
        objectness, deltas = self.model.rpn.head(levels)
        out = {**{f"objectness{i}": t for i, t in enumerate(objectness)},
               **{f"deltas{i}": t for i, t in enumerate(deltas)}}
        h, w = x.shape[-2:]
        boxes = [torch.tensor([[0.0, 0.0, w / 2, h / 2], [w / 4, h / 4, w, h]], device=x.device)] * len(x)
        heads = self.model.roi_heads
        for kind in ("box", "mask", "keypoint"):
            pool = getattr(heads, f"{kind}_roi_pool", None)
            if pool is not None:
                pooled = getattr(heads, f"{kind}_head")(pool(features, boxes, [(h, w)] * len(x)))
                result = getattr(heads, f"{kind}_predictor")(pooled)
                out.update({f"{kind}{i}": t for i, t in enumerate(result if isinstance(result, tuple) else (result,))})
        return out


def build(family: str, name: str, img_size: int | None = None) -> torch.nn.Module:
    """The model with random weights and ``NUM_CLASSES`` outputs, in eval mode (the same on every call); a timm
    model built for input ``img_size`` when given."""
    torch.manual_seed(0)
    if family == "timm":
        import timm

        extra = {"img_size": img_size} if img_size else {}
        return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **extra).eval()
    extra = {"segmentation": {"weights_backbone": None, "aux_loss": False},
             "detection": {"weights_backbone": None}}.get(family, {})
    if name in AUXILIARY_CLASSIFIERS:
        extra = {"aux_logits": False}
    model = torchvision.models.get_model(name, weights=None, num_classes=NUM_CLASSES, **extra).eval()
    return DetectionOutputs(model).eval() if family == "detection" else model


def output_shapes(output) -> object:
    """The structure of a model's output with every tensor replaced by its shape."""
    if isinstance(output, torch.Tensor):
        return list(output.shape)
    if isinstance(output, dict):
        return {k: output_shapes(v) for k, v in output.items()}
    if isinstance(output, (list, tuple)):
        return [output_shapes(v) for v in output]
    return type(output).__name__


def flat_outputs(output) -> list[torch.Tensor]:
    """Every tensor of a model's output, in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    values = output.values() if isinstance(output, dict) else output
    return [t for v in values for t in flat_outputs(v)]


def end_to_end(net: torch.nn.Module, images: torch.Tensor) -> list | None:
    """A detection model run as users run it (a list of images in, boxes, labels and scores out): the keys of its
    first image's result; None for other models."""
    if not isinstance(net, DetectionOutputs):
        return None
    with torch.no_grad():
        return sorted(net.model(list(images[:1]))[0])


def check_model(family: str, name: str, size: int, images: int, reduced: bool = False) -> dict:
    """One model through groups -> wmi scores -> global FLOPs selection -> slimming -> save and reload (built for
    input ``size`` when ``reduced``); returns the record (groups, sizes before and after, the checks, seconds per
    phase, the failure if any)."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    net = build(family, name, size if reduced else None)
    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = output_shapes(net(probe)), end_to_end(net, probe)
    record = {"family": family, "model": name, "input": [3, size, size], "reduced_input": reduced,
              "params_before": count_parameters(net), "flops_before": count_flops(net, example)}
    seconds["build"] = time.perf_counter() - start

    start = time.perf_counter()
    layers = find_prunable_layers(net, example)
    record["groups"] = len(layers)
    record["layers_in_groups"] = sum(len(layer.members) for layer in layers)
    seconds["groups"] = time.perf_counter() - start
    if not layers:
        return {**record, "seconds": seconds, "failure": "no prunable channel group"}

    start = time.perf_counter()
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(min(4, images - i), 3, size, size, generator=g),
                torch.randint(0, NUM_CLASSES, (min(4, images - i),), generator=g)) for i in range(0, images, 4)]
    settings = StatisticsSettings(num_images=images, batch_size=4, bins=8, buffer_images=images)
    scores, _ = score_channels(net, layers, WeightedMutualInformation(), lambda: batches, NUM_CLASSES, settings)
    seconds["scores"] = time.perf_counter() - start

    start = time.perf_counter()
    keep = select_global(scores, layers, PruningCost(net, layers, example), FLOPS_KEPT, resource="flops")
    slim(net, layers, keep, example)
    structure = {layer.name: layer.num_channels for layer in layers}
    with torch.no_grad():
        slimmed_output = net(probe)
    record.update(params_after=count_parameters(net), flops_after=count_flops(net, example),
                  forward_ok=(output_shapes(slimmed_output), end_to_end(net, probe)) == before)
    record["flops_kept"] = record["flops_after"] / record["flops_before"]
    record["params_kept"] = record["params_after"] / record["params_before"]
    seconds["select_slim"] = time.perf_counter() - start

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "slimmed.pt"
        torch.save({"structure": structure, "state_dict": net.state_dict()}, path)
        saved = torch.load(path, weights_only=True)
    rebuilt = build(family, name, size if reduced else None)
    slim_to_widths(rebuilt, saved["structure"], example)
    rebuilt.load_state_dict(saved["state_dict"], strict=True)
    with torch.no_grad():
        pairs = zip(flat_outputs(slimmed_output), flat_outputs(rebuilt(probe)))
        record["reload_ok"] = all(a.shape == b.shape and (a - b).abs().max() <= 1e-4 * max(1.0, a.abs().max())
                                  for a, b in pairs)
    seconds["reload"] = time.perf_counter() - start

    problems = [what for what, bad in (("forward output changed structure", not record["forward_ok"]),
                                       ("reloaded outputs differ", not record["reload_ok"]),
                                       (f"only {1 - record['flops_kept']:.0%} of the FLOPs removed",
                                        1 - record["flops_kept"] < MIN_REMOVED)) if bad]
    return {**record, "seconds": seconds, "failure": "; ".join(problems) or None}


def run_one(family: str, name: str, args: argparse.Namespace) -> dict:
    """``check_model`` in a child process with a timeout; a crash, an exception or a timeout is the record's
    ``failure`` (the exception's last line)."""
    command = [sys.executable, "-m", "benchmarks.prunability", "--one", family, name, "--size", str(args.size),
               "--images", str(args.images), "--threads", str(args.threads),
               "--reduce", *(f"{model}={size}" for model, size in args.reduce.items())]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"family": family, "model": name, "failure": f"timeout after {args.timeout} s",
                "wall_s": time.perf_counter() - start}
    lines = done.stdout.strip().splitlines()
    if done.returncode < 0:
        return {"family": family, "model": name, "failure": f"killed by signal {-done.returncode}"
                + (" (SIGKILL: the kernel's out-of-memory killer, or a user)" if done.returncode == -9 else ""),
                "wall_s": time.perf_counter() - start}
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"family": family, "model": name, "failure": f"exit {done.returncode}: {tail[:300]}",
                "wall_s": time.perf_counter() - start}
    return {**json.loads(lines[-1]), "wall_s": time.perf_counter() - start}


def child(family: str, name: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    try:
        record = check_model(family, name, native_size(family, name, args.size, args.reduce), args.images,
                             name in args.reduce)
    except Exception as error:  # noqa: BLE001 - any failure of a model is its record
        last = traceback.format_exception_only(error)[-1].strip()
        record = {"family": family, "model": name, "failure": f"{type(error).__name__} in pruning: {last[:300]}"}
    print(json.dumps(record))


def prunable(record: dict) -> bool:
    return record.get("failure") is None


def print_table(records: list[dict]) -> None:
    print("| model | family | input | groups | params kept | FLOPs kept | forward ok | reload ok | seconds | failure |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        def pct(key):
            return f"{r[key]:.1%}" if key in r else "-"
        yes = {True: "yes", False: "no", None: "-"}
        size = f"{r['input'][-1]}{' (reduced)' if r.get('reduced_input') else ''}" if "input" in r else "-"
        print(f"| {r['model']} | {r['family']} | {size} | {r.get('groups', '-')} | {pct('params_kept')} | {pct('flops_kept')} "
              f"| {yes[r.get('forward_ok')]} | {yes[r.get('reload_ok')]} | {r.get('wall_s', 0):.0f} "
              f"| {r.get('failure') or ''} |")


def parse_reduced(parser: argparse.ArgumentParser, pairs: list[str]) -> dict[str, int]:
    """``MODEL=SIZE`` pairs as a dict, or the parser's error for a malformed one."""
    reduced = {}
    for pair in pairs:
        model, _, size = pair.partition("=")
        if not model or not size.isdigit() or int(size) < 1:
            parser.error(f"--reduce takes MODEL=SIZE pairs (a positive size in pixels), got {pair!r}")
        reduced[model] = int(size)
    return reduced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--models", nargs="*", default=[], help="shell-style patterns of model names")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--images", type=int, default=8, help="calibration images (random) for the wmi statistics")
    parser.add_argument("--records", type=Path, default=ROOT / "logs" / "prunability",
                        help="one JSON record per model; models recorded there are not rerun")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per model")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each model's process")
    parser.add_argument("--reduce", nargs="*", default=[], metavar="MODEL=SIZE",
                        help="timm models run at a smaller input than their own (too large for memory at theirs)")
    parser.add_argument("--one", nargs=2, metavar=("FAMILY", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.reduce = parse_reduced(parser, args.reduce)
    if args.one:
        return child(*args.one, args)

    args.records.mkdir(parents=True, exist_ok=True)
    records = []
    todo = [(family, name) for family in args.family for name in model_names(family, args.models)]
    for i, (family, name) in enumerate(todo, 1):
        path = args.records / f"{family}__{name}.json"
        if path.exists():
            record = json.loads(path.read_text())
        else:
            record = run_one(family, name, args)
            path.write_text(json.dumps(record, indent=1))
        status = "ok" if prunable(record) else record["failure"]
        print(f"[{i}/{len(todo)}] {family} {name}: {status} ({record.get('wall_s', 0):.0f} s)", file=sys.stderr)
        records.append(record)

    print_table(records)
    figures: dict = {"failures": {r["model"]: r["failure"] for r in records if not prunable(r)},
                     "input_size": args.size, "flops_kept_target": FLOPS_KEPT}
    for family, key in (("classification", "torchvision"), ("segmentation", "segmentation"),
                        ("detection", "detection"), ("timm", "timm")):
        mine = [r for r in records if r["family"] == family]
        if mine:
            figures[f"{key}_total"] = len(mine)
            figures[f"{key}_prunable"] = sum(map(prunable, mine))
    print_json(figures)


if __name__ == "__main__":
    main()
