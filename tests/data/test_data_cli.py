import json

from lwm.cli import main
from lwm.data.manifest import read_manifest


def test_lwm_data_world_writes_a_valid_manifest(tmp_path, capsys):
    assert main(["data", "world", str(tmp_path), "--clips", "2", "--no-progress"]) == 0
    manifest = tmp_path / "manifest.jsonl"
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert {r["task"] for r in records} >= {"video_caption", "video_qa", "text_to_video"}
    for record in records:
        for key in ("video", "image"):
            if key in record:
                assert (tmp_path / record[key]).is_file()
    assert len(read_manifest(manifest)) == len(records)


def test_lwm_data_world_rejects_zero_clips(tmp_path, capsys):
    assert main(["data", "world", str(tmp_path), "--clips", "0"]) == 2
    assert "--clips must be at least 1" in capsys.readouterr().err
