"""What identifies a pruning job's settings: the key a resumed or rerun job must share with its earlier run, the
digest stored in ``results.json``, the baseline cache entry a trained network is shared under, and the
recognition of a finished run."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from infoprune.config import resolved

#: settings added after runs were recorded (by their path in the config), each with the value that does what those
#: runs did: at that value a setting is left out of :func:`resume_key`, so that their records still match the
#: settings that reproduce them
SETTINGS_ADDED = {("pruning", "recalibrate_bn_augment"): False,
                  ("finetune", "distill"): {"alpha": 0.0, "temperature": 4.0},
                  ("pruning", "stats", "buffer_images"): 2048,  # speed and memory only: the statistics are the same
                  ("pruning", "scope", "latency"): {"batch_size": 64, "repeats": 15,
                                                    "fractions": [0.125, 0.25, 0.5, 0.75, 1.0], "tolerance": 0.03,
                                                    "rounds": 5}}

#: datamodule settings that say where the data lives (and whether to fetch it), not what it is: left out of every
#: key, so that a run, a record or a cached baseline is recognised on a machine that keeps the data elsewhere
DATA_LOCATION = ("data_dir", "cache_dir", "download")

def data_identity(datamodule: dict) -> dict:
    """The resolved datamodule settings less :data:`DATA_LOCATION`: the data and how it is split, batched and
    augmented."""
    return {name: value for name, value in datamodule.items() if name not in DATA_LOCATION}

def network_digest(model: torch.nn.Module) -> str:
    """md5 of every tensor of ``model``'s state dict (names, shapes and bytes): equal exactly when the networks are."""
    digest = hashlib.md5()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

def resume_key(cfg: DictConfig) -> dict:
    """The settings a resumed run must share with the interrupted one (and a finished run with its rerun), less
    the data's location (:func:`data_identity`) and those of :data:`SETTINGS_ADDED` at their earlier behaviour's
    value."""
    full = resolved(cfg)
    key = {name: full.get(name) for name in ("model", "pruning", "finetune", "ckpt_path", "seed")}
    key["datamodule"] = data_identity(full["datamodule"])
    key = copy.deepcopy(key)
    for (*sections, name), earlier in SETTINGS_ADDED.items():
        parent = key
        for section in sections:
            parent = parent.get(section) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and name in parent and parent[name] == earlier:
            del parent[name]
    return key

def settings_digest(cfg: DictConfig) -> str:
    """A short hash of :func:`resume_key`, stored in ``results.json`` to recognise a finished run."""
    return hashlib.sha1(json.dumps(resume_key(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]

def baseline_cache_file(cfg: DictConfig) -> Path | None:
    """``<baseline_cache>/<hash>.ckpt`` for the settings that determine a trained baseline (model, optimizer and
    scheduler, data (:func:`data_identity`), training epochs, seed), or None when ``baseline_cache`` is unset."""
    if not cfg.get("baseline_cache"):
        return None
    full = resolved(cfg)
    key = {"model": full["model"], "datamodule": data_identity(full["datamodule"]),
           "epochs": full["trainer"]["max_epochs"], "seed": full.get("seed")}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cfg.baseline_cache) / f"baseline-{digest}.ckpt"

def finished_results(cfg: DictConfig) -> dict[str, Any] | None:
    """``results.json`` of a finished run with these settings in ``cfg``'s output directory, else None; a finished
    run with other settings there is an error (it would be overwritten)."""
    path = Path(cfg.paths.output_dir) / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    if results.get("settings_digest") != settings_digest(cfg):
        raise ValueError(f"{path.parent} holds a finished run with other settings; choose another output directory "
                         f"(hydra.run.dir=...) to keep both")
    return results
