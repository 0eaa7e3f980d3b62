"""The incremental safetensors writer: tensors written in any order, strided views copied out in row
blocks, read back by the safetensors library itself."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lwm.convert import sharded_writer
from lwm.convert.sharded_writer import INDEX_NAME, ShardedSafetensorsWriter, TensorSpec


def test_tensors_in_any_order_and_strided_views_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(sharded_writer, "BLOCK_BYTES", 40)  # many row blocks per tensor
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((7, 5)).astype(np.float32)
    bits = rng.integers(0, 2**16, (3, 6), dtype=np.uint16)  # bfloat16 bit patterns
    norm = rng.standard_normal(9).astype(np.float32)
    specs = [TensorSpec("a.weight", (5, 7), "float32"), TensorSpec("b.weight", (3, 6), "bfloat16"),
             TensorSpec("c.weight", (9,), "float32")]
    writer = ShardedSafetensorsWriter(tmp_path, specs, max_shard_bytes=150)
    writer.write("c.weight", norm)
    writer.write("a.weight", kernel.T)  # a transposed view, as the converter passes them
    writer.write("b.weight", bits)
    writer.finish()

    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index["metadata"]["total_size"] == 5 * 7 * 4 + 3 * 6 * 2 + 9 * 4
    assert len(set(index["weight_map"].values())) == 2  # a.weight alone fills the first 150-byte shard
    loaded = {}
    for shard in set(index["weight_map"].values()):
        with safe_open(tmp_path / shard, framework="pt") as file:
            loaded |= {name: file.get_tensor(name) for name in file.keys()}
    assert torch.equal(loaded["a.weight"], torch.from_numpy(kernel.T.copy()))
    assert loaded["b.weight"].dtype == torch.bfloat16
    assert torch.equal(loaded["b.weight"].view(torch.int16), torch.from_numpy(bits.view(np.int16)))
    assert torch.equal(loaded["c.weight"], torch.from_numpy(norm))


def test_wrong_or_missing_tensors_are_refused(tmp_path):
    writer = ShardedSafetensorsWriter(tmp_path, [TensorSpec("a", (2, 3), "float32"), TensorSpec("b", (4,), "float32")], 1000)
    with pytest.raises(ValueError, match="planned"):
        writer.write("a", np.zeros((3, 2), np.float32))
    with pytest.raises(KeyError):
        writer.write("z", np.zeros(4, np.float32))
    writer.write("a", np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="already written"):
        writer.write("a", np.zeros((2, 3), np.float32))
    with pytest.raises(RuntimeError, match="never written: b"):
        writer.finish()
