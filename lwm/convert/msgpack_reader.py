"""Read tux `StreamingCheckpointer` files (LWM's JAX checkpoints) with only `msgpack` and `numpy`.

The file is a run of msgpack records `[key, value]` (docs/official-weights.md#the-params-file): `key` is
the parameter path as a list
of strings, `value` is a bin holding a second, complete msgpack document, flax's `to_bytes(leaf)`:
an ndarray as ext type 1 (payload `[shape, dtype name, raw C-order bytes]`), a numpy scalar as ext
type 3, a plain msgpack value (`step`), or, for a leaf over 2**30 bytes, a "chunked array" map
`{"__msgpack_chunked_array__": true, "shape": {"0": ..}, "chunks": {"0": ext, ..}}`.

A 7B file holds records of ~3 GB, so `msgpack.Unpacker` (which copies a record several times on the
way to an array) is not used for values. `StreamingCheckpoint` walks the msgpack headers itself,
seeking past the raw bytes, and keeps for every array leaf its shape, dtype and where its bytes lie
in the file; `read` then fills one preallocated array straight from the file. Memory is one array,
never a copy of the record. Small plain values (a train state's `step`) are decoded with msgpack.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np

Key = tuple[str, ...]

CHUNKED_ARRAY_MARKER = "__msgpack_chunked_array__"
EXT_NDARRAY, EXT_NPSCALAR = 1, 3  # flax ext types of an ndarray and a numpy scalar (2, complex, is not used)

# numpy has no bfloat16: its leaves are kept as their uint16 bit patterns (see `bfloat16_to_float32`).
_STORAGE_DTYPES = {
    "bfloat16": np.dtype("<u2"),
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "uint32": np.dtype("<u4"),
    "bool": np.dtype("?"),
}


class CheckpointFormatError(ValueError):
    """The file is not a well-formed tux streaming checkpoint; the message names the file and the record."""


@dataclass(frozen=True)
class ArrayLeaf:
    """Where an array's bytes lie: `segments` are (file offset, byte count) runs of its C-order data."""

    key: Key
    shape: tuple[int, ...]
    dtype: str  # numpy's dtype name as flax wrote it, e.g. "bfloat16"
    segments: tuple[tuple[int, int], ...]
    record: int

    @property
    def nbytes(self) -> int:
        return sum(size for _, size in self.segments)

    @property
    def storage_dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.dtype]


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> the float32 values they encode (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


class StreamingCheckpoint:
    """An index of a streaming checkpoint, built in one pass that reads only the msgpack headers.

    `leaves` maps each key to an `ArrayLeaf` (read it with `read`) or, for plain values, to the value.
    Record order is the writer's dict order and is not relied upon.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {self.path}")
        self._file = open(self.path, "rb")
        self.size = os.fstat(self._file.fileno()).st_size
        try:
            self.leaves: dict[Key, ArrayLeaf | object] = {}
            self._index()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> "StreamingCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def read(self, leaf: ArrayLeaf) -> np.ndarray:
        """The leaf's array, read straight from the file into one buffer (bfloat16 as uint16 bits)."""
        buffer = np.empty(leaf.nbytes, dtype=np.uint8)
        position = 0
        for offset, size in leaf.segments:
            self._file.seek(offset)
            if self._file.readinto(memoryview(buffer)[position : position + size]) != size:
                raise CheckpointFormatError(f"{self.path}: record {leaf.record} ({'/'.join(leaf.key)}): file ends early")
            position += size
        return buffer.view(leaf.storage_dtype).reshape(leaf.shape)

    # ------------------------------------------------------------------ indexing

    def _index(self) -> None:
        if self.size == 0:
            raise CheckpointFormatError(f"{self.path}: empty file, not a streaming checkpoint")
        stream = _HeaderStream(self._file, self.size)
        record = 0
        while stream.offset < self.size:
            start = stream.offset
            key: Key = ()
            try:
                key = self._read_key(stream)
                if key in self.leaves:
                    raise _Malformed("the key appears twice in the file")
                self.leaves[key] = self._read_value(stream, key, record)
            except _Malformed as problem:
                where = f"record {record}" + (f" ({'/'.join(key)})" if key else "") + f" at byte {start}"
                hint = ""
                if record == 0 and not key:
                    hint = (" (a tux streaming checkpoint starts with a [key, value] msgpack pair; is this a pickle, "
                            "a safetensors file or a flax_params file?)")
                raise CheckpointFormatError(f"{self.path}: {where}: {problem}{hint}") from None
            record += 1

    @staticmethod
    def _read_key(stream: "_HeaderStream") -> Key:
        kind, count = stream.header()
        if (kind, count) != ("array", 2):
            raise _Malformed(f"expected a [key, value] pair, found msgpack {kind}")
        kind, length = stream.header()
        if kind != "array" or length == 0:
            raise _Malformed(f"expected the key as a non-empty list of strings, found msgpack {kind}")
        parts = []
        for _ in range(length):
            kind, size = stream.header()
            if kind not in ("str", "bin"):
                raise _Malformed(f"key component is a msgpack {kind}, not a string")
            parts.append(stream.read(size).decode("utf-8", errors="replace"))
        return tuple(parts)

    def _read_value(self, stream: "_HeaderStream", key: Key, record: int) -> ArrayLeaf | object:
        kind, size = stream.header()
        if kind not in ("bin", "str"):  # legacy packers write bytes as raw str
            raise _Malformed(f"expected the value as msgpack bin (flax to_bytes), found msgpack {kind}")
        end = stream.offset + size
        if end > self.size:
            raise _Malformed(f"the value claims {size:,} bytes but the file ends after {self.size - stream.offset:,}")
        first = stream.peek() if size else None
        if first is not None and _is_ext(first):
            value = self._read_ext_array(stream, key, record)
        elif first is not None and _is_map(first):
            value = self._read_chunked_array(stream, key, record)
        else:
            value = _decode_plain(stream.read(size))
        if stream.offset != end:
            raise _Malformed(f"the value document has {end - stream.offset:+,} bytes beyond what it encodes")
        return value

    def _read_ext_array(self, stream: "_HeaderStream", key: Key, record: int) -> ArrayLeaf:
        kind, value = stream.header()
        if kind != "ext":
            raise _Malformed(f"expected an array (msgpack ext), found msgpack {kind}")
        code, size = value
        if code not in (EXT_NDARRAY, EXT_NPSCALAR):
            raise _Malformed(f"msgpack ext type {code} is not a flax array (types 1 and 3)")
        payload_end = stream.offset + size
        if stream.header() != ("array", 3):
            raise _Malformed("an array payload must be [shape, dtype, bytes]")
        kind, rank = stream.header()
        if kind != "array":
            raise _Malformed(f"array shape is a msgpack {kind}, not a list")
        shape = tuple(stream.small_int() for _ in range(rank))
        kind, length = stream.header()
        if kind not in ("str", "bin"):
            raise _Malformed(f"array dtype is a msgpack {kind}, not a string")
        dtype = stream.read(length).decode("ascii", errors="replace")
        if dtype not in _STORAGE_DTYPES:
            raise _Malformed(f"unsupported array dtype {dtype!r}")
        kind, nbytes = stream.header()
        if kind not in ("bin", "str"):
            raise _Malformed(f"array data is a msgpack {kind}, not bytes")
        expected = int(np.prod(shape, dtype=np.int64)) * _STORAGE_DTYPES[dtype].itemsize
        if nbytes != expected:
            raise _Malformed(f"array of shape {shape} and dtype {dtype} needs {expected:,} bytes, the file holds {nbytes:,}")
        offset = stream.offset
        stream.skip(nbytes)
        if stream.offset != payload_end:
            raise _Malformed("the array payload is longer than its shape, dtype and bytes")
        return ArrayLeaf(key, shape, dtype, ((offset, nbytes),), record)

    def _read_chunked_array(self, stream: "_HeaderStream", key: Key, record: int) -> ArrayLeaf:
        """flax's chunked form of an array over 2**30 bytes: its 1-D chunks, concatenated, are the array."""
        kind, entries = stream.header()
        fields: dict[str, object] = {}
        for _ in range(entries):
            name = stream.small_str()
            if name == CHUNKED_ARRAY_MARKER:
                fields[name] = stream.small_value()
            elif name == "shape":
                fields[name] = [stream.small_int() for _ in self._numbered_entries(stream, "shape")]
            elif name == "chunks":
                fields[name] = [self._read_ext_array(stream, key, record) for _ in self._numbered_entries(stream, "chunks")]
            else:
                raise _Malformed(f"unexpected entry {name!r} in a value map (only flax chunked arrays are maps)")
        if fields.get(CHUNKED_ARRAY_MARKER) is not True or "shape" not in fields or "chunks" not in fields:
            raise _Malformed("a map value that is not a flax chunked array (needs the marker, 'shape' and 'chunks')")
        chunks: list[ArrayLeaf] = fields["chunks"]
        shape = tuple(fields["shape"])
        dtypes = {chunk.dtype for chunk in chunks}
        if len(dtypes) != 1 or any(len(chunk.shape) != 1 for chunk in chunks):
            raise _Malformed("chunks of a chunked array must be 1-D arrays of one dtype")
        leaf = ArrayLeaf(key, shape, dtypes.pop(), tuple(s for chunk in chunks for s in chunk.segments), record)
        if leaf.nbytes != int(np.prod(shape, dtype=np.int64)) * leaf.storage_dtype.itemsize:
            raise _Malformed(f"chunks hold {leaf.nbytes:,} bytes, not an array of shape {shape}")
        return leaf

    @staticmethod
    def _numbered_entries(stream: "_HeaderStream", field: str):
        """Iterates a flax `_tuple_to_dict` map ({"0": .., "1": ..}), checking the keys are in order."""
        kind, count = stream.header()
        if kind != "map":
            raise _Malformed(f"chunked array {field!r} is a msgpack {kind}, not a map")
        for index in range(count):
            name = stream.small_str()
            if name != str(index):
                raise _Malformed(f"chunked array {field!r} has entry {name!r} where {str(index)!r} belongs")
            yield index


class _Malformed(Exception):
    """A problem found while indexing; `StreamingCheckpoint` adds the file and record to the message."""


def _is_ext(byte: int) -> bool:
    return byte in (0xC7, 0xC8, 0xC9) or 0xD4 <= byte <= 0xD8


def _is_map(byte: int) -> bool:
    return 0x80 <= byte <= 0x8F or byte in (0xDE, 0xDF)


def _decode_plain(blob: bytes) -> object:
    """A value document that is not an array: a plain msgpack value (e.g. a train state's `step`)."""

    def refuse_ext(code, data):
        raise _Malformed(f"msgpack ext type {code} inside a plain value")

    try:
        return msgpack.unpackb(blob, raw=False, ext_hook=refuse_ext, strict_map_key=False)
    except _Malformed:
        raise
    except Exception as error:  # msgpack's ExtraData, FormatError, StackError, ValueError, ...
        raise _Malformed(f"the value is not a msgpack document ({type(error).__name__}: {error})") from None


# msgpack type bytes with a length (or value) field after them: byte -> (kind, struct format)
_SIZED = {
    0xC4: ("bin", ">B"), 0xC5: ("bin", ">H"), 0xC6: ("bin", ">I"),
    0xD9: ("str", ">B"), 0xDA: ("str", ">H"), 0xDB: ("str", ">I"),
    0xDC: ("array", ">H"), 0xDD: ("array", ">I"),
    0xDE: ("map", ">H"), 0xDF: ("map", ">I"),
    0xCA: ("float", ">f"), 0xCB: ("float", ">d"),
    0xCC: ("int", ">B"), 0xCD: ("int", ">H"), 0xCE: ("int", ">I"), 0xCF: ("int", ">Q"),
    0xD0: ("int", ">b"), 0xD1: ("int", ">h"), 0xD2: ("int", ">i"), 0xD3: ("int", ">q"),
}
_EXT_LENGTH = {0xC7: ">B", 0xC8: ">H", 0xC9: ">I"}
_FIXEXT_SIZE = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
_CONSTANTS = {0xC0: None, 0xC2: False, 0xC3: True}


class _HeaderStream:
    """Reads msgpack type headers (not payloads) from a file, tracking the offset."""

    def __init__(self, file, size: int):
        self._file = file
        self._size = size
        self.offset = 0
        file.seek(0)

    def read(self, size: int) -> bytes:
        data = self._file.read(size)
        if len(data) != size:
            raise _Malformed(f"the file ends inside the record ({self._size:,} bytes in all; truncated download?)")
        self.offset += size
        return data

    def skip(self, size: int) -> None:
        if self.offset + size > self._size:
            raise _Malformed(f"the file ends inside the record ({self._size:,} bytes in all; truncated download?)")
        self.offset += size
        self._file.seek(self.offset)

    def peek(self) -> int | None:
        data = self._file.read(1)
        self._file.seek(self.offset)
        return data[0] if data else None

    def _unpack(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def header(self) -> tuple[str, object]:
        """(kind, length) for str/bin/array/map, ("ext", (code, length)), or ("int"|"float"|"const", value)."""
        byte = self.read(1)[0]
        if byte <= 0x7F:
            return "int", byte
        if byte >= 0xE0:
            return "int", byte - 0x100
        if byte <= 0x8F:
            return "map", byte & 0x0F
        if byte <= 0x9F:
            return "array", byte & 0x0F
        if byte <= 0xBF:
            return "str", byte & 0x1F
        if byte in _CONSTANTS:
            return "const", _CONSTANTS[byte]
        if byte in _SIZED:
            kind, fmt = _SIZED[byte]
            return kind, self._unpack(fmt)
        if byte in _EXT_LENGTH:
            length = self._unpack(_EXT_LENGTH[byte])
            return "ext", (self._unpack(">b"), length)
        if byte in _FIXEXT_SIZE:
            return "ext", (self._unpack(">b"), _FIXEXT_SIZE[byte])
        raise _Malformed(f"byte 0x{byte:02x} at offset {self.offset - 1} is not a msgpack type")

    def small_int(self) -> int:
        kind, value = self.header()
        if kind != "int" or value < 0:
            raise _Malformed(f"expected a non-negative integer, found msgpack {kind}")
        return value

    def small_str(self) -> str:
        kind, length = self.header()
        if kind not in ("str", "bin"):
            raise _Malformed(f"expected a string, found msgpack {kind}")
        return self.read(length).decode("utf-8", errors="replace")

    def small_value(self) -> object:
        kind, value = self.header()
        if kind not in ("int", "float", "const"):
            raise _Malformed(f"expected a scalar, found msgpack {kind}")
        return value
