"""Config helpers: building lists of objects, flattening for loggers, printing the resolved tree."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import rich
import rich.syntax
import rich.tree
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from infoprune.io import write_atomically


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a config group such as ``callbacks`` or ``logger``."""
    if not cfg:
        return []
    return [instantiate(entry) for entry in cfg.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values, so every override is one filterable key."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def resolved(cfg: DictConfig) -> dict:
    """The config as plain containers with every interpolation resolved."""
    return OmegaConf.to_container(cfg, resolve=True)


def command_line_overrides() -> list[str] | None:
    """The overrides this job was launched with (Hydra's task overrides), or None outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


@rank_zero_only
def print_config_tree(cfg: DictConfig, save_dir: str | Path | None = None) -> None:
    """Print the resolved config as a rich tree (one branch per top-level group) and save it as
    ``config_tree.log`` and ``config_resolved.yaml`` in ``save_dir``, with the job's command-line overrides as
    ``overrides.yaml`` when it runs under Hydra. Called once the config has been checked: Hydra's own ``.hydra``
    record is switched off (``conf/hydra/default.yaml``) because Hydra writes it before any check, and a rejected
    rerun must leave a finished run's directory as it was."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    first = [k for k in ("datamodule", "model", "pruning", "trainer", "callbacks", "logger", "paths") if k in cfg]
    for key in first + [k for k in cfg if k not in first]:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(key, style="dim", guide_style="dim").add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
    if save_dir is not None:
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(save_dir / "config_tree.log", lambda tmp: rich_print_to(tree, tmp))
        write_atomically(save_dir / "config_resolved.yaml", lambda tmp: OmegaConf.save(cfg, tmp, resolve=True))
        overrides = command_line_overrides()
        if overrides is not None:
            write_atomically(save_dir / "overrides.yaml", lambda tmp: OmegaConf.save(OmegaConf.create(overrides), tmp))


def rich_print_to(renderable: Any, path: Path) -> None:
    """``renderable`` as rich prints it, written to the file at ``path``."""
    with open(path, "w") as file:
        rich.print(renderable, file=file)
