"""`lwm generate image|video` and `lwm caption` on the tiny random model."""

import pytest

from lwm import media
from lwm.api import LWM
from lwm.cli import main
from tests.serve.conftest import RESOLUTION, build_tiny_model_dir, write_test_media


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate-cli")
    write_test_media(root)
    build_tiny_model_dir(root)
    return root


def test_generate_image_and_video(folder, capsys):
    model = str(folder / "model")
    image_path, video_path = folder / "cube.png", folder / "ball.mp4"
    assert main(["generate", "image", "a red cube", "-o", str(image_path), "--model", model, "--seed", "1"]) == 0
    assert main(["generate", "video", "a ball", "-o", str(video_path), "--model", model, "--frames", "2"]) == 0
    assert capsys.readouterr().out.split() == [str(image_path), str(video_path)]
    drawn = media.load_image(image_path)
    assert drawn.shape == (RESOLUTION, RESOLUTION, 3)
    expected = LWM.from_pretrained(model).generate_image("a red cube", seed=1)
    assert (drawn == media.load_image(expected)).all()
    assert media.load_video(video_path).shape[0] == 2


def test_generate_errors_are_clear(folder, capsys):
    model = str(folder / "model")
    assert main(["generate", "video", "a ball", "-o", str(folder / "x.mp4"), "--model", model, "--frames", "500"]) == 1
    assert "maximum context length" in capsys.readouterr().err
    assert main(["generate", "image", "a cube", "-o", str(folder / "x.txt"), "--model", model]) == 1
    assert "lwm generate:" in capsys.readouterr().err


def test_caption_streams_the_greedy_caption(folder, capsys):
    model = str(folder / "model")
    assert main(["caption", str(folder / "clip.mp4"), "--model", model, "--max-tokens", "4"]) == 0
    expected = LWM.from_pretrained(model).caption(folder / "clip.mp4", max_new_tokens=4)
    assert capsys.readouterr().out == expected + "\n"
    assert main(["caption", str(folder / "notes.txt"), "--model", model]) == 1
    assert "not a supported image or video format" in capsys.readouterr().err
