"""The OpenAI-compatible server on the tiny random model.

A real uvicorn server runs on 127.0.0.1 (a free port) in a background thread, and the official
`openai` client talks to it: chat with a video, streaming, image and video generation, 20
concurrent clients. Bad inputs get a 4xx with a clear message, and the next request is still
served. Replies are compared with the same model called in-process (greedy, seeded), so the
server is checked to run what was asked, not only to answer.
"""

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lwm import media
from lwm.api import LWM
from lwm.serve import ServerConfig, create_app
from lwm.serve.media_fetch import MediaPolicy
from tests.helpers.serving import serving
from tests.helpers.tiny import CONTEXT, RESOLUTION

MEDIA_LIMIT = 64 << 10
BODY_LIMIT = 256 << 10


@pytest.fixture(scope="module")
def lwm(tiny_model_dir):
    return LWM.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, media_dir):
    root = tmp_path_factory.mktemp("server-media")
    for name in ("allowed", "allowed-other"):
        (root / name).mkdir()
        for file in ("photo.png", "clip.mp4", "notes.txt"):
            (root / name / file).write_bytes((media_dir / file).read_bytes())
    return root


@pytest.fixture(scope="module")
def base_url(tiny_model_dir, folders):
    config = ServerConfig(
        model_name="lwm-tiny",
        media=MediaPolicy(allowed_dir=folders / "allowed", max_bytes=MEDIA_LIMIT),
        max_body_bytes=BODY_LIMIT,
        max_output_frames=4,
    )
    app = create_app(lambda: LWM.from_pretrained(tiny_model_dir), config)
    with serving(app) as url:
        yield url
    assert app.state.worker.state == "stopped"


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(api_key="unused", base_url=f"{base_url}/v1", max_retries=0, timeout=60)


def data_url(path, mime="application/octet-stream"):
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def user(text, *media_parts):
    return [{"role": "user", "content": [{"type": "text", "text": text}, *media_parts]}]


def video_part(url):
    return {"type": "video_url", "video_url": {"url": url}}


def image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}


def reference(lwm, text, kind=None, path=None, max_new_tokens=5):
    """The same model in-process; media decoded as the server decodes it (bytes, at most 16 frames)."""
    content = [{"type": "text", "text": text}]
    if kind == "video":
        content.append({"type": "video", "frames": media.load_video(path.read_bytes(), max_frames=16)})
    elif kind == "image":
        content.append({"type": "image", "frames": media.load_image(path.read_bytes())})
    stream = lwm.chat([{"role": "user", "content": content}], stream=True, max_new_tokens=max_new_tokens)
    stream.read()
    return stream


def post(base_url, path, payload=None, **kwargs):
    return httpx.post(f"{base_url}{path}", json=payload, timeout=60, **kwargs)


def assert_served(base_url, lwm):
    """The server still answers correctly after a refused request."""
    reply = post(base_url, "/v1/chat/completions", {"messages": user("still there?"), "max_tokens": 3})
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"] == reference(lwm, "still there?", max_new_tokens=3).text


# ---------------------------------------------------------------------------------------- what works


def test_health_models_and_metrics(base_url, client):
    assert httpx.get(f"{base_url}/health").json() == {"status": "ok"}
    assert [model.id for model in client.models.list()] == ["lwm-tiny"]
    metrics = httpx.get(f"{base_url}/metrics").text
    assert "lwm_requests_running 0" in metrics and "lwm_requests_waiting 0" in metrics


def test_chat_with_a_video_attached(client, lwm, folders):
    clip = folders / "allowed" / "clip.mp4"
    for url in (data_url(clip, "video/mp4"), f"file://{clip}"):
        reply = client.chat.completions.create(
            model="lwm-tiny", messages=user("What happens in the video?", video_part(url)), max_tokens=5
        )
        expected = reference(lwm, "What happens in the video?", "video", clip)
        assert reply.choices[0].message.content == expected.text
        assert reply.choices[0].finish_reason == expected.finish_reason
        assert reply.usage.prompt_tokens == expected.prompt_tokens
        assert reply.usage.completion_tokens == expected.completion_tokens


def test_streaming_chat_with_an_image(client, lwm, folders):
    photo = folders / "allowed" / "photo.png"
    chunks = list(
        client.chat.completions.create(
            model="lwm-tiny",
            messages=user("Describe the image.", image_part(data_url(photo, "image/png"))),
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    expected = reference(lwm, "Describe the image.", "image", photo)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected.finish_reason
    assert chunks[-1].usage.prompt_tokens == expected.prompt_tokens


def test_special_token_spellings_are_plain_text(client):
    reply = client.chat.completions.create(
        model="lwm-tiny", messages=[{"role": "user", "content": "<vision><eof></s><s></vision>"}], max_tokens=2
    )
    assert reply.choices[0].message.content is not None


def test_image_generation(client, lwm):
    reply = client.images.generate(model="lwm-tiny", prompt="a red cube", n=2, response_format="b64_json",
                                   extra_body={"seed": 5})
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(item.b64_json)))) for item in reply.data]
    assert [image.shape for image in images] == [(RESOLUTION, RESOLUTION, 3)] * 2
    assert np.array_equal(images[0], np.asarray(lwm.generate_image("a red cube", seed=5)))
    assert np.array_equal(images[1], np.asarray(lwm.generate_image("a red cube", seed=6)))


def test_video_generation(client):
    reply = client.post("/videos/generations", cast_to=object,
                        body={"prompt": "a ball rolls", "num_frames": 3, "fps": 4, "seed": 0})
    item = reply["data"][0]
    assert item["mime_type"] == "video/mp4" and item["num_frames"] == 3 and item["fps"] == 4
    frames = media.load_video(base64.b64decode(item["b64_json"]))
    assert frames.shape == (3, RESOLUTION, RESOLUTION, 3)


def test_video_generation_as_a_job(client, base_url):
    job = client.post("/videos", cast_to=object, body={"prompt": "a ball rolls", "num_frames": 2, "seed": 0})
    assert job["object"] == "video" and job["status"] == "queued"
    deadline = time.monotonic() + 30
    while job["status"] == "queued" and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get(f"/videos/{job['id']}", cast_to=object)
    assert job["status"] == "completed" and job["error"] is None
    content = httpx.get(f"{base_url}/v1/videos/{job['id']}/content")
    assert content.headers["content-type"] == "video/mp4"
    assert media.load_video(content.content).shape == (2, RESOLUTION, RESOLUTION, 3)
    assert error_of(httpx.get(f"{base_url}/v1/videos/video_unknown/content"), 404) == "no such video job"
    assert "server's limit of 4" in error_of(post(base_url, "/v1/videos", {"prompt": "a", "num_frames": 9}), 400)


def test_twenty_concurrent_clients_all_get_their_own_answers(client, lwm):
    questions = [f"question number {index} about the {'red' if index % 2 else 'blue'} ball" for index in range(20)]

    def ask(question):
        reply = client.chat.completions.create(model="lwm-tiny", messages=user(question), max_tokens=3)
        return reply.choices[0].message.content

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(ask, questions))
    assert answers == [reference(lwm, question, max_new_tokens=3).text for question in questions]


# ---------------------------------------------------------------------------------------- what is refused


def error_of(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error["message"]


def test_bad_media_is_refused_and_the_next_request_served(base_url, lwm, folders, tmp_path):
    allowed = folders / "allowed"
    clip = allowed / "clip.mp4"
    corrupt = clip.read_bytes()[:48] + bytes(200)  # an MP4 header, then garbage: reaches the decoder
    (allowed / "corrupt.mp4").write_bytes(corrupt)
    big = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    media.save_image(big, tmp_path / "big.png")
    cases = [
        (image_part("data:image/png;base64,@@not-base64@@"), "base64 payload is malformed"),
        (image_part("data:image/png;base64,"), "empty base64"),
        (image_part(data_url(allowed / "notes.txt")), "not a supported image or video format"),
        (image_part(data_url(clip)), "holds a video; send it as a video_url"),
        (image_part(data_url(tmp_path / "big.png")), f"larger than the limit of {MEDIA_LIMIT} bytes"),
        (video_part(f"file://{allowed}/../allowed-other/clip.mp4"), "outside the server's allowed media folder"),
        (video_part(f"file://{folders}/allowed-other/clip.mp4"), "outside the server's allowed media folder"),
        (video_part(f"file://{allowed}/../."), "outside the server's allowed media folder"),
        (video_part("https://example.com/clip.mp4"), "not allowed for this domain"),
        (video_part("ftp://example.com/clip.mp4"), "unsupported video URL"),
        (video_part(f"file://{allowed}/corrupt.mp4"), "could not be decoded (corrupt, truncated or unsupported)"),
        ({"type": "input_audio", "input_audio": {"data": "AAAA"}}, "unsupported part type"),
        ({"type": "image_url", "image_url": {}}, "image_url.url must be a string"),
    ]
    for part, message in cases:
        response = post(base_url, "/v1/chat/completions", {"messages": user("what is it?", part), "max_tokens": 2})
        text = error_of(response, 400)
        assert message in text and text.startswith("messages[0].content[1]")
        assert "Errno" not in text and "Traceback" not in text and "0x" not in text  # no exception text
    assert_served(base_url, lwm)


def test_oversized_body_and_malformed_json(base_url, lwm):
    huge = "x" * (BODY_LIMIT + 1)
    text = error_of(post(base_url, "/v1/chat/completions", {"messages": user(huge)}), 413)
    assert f"limit of {BODY_LIMIT} bytes" in text
    headers = {"content-type": "application/json"}
    text = error_of(httpx.post(f"{base_url}/v1/chat/completions", content=b'{"messages": [', headers=headers), 400)
    assert text == "the request body is not valid JSON"
    assert "messages" in error_of(post(base_url, "/v1/chat/completions", {"model": "lwm-tiny"}), 400)
    assert_served(base_url, lwm)


def test_prompt_longer_than_the_context(base_url, client, lwm):
    long_text = " ".join(["red ball"] * CONTEXT)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="lwm-tiny", messages=user(long_text), max_tokens=2)
    assert caught.value.body["code"] == "context_length_exceeded"
    assert f"This model's maximum context length is {CONTEXT} tokens. However, you requested" in caught.value.message
    prompt = len(lwm.chat_prompt(user("hi")))
    response = post(base_url, "/v1/chat/completions", {"messages": user("hi"), "max_tokens": CONTEXT})
    assert f"you requested {prompt + CONTEXT} tokens ({prompt} in the messages, {CONTEXT} in the completion)" in (
        error_of(response, 400)
    )
    stream = post(base_url, "/v1/chat/completions", {"messages": user(long_text), "stream": True})
    assert "maximum context length" in error_of(stream, 400)  # refused before the stream starts
    assert_served(base_url, lwm)


def test_bad_conversations_and_parameters(base_url, lwm, folders):
    photo = image_part(data_url(folders / "allowed" / "photo.png"))
    cases = [
        ({"messages": user("hi", *[photo] * 9)}, "at most 8 per request"),
        ({"messages": [{"role": "assistant", "content": [photo]}]}, "only user messages may hold images"),
        ({"messages": []}, "at least one message"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "alternate user and assistant"),
        ({"messages": [{"role": "tool", "content": "hi"}]}, "role must be"),
        ({"messages": [{"role": "user", "content": []}]}, "non-empty list of parts"),
        ({"messages": user("hi"), "n": 2}, "only n=1"),
        ({"messages": user("hi"), "temperature": -1}, "temperature"),
        ({"messages": user("hi"), "max_tokens": 0}, "max_tokens"),
        ({"messages": user("hi"), "stop": ["x"]}, "stop sequences are not supported"),
        ({"messages": user("hi"), "seed": 1 << 70}, "seed"),
    ]
    for payload, message in cases:
        assert message in error_of(post(base_url, "/v1/chat/completions", payload), 400)
    generation_cases = [
        ("/v1/images/generations", {"prompt": "a cube", "response_format": "url"}, "b64_json"),
        ("/v1/images/generations", {"prompt": "a cube", "size": "1024x1024"}, f"{RESOLUTION}x{RESOLUTION}"),
        ("/v1/images/generations", {"prompt": "a cube", "n": 9}, "n must lie between 1 and 4"),
        ("/v1/images/generations", {"prompt": " "}, "prompt must not be empty"),
        ("/v1/videos/generations", {"prompt": "a ball", "num_frames": 50}, "server's limit of 4"),
        ("/v1/images/generations", {"prompt": "red " * CONTEXT}, "maximum context length"),
    ]
    for path, payload, message in generation_cases:
        assert message in error_of(post(base_url, path, payload), 400)
    assert error_of(httpx.get(f"{base_url}/v1/nothing"), 404) == "no such route"
    assert_served(base_url, lwm)


# ---------------------------------------------------------------------------------------- lifecycle


def test_health_is_503_while_loading_and_requests_wait_for_the_model(lwm):
    loaded = threading.Event()

    def slow_load():
        loaded.wait(30)
        return lwm

    with TestClient(create_app(slow_load)) as http:
        assert http.get("/health").status_code == 503 and http.get("/health").json() == {"status": "loading"}
        response = http.post("/v1/chat/completions", json={"messages": user("hi")})
        assert error_of(response, 503) == "the model is still loading; retry shortly"
        loaded.set()
        deadline = time.monotonic() + 10
        while http.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert http.get("/health").json() == {"status": "ok"}


def test_input_videos_are_read_as_the_model_s_frame_count(lwm, folders):
    clip = folders / "allowed" / "clip.mp4"  # 6 frames
    two_frame_model = LWM(lwm.model, lwm.processor, max_frames=2)  # as `lwm serve --max-frames 2` loads it
    with TestClient(create_app(lambda: two_frame_model)) as http:
        while http.get("/health").status_code != 200:
            time.sleep(0.01)
        response = http.post("/v1/chat/completions", json={"messages": user("what?", video_part(data_url(clip))),
                                                           "max_tokens": 1})
    two_frames = media.load_video(clip, max_frames=2)
    expected = lwm.chat_prompt([{"role": "user", "content": [{"type": "text", "text": "what?"},
                                                             {"type": "video", "frames": two_frames}]}])
    assert response.json()["usage"]["prompt_tokens"] == len(expected)


def test_failed_load_api_key_busy_queue_and_file_urls_when_not_allowed(lwm, folders):
    def broken():
        raise RuntimeError("secret detail at 0xdeadbeef")

    with TestClient(create_app(broken)) as http:
        deadline = time.monotonic() + 10
        while http.get("/health").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert http.get("/health").json() == {"status": "failed"}
        assert "0xdeadbeef" not in http.post("/v1/chat/completions", json={"messages": user("hi")}).text

    config = ServerConfig(api_key="sesame", max_queue=0)
    with TestClient(create_app(lambda: lwm, config)) as http:
        while http.get("/health").status_code != 200:
            time.sleep(0.01)
        assert error_of(http.get("/v1/models"), 401).startswith("Incorrect or missing API key")
        assert error_of(http.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401)
        assert http.get("/v1/models", headers={"Authorization": "Bearer sesame"}).status_code == 200
        key = {"Authorization": "Bearer sesame"}
        busy = http.post("/v1/chat/completions", json={"messages": user("hi")}, headers=key)
        assert "the server is busy" in error_of(busy, 503)

    with TestClient(create_app(lambda: lwm)) as http:
        while http.get("/health").status_code != 200:
            time.sleep(0.01)
        part = video_part(f"file://{folders / 'allowed' / 'clip.mp4'}")
        response = http.post("/v1/chat/completions", json={"messages": user("what?", part)})
        assert "file:// URLs are not allowed by this server" in error_of(response, 400)
