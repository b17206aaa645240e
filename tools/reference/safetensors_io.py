"""A small safetensors reader/writer (numpy + struct + json only).

File layout (little-endian): u64 N, N bytes of JSON header
    {"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...,
     "__metadata__": {"key": "value", ...}}
then the data buffer (offsets relative to its start). The header is padded with spaces to a
multiple of 8 bytes.

Supported dtypes: F64, F32, F16, BF16. BF16 is written by rounding float32 to nearest-even and
read back as float32 (numpy has no bfloat16).
"""

import json
import os
import struct

import numpy as np

_NUMPY_DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2")}
_ITEM_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def _to_numpy(x):
    """numpy array from a numpy array, a torch tensor (bfloat16 included) or a nested list."""
    if isinstance(x, np.ndarray):
        return x
    try:
        import torch  # optional
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            if x.dtype == torch.bfloat16:
                x = x.to(torch.float32)
            return x.numpy()
    except ImportError:
        pass
    return np.asarray(x)


def _default_dtype(x):
    try:
        import torch
        if isinstance(x, torch.Tensor):
            return {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
                    torch.bfloat16: "BF16"}.get(x.dtype, "F32")
    except ImportError:
        pass
    a = np.asarray(x)
    return {np.dtype("float64"): "F64", np.dtype("float16"): "F16"}.get(a.dtype, "F32")


def _f32_to_bf16_bits(a):
    bits = np.ascontiguousarray(a, dtype="<f4").view("<u4").astype(np.uint64)
    nan = np.isnan(a.astype(np.float32))
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    out = rounded.astype("<u2")
    out[nan] = 0x7FC0
    return out


def _bf16_bits_to_f32(bits):
    return (bits.astype("<u4") << 16).view("<f4")


def encode(tensors, metadata=None, dtypes=None):
    """Bytes of a safetensors file. tensors: name -> array-like; dtypes: optional name -> dtype
    string (default: F64/F16/BF16 kept, everything else F32); metadata: str -> str."""
    dtypes = dtypes or {}
    header = {}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        if name == "__metadata__":
            raise ValueError("'__metadata__' is not a tensor name")
        x = tensors[name]
        dt = dtypes.get(name) or _default_dtype(x)
        if dt not in _ITEM_SIZE:
            raise ValueError(f"unsupported dtype {dt} for tensor {name}")
        a = _to_numpy(x)
        if dt == "BF16":
            raw = _f32_to_bf16_bits(a.astype(np.float32)).tobytes()
        else:
            raw = np.ascontiguousarray(a, dtype=_NUMPY_DTYPES[dt]).tobytes()
        header[name] = {"dtype": dt, "shape": [int(s) for s in a.shape],
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(f"metadata must map strings to strings, got {key!r}: {value!r}")
        header["__metadata__"] = dict(metadata)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)
    return struct.pack("<Q", len(hbytes)) + hbytes + b"".join(chunks)


def write_safetensors(path, tensors, metadata=None, dtypes=None):
    """Writes the file atomically (temporary file, then rename)."""
    data = encode(tensors, metadata, dtypes)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def decode(data, name="<bytes>"):
    """(tensors, metadata, dtypes) from the bytes of a safetensors file; tensors are numpy
    arrays (BF16 converted to float32)."""
    if len(data) < 8:
        raise ValueError(f"{name}: too short for a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{name}: header length {n} exceeds the file size {len(data)}")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError(f"{name}: the header is not a JSON object")
    buf = data[8 + n:]
    metadata = header.pop("__metadata__", None) or {}
    tensors, dtypes = {}, {}
    for tname, info in header.items():
        dt = info["dtype"]
        if dt not in _ITEM_SIZE:
            raise ValueError(f"{name}: tensor {tname}: unsupported dtype {dt}")
        shape = [int(s) for s in info["shape"]]
        begin, end = (int(o) for o in info["data_offsets"])
        count = int(np.prod(shape)) if shape else 1
        if not 0 <= begin <= end <= len(buf) or end - begin != count * _ITEM_SIZE[dt]:
            raise ValueError(f"{name}: tensor {tname}: bad data_offsets {begin}..{end} for {dt} {shape}")
        raw = buf[begin:end]
        if dt == "BF16":
            a = _bf16_bits_to_f32(np.frombuffer(raw, dtype="<u2"))
        else:
            a = np.frombuffer(raw, dtype=_NUMPY_DTYPES[dt]).copy()
        tensors[tname] = a.reshape(shape)
        dtypes[tname] = dt
    return tensors, metadata, dtypes


def read_safetensors(path):
    """(tensors, metadata): numpy arrays by name and the string -> string metadata."""
    with open(path, "rb") as f:
        data = f.read()
    tensors, metadata, _ = decode(data, path)
    return tensors, metadata
