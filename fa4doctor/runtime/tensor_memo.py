"""What was read out of a tensor's values, kept while that very tensor lives unchanged.

Reading a device tensor's values (`tolist`, `.item()`, `nonzero`) waits for the device, and a job
hands every layer of a step the same mask and `cu_seqlens` tensors. A value is kept under the
tensor's identity with a weak reference to it (a new tensor at a reused `id` is never taken for the
old one) and its version counter, which every in-place write through torch bumps; a bounded number
are kept, the oldest dropped first.

>>> import torch
>>> memo, t = TensorMemo(limit=2), torch.tensor([0, 3, 5])
>>> memo.get(t) is None
True
>>> memo.put(t, t.tolist())
[0, 3, 5]
>>> memo.get(t)
[0, 3, 5]
>>> t[1] = 4  # an in-place write: read again
>>> memo.get(t) is None
True
"""

from __future__ import annotations

import weakref
from typing import Any, Hashable

import torch


class TensorMemo:
    def __init__(self, limit: int):
        self._limit = limit
        self._kept: dict[tuple[int, Hashable], tuple[weakref.ref, int, Any]] = {}

    def get(self, tensor: torch.Tensor, extra: Hashable = None) -> Any:
        """The value put for `tensor` (and `extra`), or None if it died, changed or was dropped."""
        kept = self._kept.get((id(tensor), extra))
        if kept is not None and kept[0]() is tensor and kept[1] == tensor._version:
            return kept[2]
        return None

    def put(self, tensor: torch.Tensor, value: Any, extra: Hashable = None) -> Any:
        if len(self._kept) >= self._limit:
            self._kept.pop(next(iter(self._kept)))
        self._kept[(id(tensor), extra)] = (weakref.ref(tensor), tensor._version, value)
        return value

    def __len__(self) -> int:
        return len(self._kept)
