"""The JSONL manifest: one training record per line (see docs/data.md).

    {"text": "...", "task": "text"}
    {"image": "cat.jpg", "caption": "a cat on a mat", "task": "image"}
    {"video": "clips/ball.mp4", "caption": "a red ball moves left", "task": "video"}
    {"messages": [{"role": "user", "content": [...]}, {"role": "assistant", "content": "..."}], "task": "qa"}

`task` names the record's group for mixture weights; it defaults to the record's kind ("text",
"image", "video", "chat"). Image and video captions make two examples, media -> caption and
caption -> media (LWM trains both directions); `"direction": "understanding"` or `"generation"`
keeps one, and `"direction": "unconditional"` makes the media alone after `<s><vision>` (the branch
classifier-free guidance subtracts; such a record needs no caption). Media paths, also inside
messages, are relative to the manifest's folder. Blank lines are skipped. `read_manifest` checks
every line before anything runs and reports all problems with their line numbers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lwm.tokenizers import CAPTION_REQUESTS, GENERATION_REQUESTS, SYSTEM_PROMPT

KINDS = ("text", "image", "video", "messages")
DIRECTIONS = ("both", "understanding", "generation", "unconditional")
_OPTIONAL = {"task", "direction"}
_FIELDS = {"text": {"text"}, "image": {"image", "caption"}, "video": {"video", "caption"}, "messages": {"messages"}}


class ManifestError(ValueError):
    """A manifest line is not a valid record."""


@dataclass(frozen=True)
class Record:
    line: int  # 1-based line number in the manifest
    kind: str  # "text", "image", "video" or "messages"
    task: str
    data: dict  # the record with media paths made absolute


def read_manifest(path: str | os.PathLike, max_errors: int = 20) -> list[Record]:
    """Parse and validate a manifest; raises ManifestError listing the bad lines (up to `max_errors`)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"manifest not found: {path}") from None
    except UnicodeDecodeError as error:
        raise ManifestError(f"{path}: not UTF-8 text ({error})") from None
    records, errors = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(parse_record(line, number, path.parent))
        except ManifestError as error:
            errors.append(str(error))
    if errors:
        shown = "\n  ".join(errors[:max_errors])
        more = f"\n  ... and {len(errors) - max_errors} more" if len(errors) > max_errors else ""
        raise ManifestError(f"{path}: {len(errors)} invalid line(s):\n  {shown}{more}")
    if not records:
        raise ManifestError(f"{path}: no records")
    return records


def parse_record(line: str, number: int, root: Path) -> Record:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise ManifestError(f"line {number}: not valid JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"line {number}: a record must be a JSON object, got {type(data).__name__}")
    kinds = [kind for kind in KINDS if kind in data]
    if len(kinds) != 1:
        raise ManifestError(f"line {number}: a record has exactly one of {list(KINDS)}, found {kinds or 'none'}")
    kind = kinds[0]
    required = _FIELDS[kind] - ({"caption"} if data.get("direction") == "unconditional" else set())
    unknown = sorted(set(data) - _FIELDS[kind] - _OPTIONAL)
    missing = sorted(required - set(data))
    if unknown or missing:
        problem = f"lacks {missing}" if missing else f"has unknown fields {unknown}"
        raise ManifestError(f"line {number}: a {kind} record {problem}")
    task = data.get("task", "chat" if kind == "messages" else kind)
    if not isinstance(task, str) or not task:
        raise ManifestError(f"line {number}: task must be a non-empty string")
    if kind in ("image", "video"):
        _check_strings(data, (kind, "caption") if "caption" in data else (kind,), number)
        if data.get("direction", "both") not in DIRECTIONS:
            raise ManifestError(f"line {number}: direction must be one of {list(DIRECTIONS)}")
        data = {**data, kind: str(root / data[kind])}
    elif "direction" in data:
        raise ManifestError(f"line {number}: direction applies to image and video records only")
    elif kind == "text":
        _check_strings(data, ("text",), number)
    else:
        data = {**data, "messages": _resolve_messages(data["messages"], number, root)}
    return Record(number, kind, task, data)


def _check_strings(data: dict, keys: tuple[str, ...], number: int) -> None:
    for key in keys:
        if not isinstance(data[key], str) or not data[key]:
            raise ManifestError(f"line {number}: {key!r} must be a non-empty string")


def _resolve_messages(messages, number: int, root: Path) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ManifestError(f"line {number}: 'messages' must be a non-empty list")
    resolved = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise ManifestError(f"line {number}: message {index} needs a role of system, user or assistant")
        content = message.get("content")
        if isinstance(content, str):
            resolved.append(message)
            continue
        if not isinstance(content, list):
            raise ManifestError(f"line {number}: message {index} content must be a string or a list of parts")
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("text", "image", "video"):
                raise ManifestError(f"line {number}: message {index} has a part of unknown type {kind!r}")
            if kind != "text":
                source = part.get(kind, part.get("path"))
                if not isinstance(source, str):
                    raise ManifestError(f"line {number}: message {index} {kind} part needs a path under {kind!r} or 'path'")
                part = {"type": kind, "path": str(root / source)} | ({"continues": True} if part.get("continues") else {})
            parts.append(part)
        resolved.append({**message, "content": parts})
    return resolved


def manifest_texts(path: str | os.PathLike) -> list[str]:
    """The texts of a manifest's records as the model will read and write them (a text tokenizer's corpus).

    Captioned media also gets the processor's request ("Describe the video.", "Generate a video of
    ...") and every record the chat template's words, as the model sees them around the texts.
    """
    texts = []
    for record in read_manifest(path):
        data = record.data
        texts.append(f"{SYSTEM_PROMPT} USER: ASSISTANT: <vision> </vision>")
        texts += [data[key] for key in ("text", "caption") if key in data]
        if "caption" in data:
            kind = "image" if "image" in data else "video"
            texts += [CAPTION_REQUESTS[kind], GENERATION_REQUESTS[kind].format(data["caption"])]
        for message in data.get("messages", []):
            content = message["content"]
            parts = [content] if isinstance(content, str) else [part.get("text", "") for part in content]
            texts += [part for part in parts if part]
    return texts
