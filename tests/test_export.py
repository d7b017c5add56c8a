"""Using a pruned network outside the framework: the checkpoint records the input preprocessing, and export bakes
it into the graph (or writes it beside); exported outputs equal the checkpoint's on real digits test images."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch

from infoprune.callbacks.masking import save_weights_checkpoint
from infoprune.datamodules import DigitsDataModule
from infoprune.export import main
from infoprune.models.classifier import ImageClassifier
from infoprune.pruning.layers import find_prunable_layers
from infoprune.pruning.metrics import InputL1
from infoprune.pruning.selection import select_layerwise
from tests.conftest import ROOT, slim_classifier


@pytest.fixture(scope="module")
def slimmed_checkpoint(tmp_path_factory, digits_baseline):
    out = tmp_path_factory.mktemp("export")
    module = ImageClassifier.load_from_checkpoint(digits_baseline, weights_only=False)
    layers = find_prunable_layers(module.net, module.example_input_array)
    slim_classifier(module, select_layerwise({l.name: InputL1()(l) for l in layers}, layers, 0.5))
    return save_weights_checkpoint(module, out / "slim.ckpt")


def digits_test_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    dm = DigitsDataModule()
    dm.setup("test")
    return dm.test_set.images[:64], dm.transform_batch(dm.test_set.images[:64], train=False)


def export(checkpoint, out, *args, command_line: bool = False) -> str:
    """What ``python -m infoprune.export CHECKPOINT --out OUT ARGS`` prints: run as that command when
    ``command_line`` (the entry point itself), else through its ``main`` in this process."""
    argv = [str(checkpoint), "--out", str(out), *args]
    if command_line:
        result = subprocess.run([sys.executable, "-m", "infoprune.export", *argv], capture_output=True, text=True,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(argv)
    return printed.getvalue()


def test_the_checkpoint_records_the_datamodules_preprocessing(slimmed_checkpoint):
    saved = torch.load(slimmed_checkpoint, weights_only=False)["hyper_parameters"]["preprocessing"]
    dm = DigitsDataModule()
    assert saved == {"scale": 1 / 255, "mean": list(dm.mean), "std": list(dm.std)}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_baked_export_takes_raw_pixels_and_equals_the_checkpoint(slimmed_checkpoint, tmp_path, fmt):
    pixels, normalised = digits_test_pixels()
    module = ImageClassifier.load_from_checkpoint(slimmed_checkpoint, weights_only=False).eval()
    with torch.no_grad():
        expected = module(normalised)
    out = tmp_path / f"net.{fmt}"
    assert "baked in" in export(slimmed_checkpoint, out, "--format", fmt, command_line=fmt == "onnx")
    if fmt == "onnx":
        runtime = onnxruntime.InferenceSession(str(out))
        got = torch.from_numpy(runtime.run(None, {"pixels": pixels.numpy().astype(np.float32)})[0])
    else:
        got = torch.jit.load(str(out))(pixels.float())
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_unbaked_export_writes_the_preprocessing_beside(slimmed_checkpoint, tmp_path):
    pixels, normalised = digits_test_pixels()
    out = tmp_path / "net.onnx"
    export(slimmed_checkpoint, out, "--no-bake")
    preprocessing = json.loads((tmp_path / "net.onnx.preprocessing.json").read_text())
    mean, std = (torch.tensor(preprocessing[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    by_hand = (pixels.float() * preprocessing["scale"] - mean) / std
    torch.testing.assert_close(by_hand, normalised)
    runtime = onnxruntime.InferenceSession(str(out))
    got = torch.from_numpy(runtime.run(None, {"images": by_hand.numpy()})[0])
    module = ImageClassifier.load_from_checkpoint(slimmed_checkpoint, weights_only=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(got, module(normalised), atol=1e-4, rtol=1e-4)
