"""Real sparse storage of a connection-pruned network: every pruned weight matrix (``out x rest``) in compressed
sparse row form, everything else dense, in one ``torch.save`` file.

Index encodings:
* ``absolute``: column indices in the smallest unsigned type that holds them (uint8/int16/int32 as needed) and int32
  row pointers.
* ``relative8``: Deep Compression's scheme (Han et al. 2016): each index is the 8-bit gap to the previous nonzero
  of its row; a gap over 255 inserts filler zeros. Row lengths (int32) replace row pointers.
Values are stored as float32 (``float16`` halves them; outputs then match to float16 precision only).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from infoprune.io import atomic_save

FORMAT = "infoprune.sparse/1"


def _index_dtype(limit: int) -> torch.dtype:
    return torch.uint8 if limit <= 256 else torch.int16 if limit <= 32768 else torch.int32


def encode(weight: torch.Tensor, indices: str = "absolute", values_dtype: torch.dtype = torch.float32) -> dict:
    """One weight tensor in CSR form (rows = output neurons)."""
    matrix = weight.detach().reshape(weight.shape[0], -1).cpu()
    rows, cols = matrix.nonzero(as_tuple=True)
    entry = {"shape": list(weight.shape), "encoding": indices}
    if indices == "absolute":
        entry["values"] = matrix[rows, cols].to(values_dtype)
        entry["cols"] = cols.to(_index_dtype(matrix.shape[1]))
        entry["row_ptr"] = torch.cat([torch.zeros(1, dtype=torch.int64), torch.bincount(rows, minlength=matrix.shape[0])
                                      .cumsum(0)]).to(torch.int32)
        return entry
    if indices != "relative8":
        raise ValueError(f"unknown index encoding {indices!r}; choose absolute or relative8")
    values, gaps, lengths = [], [], []
    for r in range(matrix.shape[0]):
        row_cols = cols[rows == r].tolist()
        previous, length = -1, 0
        for c in row_cols:
            gap = c - previous
            while gap > 255:  # filler zero 255 positions ahead
                values.append(0.0), gaps.append(255)
                gap, length = gap - 255, length + 1
            values.append(matrix[r, c].item()), gaps.append(gap)
            previous, length = c, length + 1
        lengths.append(length)
    entry["values"] = torch.tensor(values, dtype=values_dtype)
    entry["gaps"] = torch.tensor(gaps, dtype=torch.uint8)
    entry["row_lengths"] = torch.tensor(lengths, dtype=torch.int32)
    return entry


def decode(entry: dict) -> torch.Tensor:
    """The dense float32 weight tensor of an ``encode`` entry."""
    shape = entry["shape"]
    rows_n, cols_n = shape[0], int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1
    dense = torch.zeros(rows_n, cols_n, dtype=torch.float32)
    values = entry["values"].float()
    if entry["encoding"] == "absolute":
        counts = (entry["row_ptr"][1:] - entry["row_ptr"][:-1]).long()
        rows = torch.repeat_interleave(torch.arange(rows_n), counts)
        dense[rows, entry["cols"].long()] = values
    else:
        lengths = entry["row_lengths"].long()
        rows = torch.repeat_interleave(torch.arange(rows_n), lengths)
        position = entry["gaps"].long().cumsum(0)  # running sum of gaps over all rows
        before_row = torch.cat([torch.zeros(1, dtype=torch.long), position])[lengths.cumsum(0) - lengths]
        cols = position - 1 - before_row[rows]
        dense[rows, cols] += values
    return dense.view(shape)


def save_sparse(state_dict: dict[str, torch.Tensor], sparse_keys: list[str], path: str | os.PathLike,
                indices: str = "absolute", values_dtype: torch.dtype = torch.float32) -> Path:
    """Write ``state_dict`` with the tensors in ``sparse_keys`` in CSR form (atomically)."""
    payload = {"format": FORMAT, "sparse": {k: encode(state_dict[k], indices, values_dtype) for k in sparse_keys},
               "dense": {k: v.detach().cpu() for k, v in state_dict.items() if k not in sparse_keys}}
    return atomic_save(payload, path)


def load_sparse(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The dense ``state_dict`` of a file written by ``save_sparse``."""
    payload = torch.load(path, weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    return {**payload["dense"], **{k: decode(v) for k, v in payload["sparse"].items()}}
