"""Official LWM checkpoints -> this project's format, without JAX: the decoder's tux msgpack `params`
(read one record at a time), the VQGAN's Flax pickle (through a restricted unpickler), and the LLaMA-2
tokenizer. docs/official-weights.md has the formats and what was verified."""

from lwm.convert.lwm_jax import ConversionError, ConvertedRelease, SourceLayout, convert_params, convert_release
from lwm.convert.msgpack_reader import ArrayLeaf, CheckpointFormatError, StreamingCheckpoint
from lwm.convert.sharded_writer import ShardedSafetensorsWriter, TensorSpec
from lwm.convert.vqgan_pickle import VQGANPickleError, convert_vqgan_pickle, expected_flax_shapes, load_flax_tree

__all__ = [
    "ArrayLeaf",
    "CheckpointFormatError",
    "ConversionError",
    "ConvertedRelease",
    "ShardedSafetensorsWriter",
    "SourceLayout",
    "StreamingCheckpoint",
    "TensorSpec",
    "VQGANPickleError",
    "convert_params",
    "convert_release",
    "convert_vqgan_pickle",
    "expected_flax_shapes",
    "load_flax_tree",
]
