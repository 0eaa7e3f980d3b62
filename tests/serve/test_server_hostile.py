"""The server against hostile requests: each gets a 4xx with an OpenAI-shaped body in the server's
own words, nothing from an exception, no traceback in the log, and the server answers afterwards.

The media are the hostile corpus (tests/helpers/hostile_media.py), sent as `data:` and `file://`
URLs; FIFOs, an empty file and a symlink loop sit in the allowed folder. A fuzz pass posts
generated request bodies and checks the same.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lwm.api import LWM
from lwm.serve import ServerConfig, create_app
from lwm.serve.media_fetch import MediaPolicy
from tests.helpers.hostile_media import write_corpus
from tests.helpers.serving import serving

# What exception text looks like; none of it may reach a client.
EXCEPTION_WORDS = ("Traceback", "Errno", "avcodec", "Invalid data found", "PIL", "object at 0x", "File \"",
                   "TypeError", "ValueError", "DecompressionBomb", "surrogates not allowed", "embedded null")
FIFOS = 8


@pytest.fixture(scope="module")
def allowed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile-server") / "allowed"
    write_corpus(folder)
    for index in range(FIFOS):
        os.mkfifo(folder / f"fifo-{index}.mp4")
    os.symlink(folder / "loop-b.mp4", folder / "loop-a.mp4")
    os.symlink(folder / "loop-a.mp4", folder / "loop-b.mp4")
    return folder


@pytest.fixture(scope="module")
def base_url(tiny_model_dir, allowed):
    config = ServerConfig(model_name="lwm-tiny", media=MediaPolicy(allowed_dir=allowed), max_body_bytes=1 << 20,
                          max_output_frames=2)
    app = create_app(lambda: LWM.from_pretrained(tiny_model_dir), config)
    with serving(app, shutdown_s=15) as url:  # a worker stuck on a FIFO would hold the server up
        yield url


@pytest.fixture
def server_log(caplog):
    """The log records of one test; client errors must log no error and no traceback."""
    caplog.set_level(logging.INFO)
    yield caplog
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def post(base_url, path, payload, timeout=30):
    """Posts JSON as `json.dumps` writes it: lone surrogates travel escaped (\\ud800), as valid JSON."""
    return httpx.post(f"{base_url}{path}", content=json.dumps(payload).encode(),
                      headers={"content-type": "application/json"}, timeout=timeout)


def refused(response, status=400) -> str:
    """The message of an OpenAI-shaped error with `status`, checked to hold no exception text."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    assert not any(word in error["message"] for word in EXCEPTION_WORDS), error["message"]
    return error["message"]


def answered(base_url) -> None:
    reply = post(base_url, "/v1/chat/completions", {"messages": user("still there?"), "max_tokens": 2})
    assert reply.status_code == 200, reply.text


def user(text, *parts):
    return [{"role": "user", "content": [{"type": "text", "text": text}, *parts]}]


def part(kind, url):
    return {"type": f"{kind}_url", f"{kind}_url": {"url": url}}


def data_url(path):
    return "data:application/octet-stream;base64," + base64.b64encode(path.read_bytes()).decode()


def chat(base_url, *parts, text="What is it?"):
    return post(base_url, "/v1/chat/completions", {"messages": user(text, *parts), "max_tokens": 2})


# ---------------------------------------------------------------------------------------- media


@pytest.mark.parametrize("kind", ["image", "video"])
@pytest.mark.parametrize("scheme", ["data", "file"])
def test_a_decompression_bomb_is_a_400(base_url, allowed, server_log, kind, scheme):
    for name in ("bomb.gif", "bomb.png"):
        url = data_url(allowed / name) if scheme == "data" else f"file://{allowed / name}"
        message = refused(chat(base_url, part(kind, url)))
        assert message.startswith("messages[0].content[1]") and ("decompression bomb" in message or "limits" in message)
    answered(base_url)


def test_fifos_in_the_allowed_folder_are_refused_at_once_and_starve_nothing(base_url, allowed, server_log):
    def fifo_request(index):
        kind = "video" if index % 2 else "image"
        return chat(base_url, part(kind, f"file://{allowed}/fifo-{index}.mp4"))

    started = time.monotonic()
    with ThreadPoolExecutor(FIFOS) as pool:
        responses = list(pool.map(fifo_request, range(FIFOS)))
    for response in responses:
        assert "not a regular file" in refused(response)
    assert chat(base_url, part("video", f"file://{allowed}/clip.mp4")).status_code == 200  # media still served
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("url", [
    "file://{allowed}/clip%00.mp4",
    "file://{allowed}/clip.mp4\u0000",
    "file://{allowed}/loop-a.mp4",
    "file://{allowed}/empty.mp4",
    "file://{allowed}/missing.mp4",
    "file://{allowed}/text.mp4",
    "file://{allowed}/audio.m4a",
    "file://{allowed}/%2e%2e/allowed/cut-clip.webm",
])
def test_bad_file_urls_are_400s(base_url, allowed, server_log, url):
    refused(chat(base_url, part("video", url.format(allowed=allowed))))
    answered(base_url)


@pytest.mark.parametrize("name", ["cut-clip.webm", "cut-clip.avi", "cut-clip.gif", "cut-clip.mp4", "cut-clip.mkv",
                                  "text.mp4", "audio.m4a", "empty.mp4"])
def test_truncated_and_non_media_data_urls_are_400s(base_url, allowed, server_log, name):
    message = refused(chat(base_url, part("video", data_url(allowed / name))))
    assert message.startswith("messages[0].content[1]")


def test_real_media_of_every_container_is_served(base_url, allowed, server_log):
    for name in ("clip.webm", "clip.avi", "clip.gif", "clip.mkv", "odd.mkv", "rotated.mp4", "one-frame.mp4"):
        assert chat(base_url, part("video", data_url(allowed / name))).status_code == 200, name
    assert chat(base_url, part("image", data_url(allowed / "still.png"))).status_code == 200


# ---------------------------------------------------------------------------------------- text


@pytest.mark.parametrize("payload", [
    {"messages": [{"role": "user", "content": "\ud800"}]},
    {"messages": user("a lone \udcff surrogate")},
    {"messages": [{"role": "system", "content": "\ud800"}, {"role": "user", "content": "hi"}]},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\udfff"},
                  {"role": "user", "content": "hi"}]},
    {"messages": [{"role": "user", "content": "\ud800"}], "stream": True},
])
def test_a_lone_surrogate_in_text_is_a_400(base_url, server_log, payload):
    assert "not valid Unicode" in refused(post(base_url, "/v1/chat/completions", {**payload, "max_tokens": 2}))
    answered(base_url)


@pytest.mark.parametrize("path", ["/v1/images/generations", "/v1/videos/generations"])
def test_a_lone_surrogate_in_a_prompt_is_a_400(base_url, server_log, path):
    assert "not valid Unicode" in refused(post(base_url, path, {"prompt": "a red \ud800 ball", "num_frames": 1}))


@pytest.mark.parametrize("body", [
    b"[" * 50_000 + b"]" * 50_000,
    b'{"messages": NaN}',
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e400}',
    b'{"messages": "\\u0000"}',
    b'\xff\xfe{"messages": []}',
])
def test_malformed_bodies_are_400s(base_url, server_log, body):
    response = httpx.post(f"{base_url}/v1/chat/completions", content=body,
                          headers={"content-type": "application/json"}, timeout=30)
    refused(response)
    answered(base_url)


# ---------------------------------------------------------------------------------------- fuzz


def json_values():
    scalars = st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats() | st.text(max_size=20)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8),
                                                                                            inner, max_size=3),
                        max_leaves=8)


def media_urls(allowed):
    names = ["clip.mp4", "bomb.gif", "cut-clip.webm", "still.png", "fifo-0.mp4", "loop-a.mp4", "empty.mp4"]
    return (st.sampled_from(names).map(lambda name: f"file://{allowed}/{name}")
            | st.sampled_from(["bomb.gif", "cut-clip.avi", "text.mp4", "clip.gif"]).map(
                lambda name: data_url(allowed / name))
            | st.text(max_size=30) | st.sampled_from(["data:,", "data:x;base64,=", "file:///dev/zero",
                                                      "file://evil/x", "http://localhost/x", "file:///%00"]))


def requests(allowed):
    texts = st.text(max_size=40) | st.sampled_from(["<vision>", "</s>", "<s>", "<eof>", "\ud800", "\x00", "USER:"])
    parts = st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": texts | json_values()}),
        st.sampled_from(["image", "video"]).flatmap(
            lambda kind: st.fixed_dictionaries({"type": st.just(f"{kind}_url"),
                                                f"{kind}_url": st.fixed_dictionaries({"url": media_urls(allowed)})})),
        json_values(),
    )
    content = texts | st.lists(parts, max_size=3) | json_values()
    message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer", "tool"])
                                     | json_values(), "content": content})
    return st.fixed_dictionaries(
        {"messages": st.lists(message, max_size=3) | json_values(), "max_tokens": st.just(1) | st.integers(-2, 2)},
        optional={"stream": st.booleans(), "temperature": json_values(), "top_p": json_values(),
                  "seed": json_values(), "n": json_values(), "stop": json_values()},
    )


def test_fuzz_generated_requests_are_answered_or_refused_cleanly(base_url, allowed, server_log):
    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(payload=requests(allowed))
    def check(payload):
        response = post(base_url, "/v1/chat/completions", payload)
        if response.status_code != 200:
            refused(response, response.status_code)
            assert 400 <= response.status_code < 500

    check()
    answered(base_url)
