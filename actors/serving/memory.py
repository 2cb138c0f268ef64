"""Memory accounting of a Serve replica for `GET /v1/stats`: resident set size and (on request) the bytes of every
live tensor."""

from __future__ import annotations

import gc
import os
import warnings


def tensor_bytes() -> int:
    """Bytes of every distinct tensor storage alive in this process (CPU memory accounting)."""
    import torch

    gc.unfreeze()  # objects Serve froze at start-up are invisible to gc.get_objects()
    seen: dict[int, int] = {}
    with warnings.catch_warnings():  # isinstance() on deprecated torch module attributes warns
        warnings.simplefilter("ignore", FutureWarning)
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in tensors:
        if obj.device.type != "meta":
            try:
                storage = obj.untyped_storage()
            except RuntimeError:  # tensors without storage (e.g. sparse / functional wrappers)
                continue
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
