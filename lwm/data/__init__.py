"""The generic data pipeline: JSONL manifests -> pre-tokenized shards -> packed rows, batched for training.

    manifest.py  records of text, images, videos and chats (docs/data.md)
    tokenize.py  `lwm data tokenize`: every record through LWMProcessor, into sharded token files
    packing.py   examples packed into fixed-length rows that do not see each other, with loss weights
    loader.py    an endless, resumable, data-parallel stream of packed batches
"""

from lwm.data.loader import ExampleStream, PackedLoader, TokenizedDataset
from lwm.data.manifest import ManifestError, Record, manifest_texts, parse_record, read_manifest
from lwm.data.packing import Overlong, RowPlanner, pack_row, stack_rows
from lwm.data.tokenize import TokenizeConfig, TokenizeReport, tokenize_manifest

__all__ = [
    "ExampleStream",
    "ManifestError",
    "Overlong",
    "PackedLoader",
    "Record",
    "RowPlanner",
    "TokenizeConfig",
    "TokenizeReport",
    "TokenizedDataset",
    "manifest_texts",
    "parse_record",
    "pack_row",
    "read_manifest",
    "stack_rows",
    "tokenize_manifest",
]
