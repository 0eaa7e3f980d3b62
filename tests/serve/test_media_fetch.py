"""Media URL resolution: data URLs, the allowed folder, remote domains, limits, types from bytes.

The cases follow llama.cpp's server tests: malformed URLs, non-media bytes, file:// when not
allowed, traversal (`allowed/..`, `allowed/../.`), a sibling folder sharing a prefix, symlinks
out of the folder, the per-file size limit, malformed and empty base64.
"""

import base64
import os

import pytest

from lwm.serve.media_fetch import MediaFetchError, MediaPolicy, fetch_media


@pytest.fixture()
def folders(tmp_path, media_dir):
    allowed = tmp_path / "allowed"
    sibling = tmp_path / "allowed-other"  # shares the prefix "allowed"
    for folder in (allowed, sibling):
        folder.mkdir()
        for name in ("photo.png", "clip.mp4", "notes.txt"):
            (folder / name).write_bytes((media_dir / name).read_bytes())
    (tmp_path / "outside.png").write_bytes((media_dir / "photo.png").read_bytes())
    return allowed, sibling


def data_url(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def test_data_url_round_trip_and_kind_from_bytes(media_dir):
    png = (media_dir / "photo.png").read_bytes()
    mp4 = (media_dir / "clip.mp4").read_bytes()
    assert fetch_media(data_url(png), "image", MediaPolicy()) == png
    assert fetch_media(data_url(mp4, "video/mp4"), "video", MediaPolicy()) == mp4
    # the declared MIME type is ignored: the bytes decide
    assert fetch_media(data_url(png, "video/mp4"), "image", MediaPolicy()) == png
    # a still image is a one-frame video, but a video is not an image
    assert fetch_media(data_url(png), "video", MediaPolicy()) == png
    with pytest.raises(MediaFetchError, match="holds a video; send it as a video_url"):
        fetch_media(data_url(mp4), "image", MediaPolicy())


@pytest.mark.parametrize(
    "url, message",
    [
        ("data:image/png;base64,", "empty base64"),
        ("data:image/png;base64,!!!notbase64!!!", "malformed"),
        ("data:image/png;base64,iVBORw0KGgo", "malformed"),  # wrong padding
        ("data:image/png,rawbytes", "must be base64"),
        ("data:image/png;base64", "malformed data URL"),
        ("data:text/plain;base64," + base64.b64encode(b"hello, not media").decode(), "not a supported image or video"),
        ("", "empty"),
        ("ftp://example.com/a.png", "unsupported image URL"),
        ("/etc/passwd", "unsupported image URL"),
        ("http://example.com/a.png", "not allowed for this domain"),
        ("https://[::1/a.png", "malformed URL"),
    ],
)
def test_bad_urls_are_refused_with_a_clear_message(url, message):
    with pytest.raises(MediaFetchError, match=message):
        fetch_media(url, "image", MediaPolicy())


def test_size_limit_is_checked_before_decoding(media_dir):
    png = (media_dir / "photo.png").read_bytes()
    policy = MediaPolicy(max_bytes=len(png) - 1)
    with pytest.raises(MediaFetchError, match=f"limit of {len(png) - 1} bytes"):
        fetch_media(data_url(png), "image", policy)
    huge = "data:image/png;base64," + "A" * (8 * len(png))  # refused on length alone
    with pytest.raises(MediaFetchError, match="limit"):
        fetch_media(huge, "image", policy)


def test_file_urls_need_an_allowed_folder(folders):
    allowed, _ = folders
    with pytest.raises(MediaFetchError, match="file:// URLs are not allowed"):
        fetch_media(f"file://{allowed}/photo.png", "image", MediaPolicy())
    policy = MediaPolicy(allowed_dir=allowed)
    assert fetch_media(f"file://{allowed}/photo.png", "image", policy) == (allowed / "photo.png").read_bytes()


@pytest.mark.parametrize(
    "relative",
    [
        "../outside.png",
        "/../outside.png",
        "../allowed-other/photo.png",
        "./../outside.png",
        "../allowed/../outside.png",
    ],
)
def test_paths_outside_the_allowed_folder_are_refused(folders, relative):
    allowed, _ = folders
    policy = MediaPolicy(allowed_dir=allowed)
    with pytest.raises(MediaFetchError, match="outside the server's allowed media folder"):
        fetch_media(f"file://{allowed}{'' if relative.startswith('/') else '/'}{relative}", "image", policy)


def test_allowed_folder_itself_and_its_dot_forms_are_not_files(folders):
    allowed, _ = folders
    policy = MediaPolicy(allowed_dir=allowed)
    for url in (f"file://{allowed}", f"file://{allowed}/.", f"file://{allowed}/../allowed/."):
        with pytest.raises(MediaFetchError, match="not a regular file|cannot be read"):
            fetch_media(url, "image", policy)
    with pytest.raises(MediaFetchError, match="outside"):  # `allowed/../.` is the parent
        fetch_media(f"file://{allowed}/../.", "image", policy)


def test_symlinks_out_of_the_folder_and_other_hosts_are_refused(folders, tmp_path):
    allowed, _ = folders
    os.symlink(tmp_path / "outside.png", allowed / "link.png")
    policy = MediaPolicy(allowed_dir=allowed)
    with pytest.raises(MediaFetchError, match="outside"):
        fetch_media(f"file://{allowed}/link.png", "image", policy)
    with pytest.raises(MediaFetchError, match="local path"):
        fetch_media(f"file://evil.example{allowed}/photo.png", "image", policy)
    with pytest.raises(MediaFetchError, match="file not found"):
        fetch_media(f"file://{allowed}/missing.png", "image", policy)


def test_local_files_obey_the_size_limit_and_the_type_check(folders):
    allowed, _ = folders
    size = (allowed / "clip.mp4").stat().st_size
    with pytest.raises(MediaFetchError, match="limit"):
        fetch_media(f"file://{allowed}/clip.mp4", "video", MediaPolicy(allowed_dir=allowed, max_bytes=size - 1))
    with pytest.raises(MediaFetchError, match="not a supported image or video"):
        fetch_media(f"file://{allowed}/notes.txt", "video", MediaPolicy(allowed_dir=allowed))


def test_remote_urls_only_from_allowed_domains():
    policy = MediaPolicy(allowed_domains=frozenset({"media.example.com"}))
    for url in ("https://example.com/a.png", "https://media.example.com.evil.net/a.png", "http://evil.net/x.png"):
        with pytest.raises(MediaFetchError, match="not allowed for this domain"):
            fetch_media(url, "image", policy)


@pytest.fixture()
def web_server(media_dir):
    """A local HTTP server: /photo.png, /big.png (over the limit below), /moved (a redirect), /missing."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    photo = (media_dir / "photo.png").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            routes = {"/photo.png": (200, photo), "/big.png": (200, photo * 20), "/moved": (302, b"")}
            status, body = routes.get(self.path, (404, b"no"))
            self.send_response(status)
            if status == 302:
                self.send_header("Location", "/photo.png")
            if self.path != "/big.png":  # the big one streams without a Content-Length
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", photo
    server.shutdown()
    server.server_close()


def test_remote_fetch_from_an_allowed_host_with_limits_and_no_redirects(web_server):
    url, photo = web_server
    policy = MediaPolicy(allowed_domains=frozenset({"127.0.0.1"}), max_bytes=len(photo) * 2)
    assert fetch_media(f"{url}/photo.png", "image", policy) == photo
    with pytest.raises(MediaFetchError, match="redirects are not followed"):
        fetch_media(f"{url}/moved", "image", policy)
    with pytest.raises(MediaFetchError, match="limit"):  # counted while streaming
        fetch_media(f"{url}/big.png", "image", policy)
    with pytest.raises(MediaFetchError, match="HTTP status 404"):
        fetch_media(f"{url}/missing", "image", policy)
