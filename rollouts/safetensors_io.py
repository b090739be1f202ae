"""Write (name, tensor) pairs as one safetensors file, one tensor in memory at a time.

`safetensors.torch.save_file` wants a dict of non-overlapping tensors, so the
per-expert views that the MoE name conversion produces (slices of the fused
trainer parameters) would all have to be cloned first: a full extra copy of
the model. The format is simple enough to stream instead: an 8-byte header
length, a JSON header of dtype/shape/byte offsets, then the raw bytes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Sequence

_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
           "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def write_safetensors(path: str | Path, tensors: Sequence[tuple[str, "object"]]) -> int:
    """Write the tensors (CPU copies made one at a time); returns bytes written."""
    import torch

    header: dict = {}
    offset = 0
    for name, t in tensors:
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise ValueError(f"{name}: dtype {t.dtype} has no safetensors code")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, t in tensors:
            t = t.detach().to("cpu").contiguous()
            raw = t.view(torch.uint8) if t.element_size() == 1 else t.view(-1).view(torch.uint8)
            f.write(memoryview(raw.numpy()))
    return 8 + len(blob) + offset
