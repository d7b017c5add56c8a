"""Building the datamodule and the classifier of a composed config, and reading checkpoints into them."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from infoprune.datamodules.base import ImageDataModule
from infoprune.models.classifier import ImageClassifier


def build_datamodule(cfg: DictConfig) -> ImageDataModule:
    """The datamodule of ``cfg``, with its files checked (a clear error, before any work, when data is missing)."""
    try:
        datamodule = instantiate(cfg.datamodule)
    except InstantiationException as error:  # the datamodule's own error (a bad data_dir, a bad fraction) as is
        raise (error.__cause__ or error) from None
    if not datamodule.download:
        datamodule.check_files()
    return datamodule


def first_line(error: BaseException) -> str:
    """The exception's type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def read_checkpoint(path: str) -> dict:
    """A checkpoint's contents (on the CPU), loaded with ``weights_only=True`` (tensors and plain values only:
    unpickling nothing that could run code), or a one-line error naming the file and what is wrong with it: missing,
    unreadable (truncated, not a PyTorch file), holding other objects, without weights, or with NaN/Inf weights."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"checkpoint {path} holds objects other than tensors and plain values, which are not "
                         f"unpickled ({first_line(error)})") from None
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ... for a damaged file
        raise ValueError(f"checkpoint {path} cannot be read: the file is truncated or not a PyTorch checkpoint "
                         f"({first_line(error)})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"checkpoint {path} holds no state_dict: it is not a checkpoint of train.py or prune.py")
    bad = [k for k, v in checkpoint["state_dict"].items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"checkpoint {path} has NaN or Inf weights in {len(bad)} tensor(s), e.g. {bad[0]}: the "
                         f"training that wrote it diverged")
    return checkpoint


def check_checkpoint_fits(model: ImageClassifier, checkpoint: dict, path: str) -> None:
    """Raise ``ValueError`` naming the differences when ``checkpoint``'s weights do not fit ``model``."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    problems = [f"{k}: checkpoint {found.get(k)}, config {expected.get(k)}"
                for k in sorted(set(expected) | set(found)) if expected.get(k) != found.get(k)]
    if problems:
        net = checkpoint.get(ImageClassifier.CHECKPOINT_HYPER_PARAMS_KEY, {}).get("net", {})
        raise ValueError(f"checkpoint {path} does not fit the model config ({len(problems)} mismatched tensors, e.g. "
                         f"{'; '.join(problems[:3])}). The checkpoint holds {net.get('_target_')} with "
                         f"{ {k: v for k, v in net.items() if k != '_target_'} }.")


def source_checkpoint(cfg: DictConfig) -> dict | None:
    """The contents of the checkpoint a run starts from (``init_from``, else ``ckpt_path``), None without one."""
    source = cfg.get("init_from") or cfg.get("ckpt_path")
    return read_checkpoint(source) if source else None


def build_model(cfg: DictConfig, datamodule: ImageDataModule, checkpoint: dict | None = None) -> ImageClassifier:
    """The classifier of ``cfg.model``, sized for ``datamodule`` (classes, input channels, input shape).

    With ``init_from`` (start a new fit from these weights) or ``ckpt_path`` (resume), the structure comes from the
    checkpoint (a slimmed network rebuilds without the user knowing them), and a checkpoint that does not fit the
    config is an error before any work. The checkpoint's weights are loaded (``train=false`` then tests them).
    ``checkpoint``: that checkpoint's contents when already read (:func:`source_checkpoint`), so that a run reads
    the file once; read here when None."""
    net_args = {"num_classes": datamodule.num_classes, "in_channels": datamodule.in_channels}
    source = cfg.get("init_from") or cfg.get("ckpt_path")
    if checkpoint is None and source:
        checkpoint = read_checkpoint(source)
    structure = None
    if checkpoint is not None:
        saved = checkpoint.get(ImageClassifier.CHECKPOINT_HYPER_PARAMS_KEY, {})
        if saved.get("net", {}).get("_target_") == cfg.model.net.get("_target_"):
            structure = saved.get("structure")
            if saved["net"].get("channels") is not None:  # widths given to the network itself (our own models)
                net_args["channels"] = list(saved["net"]["channels"])
    try:
        model = instantiate(cfg.model, net=net_args, input_shape=list(datamodule.input_shape), structure=structure,
                            preprocessing=datamodule.preprocessing)
    except InstantiationException as error:  # the network's own error (not a module, a bad argument) as is
        cause = error.__cause__ or error
        if structure is not None and isinstance(cause, ValueError) and "structure record" in str(cause):
            raise ValueError(f"checkpoint {source}: {cause}") from None
        raise cause from None
    if checkpoint is not None:
        check_checkpoint_fits(model, checkpoint, source)
        model.load_state_dict(checkpoint["state_dict"])
    return model
