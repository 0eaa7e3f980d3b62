"""`lwm generate image|video` and `lwm caption` on the tiny random model."""


from lwm import media
from lwm.api import LWM
from lwm.cli import main
from tests.helpers.tiny import RESOLUTION


def test_generate_image_and_video(tiny_model_dir, tmp_path, capsys):
    model = str(tiny_model_dir)
    image_path, video_path = tmp_path / "cube.png", tmp_path / "ball.mp4"
    assert main(["generate", "image", "a red cube", "-o", str(image_path), "--model", model, "--seed", "1"]) == 0
    assert main(["generate", "video", "a ball", "-o", str(video_path), "--model", model, "--frames", "2"]) == 0
    assert capsys.readouterr().out.split() == [str(image_path), str(video_path)]
    drawn = media.load_image(image_path)
    assert drawn.shape == (RESOLUTION, RESOLUTION, 3)
    expected = LWM.from_pretrained(model).generate_image("a red cube", seed=1)
    assert (drawn == media.load_image(expected)).all()
    assert media.load_video(video_path).shape[0] == 2


def test_generate_errors_are_clear(tiny_model_dir, tmp_path, capsys):
    model = str(tiny_model_dir)
    assert main(["generate", "video", "a ball", "-o", str(tmp_path / "x.mp4"), "--model", model, "--frames", "500"]) == 1
    assert "maximum context length" in capsys.readouterr().err
    assert main(["generate", "image", "a cube", "-o", str(tmp_path / "x.txt"), "--model", model]) == 1
    assert "lwm generate:" in capsys.readouterr().err


def test_caption_streams_the_greedy_caption(tiny_model_dir, media_dir, capsys):
    model = str(tiny_model_dir)
    assert main(["caption", str(media_dir / "clip.mp4"), "--model", model, "--max-tokens", "4"]) == 0
    expected = LWM.from_pretrained(model).caption(media_dir / "clip.mp4", max_new_tokens=4)
    assert capsys.readouterr().out == expected + "\n"
    assert main(["caption", str(media_dir / "notes.txt"), "--model", model]) == 1
    assert "not a supported image or video format" in capsys.readouterr().err
