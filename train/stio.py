"""Minimal safetensors reader/writer (no `safetensors` package needed).

Format: u64 little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
then the raw little-endian tensor bytes; offsets are relative to byte 8+N and the
tensors cover that region contiguously. The header is padded with spaces to a
multiple of 8 bytes, as the reference library does.
"""
import json
import struct

import numpy as np
import torch

_DT = {  # safetensors dtype -> (torch dtype, numpy dtype used to carry the bytes)
    "F64": (torch.float64, np.float64),
    "F32": (torch.float32, np.float32),
    "F16": (torch.float16, np.float16),
    "BF16": (torch.bfloat16, np.int16),
    "I64": (torch.int64, np.int64),
    "I32": (torch.int32, np.int32),
    "I16": (torch.int16, np.int16),
    "U8": (torch.uint8, np.uint8),
}
_NAME = {v[0]: k for k, v in _DT.items()}


def _tensor_bytes(t):
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes()


def save(tensors, path, metadata=None):
    """Write {name: tensor} to path. Tensors are stored in name order."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in _NAME:
            raise ValueError(f"{name}: dtype {t.dtype} not supported")
        b = _tensor_bytes(t)
        header[name] = {"dtype": _NAME[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((-len(hj)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)


def load(path, with_metadata=False):
    """Read a safetensors file into {name: torch tensor} (copies; checks the layout)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: shorter than 8 bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or n > 100 << 20:
        raise ValueError(f"{path}: header length {n} does not fit the file")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out, spans = {}, []
    for name, info in header.items():
        tdt, ndt = _DT[info["dtype"]]
        b, e = info["data_offsets"]
        shape = info["shape"]
        count = int(np.prod(shape)) if shape else 1
        if e - b != count * np.dtype(ndt).itemsize or base + e > len(data) or b < 0:
            raise ValueError(f"{path}: tensor {name} has bad offsets {b}..{e}")
        arr = np.frombuffer(data, dtype=np.dtype(ndt).newbyteorder("<"), count=count,
                            offset=base + b).astype(ndt).reshape(shape)
        t = torch.from_numpy(arr.copy())
        if tdt == torch.bfloat16:
            t = t.view(torch.bfloat16)
        out[name] = t
        spans.append((b, e))
    spans.sort()
    pos = 0
    for b, e in spans:
        if b != pos:
            raise ValueError(f"{path}: tensor data not contiguous at {b}")
        pos = e
    if base + pos != len(data):
        raise ValueError(f"{path}: {len(data) - base - pos} trailing bytes")
    return (out, meta) if with_metadata else out
