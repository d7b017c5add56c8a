"""Any ``nn.Module`` factory as the classifier's network: our models, torchvision's, timm-style constructors or a
user's own class, sized for the data by arguments where the factory takes them and by adapting its first
convolution and its classifier head where it does not."""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch.nn as nn
from hydra.utils import get_object, instantiate

#: packages that were importable at the top level before they moved under ``infoprune`` (older checkpoints name
#: their networks so)
MOVED = ("models.", "datamodules.", "pruning.", "callbacks.")
#: arguments a factory takes ``**kwargs`` for by convention (torchvision and timm both take ``num_classes``)
CONVENTIONAL_KWARGS = ("num_classes",)


def _accepted(factory: Callable[..., Any], names: tuple[str, ...]) -> set[str]:
    """Which of ``names`` the factory accepts: a named parameter, or through ``**kwargs`` the conventional ones."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C extension: pass nothing it may not take
        return set()
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return {n for n in names if n in parameters or (var_kw and n in CONVENTIONAL_KWARGS)}


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def adapt_input_channels(net: nn.Module, in_channels: int) -> str | None:
    """Rebuild the first convolution (in module order) for ``in_channels`` inputs, same kernel, stride, padding and
    outputs, freshly initialised; returns its name when it had another number of inputs, else None."""
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return None
            if module.groups != 1:
                raise ValueError(f"cannot adapt the grouped first convolution {name!r} to {in_channels} inputs")
            _replace(net, name, nn.Conv2d(in_channels, module.out_channels, module.kernel_size, module.stride,
                                          module.padding, module.dilation, bias=module.bias is not None,
                                          padding_mode=module.padding_mode))
            return name
    return None


def adapt_num_classes(net: nn.Module, num_classes: int) -> str | None:
    """Rebuild the last linear layer (in module order) with ``num_classes`` outputs, freshly initialised; returns
    its name when it had another number of outputs, else None."""
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1][1].out_features == num_classes:
        return None
    name, head = linears[-1]
    _replace(net, name, nn.Linear(head.in_features, num_classes, bias=head.bias is not None))
    return name


def build_network(config: dict, num_classes: int, in_channels: int) -> nn.Module:
    """The network of ``config`` (a dict with ``_target_``) for ``num_classes`` classes and ``in_channels`` input
    channels.

    ``num_classes`` and ``in_channels`` are passed to the factory where its signature names them (``num_classes``
    also where it takes ``**kwargs``, as torchvision and timm builders do). Otherwise the network is adapted after
    construction: its first convolution is rebuilt for ``in_channels`` inputs, its last linear layer for
    ``num_classes`` outputs (both freshly initialised, only when their size differs). Anything that is not an
    ``nn.Module`` is an error.
    """
    target = config.get("_target_")
    try:
        factory = get_object(target)
    except Exception as error:  # noqa: BLE001 - Hydra raises several kinds for a bad path
        if not str(target).startswith(MOVED):
            raise ValueError(f"model.net._target_ {target!r} cannot be imported: {error}") from None
        target = f"infoprune.{target}"  # a checkpoint written before our packages moved under infoprune
        config = {**config, "_target_": target}
        factory = get_object(target)
    sizes = {"num_classes": num_classes, "in_channels": in_channels}
    accepted = _accepted(factory, tuple(sizes))
    net = instantiate({k: v for k, v in config.items() if k not in sizes}, **{k: sizes[k] for k in accepted})
    if not isinstance(net, nn.Module):
        raise TypeError(f"model.net._target_ {target!r} built a {type(net).__name__}, not a torch.nn.Module")
    if "in_channels" not in accepted:
        adapt_input_channels(net, in_channels)
    if "num_classes" not in accepted:
        adapt_num_classes(net, num_classes)
    return net
