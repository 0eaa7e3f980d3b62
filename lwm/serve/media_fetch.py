"""Turning the media URLs of a request into bytes, safely.

A URL in a chat request is one of:

- `data:<type>;base64,<payload>`: always accepted; the payload's length is checked before decoding;
- `file:///path`: only when the server has an allowed folder, and only for regular files whose real
  path (symlinks and `..` resolved) lies inside it;
- `http(s)://host/...`: only when `host` is one of the explicitly allowed domains; redirects are
  not followed.

Every limit is enforced while reading, before anything is decoded, and the bytes' type is checked
from their first bytes (never from the URL's extension or the declared MIME type). Errors are
`MediaFetchError`, whose message is written for the client and never holds exception text.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from lwm.media import MediaError, open_regular_file, sniff_media_type

MediaKind = Literal["image", "video"]

DEFAULT_MAX_MEDIA_BYTES = 32 << 20
_READ_CHUNK = 1 << 16


class MediaFetchError(ValueError):
    """A media URL that cannot be used; the message is safe to return to a client."""


@dataclass(frozen=True)
class MediaPolicy:
    """Where media may come from and how big it may be."""

    allowed_dir: Path | None = None  # local files are refused when None
    allowed_domains: frozenset[str] = field(default_factory=frozenset)  # remote URLs are refused when empty
    max_bytes: int = DEFAULT_MAX_MEDIA_BYTES
    timeout_s: float = 10.0

    def __post_init__(self):
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")
        if self.allowed_dir is not None:
            resolved = Path(self.allowed_dir).expanduser().resolve()
            if not resolved.is_dir():
                raise ValueError(f"the allowed media folder {self.allowed_dir} is not a directory")
            object.__setattr__(self, "allowed_dir", resolved)
        object.__setattr__(self, "allowed_domains", frozenset(d.lower().strip() for d in self.allowed_domains))


def fetch_media(url: str, kind: MediaKind, policy: MediaPolicy) -> bytes:
    """The bytes behind `url`, checked to be an image or a video as `kind` says."""
    if not isinstance(url, str) or not url.strip():
        raise MediaFetchError(f"the {kind} URL is empty")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        data = _read_data_url(url, policy.max_bytes)
    elif scheme == "file":
        data = _read_local_file(url, policy)
    elif scheme in ("http", "https"):
        data = _read_remote(url, policy)
    else:
        raise MediaFetchError(
            f"unsupported {kind} URL: use a data: URL (base64), a file:// URL under the server's allowed "
            "media folder, or an http(s) URL from an allowed domain"
        )
    check_media_kind(data, kind)
    return data


def check_media_kind(data: bytes, kind: MediaKind) -> None:
    """Refuses bytes that are not media of `kind`, judged from the bytes themselves.

    A still image is accepted where a video is expected (it is a one-frame video), not the reverse.
    """
    try:
        found = sniff_media_type(data)
    except MediaError as error:  # its problem is written by lwm.media for clients: no names, no library text
        raise MediaFetchError(f"the {kind} data cannot be read: {error.problem}") from None
    if found is None:
        raise MediaFetchError(f"the {kind} data is not a supported image or video format")
    if kind == "image" and found != "image":
        raise MediaFetchError(f"the image data holds a {found}; send it as a video_url part")


def _read_data_url(url: str, max_bytes: int) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma:
        raise MediaFetchError("malformed data URL: expected data:<type>;base64,<payload>")
    if not header.lower().endswith(";base64"):
        raise MediaFetchError("data URLs must be base64-encoded (data:<type>;base64,<payload>)")
    payload = payload.strip()
    if not payload:
        raise MediaFetchError("the data URL holds no data (empty base64 payload)")
    # 4 base64 characters carry 3 bytes: refuse oversized payloads before decoding them.
    if len(payload) // 4 * 3 > max_bytes + 3:
        raise MediaFetchError(f"the media is larger than the limit of {max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MediaFetchError("the data URL's base64 payload is malformed") from None
    if not data:
        raise MediaFetchError("the data URL holds no data (empty base64 payload)")
    if len(data) > max_bytes:
        raise MediaFetchError(f"the media is larger than the limit of {max_bytes} bytes")
    return data


def _read_local_file(url: str, policy: MediaPolicy) -> bytes:
    if policy.allowed_dir is None:
        raise MediaFetchError(
            "file:// URLs are not allowed by this server (it was started without --allowed-media-dir)"
        )
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise MediaFetchError("file:// URLs must name a local path (file:///path)")
    requested = Path(unquote(parts.path))
    if not requested.is_absolute():
        raise MediaFetchError("file:// URLs must hold an absolute path (file:///path)")
    if "\x00" in str(requested):
        raise MediaFetchError("the file path holds a NUL byte")
    # resolve() follows symlinks and removes `..`, so the containment test sees the real location;
    # is_relative_to compares whole path components, so a sibling like `allowed-other` is outside.
    try:
        real = requested.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise MediaFetchError("the file does not exist or cannot be read") from None
    if not real.is_relative_to(policy.allowed_dir):
        raise MediaFetchError("the file is outside the server's allowed media folder")
    try:
        file = open_regular_file(real, follow_symlinks=False)  # never blocks: a FIFO is refused, not waited on
    except MediaError as error:
        raise MediaFetchError(f"the file cannot be read: {error.problem}") from None
    with file:
        if os.fstat(file.fileno()).st_size > policy.max_bytes:
            raise MediaFetchError(f"the media is larger than the limit of {policy.max_bytes} bytes")
        data = file.read(policy.max_bytes + 1)  # the file may have grown since fstat
    if len(data) > policy.max_bytes:
        raise MediaFetchError(f"the media is larger than the limit of {policy.max_bytes} bytes")
    if not data:
        raise MediaFetchError("the file is empty")
    return data


def _read_remote(url: str, policy: MediaPolicy) -> bytes:
    import httpx

    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:
        raise MediaFetchError("malformed URL") from None
    if not host:
        raise MediaFetchError("malformed URL: no host")
    if host not in policy.allowed_domains:
        raise MediaFetchError(
            "remote media URLs are not allowed for this domain (the server accepts only the domains given with "
            "--allowed-media-domain)"
        )
    try:
        with httpx.stream("GET", url, follow_redirects=False, timeout=policy.timeout_s) as response:
            if response.is_redirect:
                raise MediaFetchError("the media URL redirects; redirects are not followed")
            if response.status_code != 200:
                raise MediaFetchError(f"fetching the media URL failed with HTTP status {response.status_code}")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                raise MediaFetchError(f"the media is larger than the limit of {policy.max_bytes} bytes")
            chunks, size = [], 0
            for chunk in response.iter_bytes(_READ_CHUNK):
                size += len(chunk)
                if size > policy.max_bytes:
                    raise MediaFetchError(f"the media is larger than the limit of {policy.max_bytes} bytes")
                chunks.append(chunk)
    except httpx.HTTPError:
        raise MediaFetchError("the media URL could not be fetched") from None
    data = b"".join(chunks)
    if not data:
        raise MediaFetchError("the media URL returned no data")
    return data
