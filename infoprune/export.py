"""Export a trained or pruned network for use outside the framework, with its input preprocessing.

    python -m infoprune.export CKPT --format onnx|torchscript [--out PATH] [--no-bake]

The checkpoint records how the datamodule turned stored pixels into the network's input (``preprocessing``:
``input = (pixels * scale - mean) / std`` per channel, pixels as stored, 0-255). By default the export bakes it in:
the exported graph takes raw pixel values (float, 0-255, N x C x H x W) and gives logits. With ``--no-bake`` the
graph takes normalised inputs, as the network does, and the preprocessing is written beside it as
``<out>.preprocessing.json``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn as nn

from infoprune.io import atomic_write_text, write_atomically
from infoprune.models.classifier import ImageClassifier

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}


class Preprocessed(nn.Module):
    """``net((pixels * scale - mean) / std)``: the network behind its input preprocessing."""

    def __init__(self, net: nn.Module, preprocessing: dict) -> None:
        super().__init__()
        self.net, self.scale = net, float(preprocessing["scale"])
        self.register_buffer("mean", torch.tensor(preprocessing["mean"]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessing["std"]).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net((pixels.float() * self.scale - self.mean) / self.std)


def export_network(module: ImageClassifier, path: str | Path, fmt: str = "torchscript", bake: bool = True) -> Path:
    """``module``'s network (eval mode, CPU) as ``torchscript`` (traced) or ``onnx`` at ``path``; with ``bake`` its
    recorded input preprocessing is part of the graph, else it is written to ``<path>.preprocessing.json``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {sorted(FORMATS)}")
    preprocessing = module.hparams.get("preprocessing")
    if preprocessing is None and bake:
        raise ValueError("this checkpoint does not record its input preprocessing (written before it was recorded); "
                         "export with --no-bake and normalise inputs as its datamodule did")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = module.net.eval().cpu().to(memory_format=torch.contiguous_format)
    graph = Preprocessed(net, preprocessing).eval() if bake else net
    example = torch.zeros_like(module.example_input_array.cpu())
    if fmt == "torchscript":
        write_atomically(path, lambda tmp: torch.jit.trace(graph, example).save(str(tmp)))
    else:
        name = "pixels" if bake else "images"
        write_atomically(path, lambda tmp: torch.onnx.export(
            graph, (example,), str(tmp), input_names=[name], output_names=["logits"],
            dynamic_axes={name: {0: "batch"}, "logits": {0: "batch"}}, dynamo=False))
    if not bake and preprocessing is not None:
        atomic_write_text(f"{path}.preprocessing.json", json.dumps(preprocessing, indent=2))
    return path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint of train.py or prune.py (e.g. final.ckpt)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="onnx")
    parser.add_argument("--out", help="output file (default: beside the checkpoint, named after it)")
    parser.add_argument("--no-bake", action="store_true", help="leave the preprocessing out of the graph")
    args = parser.parse_args(argv)
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        parser.error(f"checkpoint {checkpoint} does not exist")
    module = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    out = Path(args.out) if args.out else checkpoint.with_suffix(FORMATS[args.format])
    path = export_network(module, out, args.format, bake=not args.no_bake)
    print(f"exported {checkpoint} to {path} ({args.format}, preprocessing "
          f"{'baked in: the input is raw pixel values 0-255' if not args.no_bake else 'in ' + str(path) + '.preprocessing.json'})")
    return path


if __name__ == "__main__":
    main()
