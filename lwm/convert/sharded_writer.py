"""Write a sharded safetensors checkpoint one tensor at a time, in any order, holding none of it in memory.

The safetensors format is an 8-byte little-endian header length, a JSON header naming every tensor's
dtype, shape and byte range, then the raw bytes. Because every tensor's name, shape and dtype are known
before conversion starts, each shard's header is written first and each tensor is written at its
offset as soon as it exists. The shards and `model.safetensors.index.json` load with transformers'
`from_pretrained` (and `safetensors.safe_open`) like any other sharded checkpoint.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_NAME = "model.safetensors.index.json"
SAFETENSORS_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
BLOCK_BYTES = 16 * 2**20


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # "bfloat16", "float16" or "float32"

    @property
    def nbytes(self) -> int:
        itemsize = 4 if self.dtype == "float32" else 2
        return int(np.prod(self.shape, dtype=np.int64)) * itemsize


class ShardedSafetensorsWriter:
    """Lays the tensors out in order into shards of at most `max_shard_bytes` (a bigger tensor gets a
    shard of its own); `write(name, array)` puts one tensor's bytes in place."""

    def __init__(self, out_dir: str | os.PathLike, tensors: list[TensorSpec], max_shard_bytes: int):
        if max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        groups: list[list[TensorSpec]] = [[]]
        for spec in tensors:
            if spec.dtype not in SAFETENSORS_DTYPES:
                raise ValueError(
                    f"{spec.name}: dtype {spec.dtype} cannot be written (supported: {', '.join(SAFETENSORS_DTYPES)})"
                )
            if groups[-1] and sum(t.nbytes for t in groups[-1]) + spec.nbytes > max_shard_bytes:
                groups.append([])
            groups[-1].append(spec)
        self.specs = {spec.name: spec for spec in tensors}
        self._location: dict[str, tuple[int, int]] = {}  # name -> (file descriptor, absolute offset)
        self._pending = set(self.specs)
        self._files = []
        self.weight_map: dict[str, str] = {}
        for number, group in enumerate(groups, start=1):
            filename = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
            self._files.append(self._create_shard(self.out_dir / filename, group))
            self.weight_map.update({spec.name: filename for spec in group})

    def _create_shard(self, path: Path, group: list[TensorSpec]) -> int:
        header, offset = {}, 0
        for spec in group:
            header[spec.name] = {"dtype": SAFETENSORS_DTYPES[spec.dtype], "shape": list(spec.shape),
                                 "data_offsets": [offset, offset + spec.nbytes]}
            offset += spec.nbytes
        header["__metadata__"] = {"format": "pt"}
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, struct.pack("<Q", len(encoded)) + encoded)
        data_start = 8 + len(encoded)
        os.ftruncate(fd, data_start + offset)
        for spec in group:
            self._location[spec.name] = (fd, data_start + header[spec.name]["data_offsets"][0])
        return fd

    def write(self, name: str, array: np.ndarray) -> None:
        """Writes one tensor (C-order bytes of `array`; bfloat16 as uint16 bit patterns).

        `array` may be a strided view (a transposed kernel): it is copied out in blocks of rows of
        at most `BLOCK_BYTES`, so writing never holds a second copy of a big tensor.
        """
        spec = self.specs.get(name)
        if spec is None:
            raise KeyError(f"{name} is not one of the planned tensors")
        if name not in self._pending:
            raise ValueError(f"{name} was already written")
        if tuple(array.shape) != spec.shape or array.nbytes != spec.nbytes:
            raise ValueError(
                f"{name}: got shape {tuple(array.shape)} ({array.nbytes:,} bytes), planned {spec.shape} ({spec.nbytes:,} bytes)"
            )
        fd, offset = self._location[name]
        row_bytes = array.nbytes // len(array)
        rows_per_block = max(1, BLOCK_BYTES // row_bytes)
        for start in range(0, len(array), rows_per_block):
            block = memoryview(np.ascontiguousarray(array[start : start + rows_per_block])).cast("B")
            position = offset + start * row_bytes
            while block:
                written = os.pwrite(fd, block, position)
                block, position = block[written:], position + written
        self._pending.discard(name)

    def finish(self) -> None:
        """Closes the shards and writes the index; every planned tensor must have been written."""
        self.close()
        if self._pending:
            raise RuntimeError(f"tensors never written: {', '.join(sorted(self._pending)[:8])}")
        index = {"metadata": {"total_size": sum(s.nbytes for s in self.specs.values())}, "weight_map": self.weight_map}
        (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")

    def close(self) -> None:
        """Closes the shard files (also after a failure; `finish` is what completes a checkpoint)."""
        for fd in self._files:
            os.close(fd)
        self._files = []
