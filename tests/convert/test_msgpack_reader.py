"""The tux streaming-checkpoint reader: files written exactly as tux writes them (tests/convert/
official_format.py) read back bit for bit, checked against the spec's byte dump and against the plain
two-pass msgpack decoding (docs/official-weights.md#the-params-file); malformed files fail with the file and record named."""

from __future__ import annotations

import pickle

import msgpack
import numpy as np
import pytest

from lwm.convert.msgpack_reader import CheckpointFormatError, StreamingCheckpoint, bfloat16_to_float32
from tests.convert.official_format import (
    bfloat16_bits,
    round_to_bfloat16,
    to_bytes,
    train_state,
    write_streaming_checkpoint,
)


def reference_decode(path) -> dict:
    """The reading recipe with msgpack doing all the work: unpack each record, unpack its value a second time
    with an ext hook, un-chunk chunked maps. Arrays come back as (dtype name, raw little-endian bytes)."""

    def ext_hook(code, data):
        shape, dtype, buffer = msgpack.unpackb(data, raw=True)
        return (tuple(shape), dtype.decode(), bytes(buffer))

    decoded = {}
    with open(path, "rb") as file:
        for key, blob in msgpack.Unpacker(file, raw=True, max_buffer_size=0):
            value = msgpack.unpackb(blob, raw=True, ext_hook=ext_hook, strict_map_key=False)
            if isinstance(value, dict) and b"__msgpack_chunked_array__" in value:
                shape = tuple(value[b"shape"][str(i).encode()] for i in range(len(value[b"shape"])))
                chunks = [value[b"chunks"][str(i).encode()] for i in range(len(value[b"chunks"]))]
                value = (shape, chunks[0][1], b"".join(chunk[2] for chunk in chunks))
            decoded[tuple(part.decode() for part in key)] = value
    return decoded


def test_record_bytes_match_the_spec_dump(tmp_path):
    """The hexdump of a bf16 (10, 8) `transformer/wte/embedding` record (docs/official-weights.md#the-params-file)."""
    path = tmp_path / "params"
    write_streaming_checkpoint(path, [(("transformer", "wte", "embedding"), np.ones((10, 8), np.float32))])
    expected = (
        "92 93 ab" + b"transformer".hex() + "a3" + b"wte".hex() + "a9" + b"embedding".hex()
        + "c4 b2 c7 af 01 93 92 0a 08 a8" + b"bfloat16".hex() + "c4 a0"
    ).replace(" ", "")
    assert path.read_bytes()[: len(expected) // 2].hex() == expected


def test_bfloat16_rounding_is_nearest_even():
    values = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5, 3.0e38], dtype=np.float32)
    assert bfloat16_bits(values).tolist() == [0x3F80, 0x3F80, 0x3F82, 0xC020, 0x7F62]
    assert np.array_equal(bfloat16_to_float32(bfloat16_bits(values)), round_to_bfloat16(values))


@pytest.mark.parametrize("float_dtype", ["bf16", "fp32"])
def test_round_trip_matches_plain_msgpack_decoding(tmp_path, float_dtype):
    rng = np.random.default_rng(0)
    leaves = {
        ("transformer", "wte", "embedding"): rng.standard_normal((10, 8)).astype(np.float32),
        ("transformer", "h", "scan_decoder", "feed_forward", "w1", "kernel"): rng.standard_normal((3, 20, 37)).astype(np.float32),
        ("half",): rng.standard_normal(5).astype(np.float16),
        ("counts",): np.arange(6, dtype=np.int32).reshape(2, 3),
        ("zero_d",): np.array(7, dtype=np.int32),
        ("np_scalar",): np.int32(11),
        ("step",): 1234,
    }
    path = tmp_path / "params"
    # 1000 bytes: the (3, 20, 37) leaf splits into uneven chunks, the others stay whole
    write_streaming_checkpoint(path, leaves.items(), float_dtype=float_dtype, max_chunk_bytes=1000)
    reference = reference_decode(path)
    assert isinstance(reference[("transformer", "h", "scan_decoder", "feed_forward", "w1", "kernel")], tuple)

    with StreamingCheckpoint(path) as checkpoint:
        assert list(checkpoint.leaves) == list(leaves)
        assert checkpoint.leaves[("step",)] == 1234
        chunked = checkpoint.leaves[("transformer", "h", "scan_decoder", "feed_forward", "w1", "kernel")]
        itemsize = 2 if float_dtype == "bf16" else 4
        assert len(chunked.segments) == -(-3 * 20 * 37 * itemsize // 1000)
        for key, value in leaves.items():
            if key == ("step",):
                continue
            leaf = checkpoint.leaves[key]
            array = checkpoint.read(leaf)
            shape, dtype, raw = reference[key]
            assert (leaf.shape, leaf.dtype) == (shape, dtype) and array.shape == shape
            assert array.tobytes() == raw
            if dtype == "bfloat16":
                assert np.array_equal(bfloat16_to_float32(array), round_to_bfloat16(value))
            else:
                assert np.array_equal(array, np.asarray(value))
    # tux casts every float leaf, float16 included, to the file's float dtype
    assert reference[("half",)][1] == {"bf16": "bfloat16", "fp32": "float32"}[float_dtype]


def test_train_state_records_and_legacy_raw_packing(tmp_path):
    params = {"transformer": {"ln_f": {"kernel": np.ones(4, np.float32)}}}
    path = tmp_path / "train_state"
    with open(path, "wb") as file:  # an old msgpack without bin types: bytes packed as raw strings
        packer = msgpack.Packer(use_bin_type=False)
        for key, leaf in train_state(params):
            if isinstance(leaf, np.ndarray) and leaf.dtype.kind == "f":
                leaf, name = bfloat16_bits(leaf), "bfloat16"
            else:
                name = None
            file.write(packer.pack((key, to_bytes(leaf, name))))
    with StreamingCheckpoint(path) as checkpoint:
        keys = list(checkpoint.leaves)
        assert keys[0] == ("step",) and checkpoint.leaves[("step",)] == 1000
        assert ("params", "params", "transformer", "ln_f", "kernel") in keys
        assert ("opt_state", "1", "0", "mu", "params", "transformer", "ln_f", "kernel") in keys
        leaf = checkpoint.leaves[("params", "params", "transformer", "ln_f", "kernel")]
        assert bfloat16_to_float32(checkpoint.read(leaf)).tolist() == [1.0] * 4


# ----------------------------------------------------------------------------- malformed files


def _record(key, value_document: bytes) -> bytes:
    return msgpack.packb((key, value_document), use_bin_type=True)


def _ext_array(shape, dtype, raw, code=1) -> bytes:
    return msgpack.packb(msgpack.ExtType(code, msgpack.packb((shape, dtype, raw), use_bin_type=True)), use_bin_type=True)


def _ext(value: float) -> msgpack.ExtType:
    return msgpack.ExtType(1, msgpack.packb(((1,), "float32", np.float32(value).tobytes()), use_bin_type=True))


def _chunked(chunks: dict) -> bytes:
    return msgpack.packb({"__msgpack_chunked_array__": True, "shape": {"0": 2}, "chunks": chunks}, use_bin_type=True)


GOOD = _record(("a",), _ext_array((2,), "float32", b"\0" * 8))


@pytest.mark.parametrize(
    "content, record, message",
    [
        (b"", None, "empty file"),
        (pickle.dumps({"encoder": [1, 2]}), 0, "is this a pickle"),
        (GOOD + _record(("b",), _ext_array((2,), "float32", b"\0" * 8))[:-3], 1, "file ends"),
        (GOOD + _record(("b",), _ext_array((2, 3), "float32", b"\0" * 8)), 1, "needs 24 bytes"),
        (GOOD + _record(("b",), _ext_array((2,), "complex64", b"\0" * 16)), 1, "unsupported array dtype"),
        (GOOD + _record(("b",), _ext_array((2,), "float32", b"\0" * 8, code=7)), 1, "ext type 7"),
        (GOOD + _record(("b",), msgpack.packb({"x": 1})), 1, "unexpected entry"),
        (GOOD + GOOD, 1, "appears twice"),
        (GOOD + _record(("b",), _chunked({"0": 5})), 1, "expected an array"),
        (GOOD + _record(("b",), _chunked({"1": _ext(1.0), "0": _ext(2.0)})), 1, "where '0' belongs"),
        (GOOD + msgpack.packb([("b",), b"\x93\x01"]), 1, "not a msgpack document"),
        (GOOD + msgpack.packb([1, 2, 3]), 1, "[key, value] pair"),
    ],
)
def test_malformed_files_name_the_file_and_record(tmp_path, content, record, message):
    path = tmp_path / "broken"
    path.write_bytes(content)
    with pytest.raises(CheckpointFormatError) as error:
        StreamingCheckpoint(path)
    text = str(error.value)
    assert str(path) in text and message in text
    if record is not None:
        assert f"record {record}" in text


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        StreamingCheckpoint("/nonexistent/params")
