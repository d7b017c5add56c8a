"""Entropy and mutual information of discretised channel activations, from histogram counts (natural log, nats).

All functions take counts with the channel as the leading dimension and compute in float64; empty cells
contribute 0 (``0 log 0 = 0``)."""
from __future__ import annotations

import torch


def _xlogx_ratio(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``p * log(p / q)`` elementwise, 0 where ``p == 0``."""
    safe = torch.where(p > 0, p / torch.where(q > 0, q, 1.0), 1.0)
    return torch.where(p > 0, p * torch.log(safe), 0.0)


def entropy(counts: torch.Tensor) -> torch.Tensor:
    """``H = -sum_i p_i log p_i`` along the last dimension, with ``p = counts / counts.sum()``; 0 for an empty row."""
    counts = counts.double()
    total = counts.sum(-1, keepdim=True)
    p = counts / torch.where(total > 0, total, 1.0)
    return -_xlogx_ratio(p, torch.ones_like(p)).sum(-1)


def _joint_and_marginals(joint_counts: torch.Tensor):
    counts = joint_counts.double()
    total = counts.sum((-2, -1), keepdim=True)
    p_fy = counts / torch.where(total > 0, total, 1.0)
    return p_fy, p_fy.sum(-1, keepdim=True), p_fy.sum(-2, keepdim=True)


def mutual_information(joint_counts: torch.Tensor) -> torch.Tensor:
    """``I(F;Y) = sum_{f,y} p(f,y) log(p(f,y) / (p(f) p(y))) = H(F) - H(F|Y)`` for counts of shape
    ``(channels, bins, classes)``; one value per channel, in ``[0, min(H(F), log K)]``."""
    p_fy, p_f, p_y = _joint_and_marginals(joint_counts)
    return _xlogx_ratio(p_fy, p_f * p_y).sum((-2, -1)).clamp_min(0.0)


def weighted_mutual_information(joint_counts: torch.Tensor, bin_weights: torch.Tensor) -> torch.Tensor:
    """Guiasu-style weighted mutual information
    ``I_w(F;Y) = sum_{f,y} w(f) p(f,y) log(p(f,y) / (p(f) p(y)))`` with one nonnegative weight per
    ``(channel, bin)``; equals ``I(F;Y)`` when every weight is 1."""
    p_fy, p_f, p_y = _joint_and_marginals(joint_counts)
    return (bin_weights.double()[..., None] * _xlogx_ratio(p_fy, p_f * p_y)).sum((-2, -1))
