"""`capmill export --target llava_video`: video files and LLaVA-style conversations, one entry
per HowToCaption clip, clip samples with their window."""

import json

from capmill.cli.main import main
from capmill.config import parse_config
from capmill.run import run
from capmill.testing.videos import video_items, write_video_webdataset


def _run(tmp_path, stages, **input_extra):
    write_video_webdataset(tmp_path / "data", shards=1, per_shard=2, tones=True, scene_seconds=2.0, gop=5)
    config = {"input": {"type": "webdataset", "path": f"{tmp_path}/data/*.tar", **input_extra},
              "output": {"path": str(tmp_path / "out")}, "stages": stages}
    assert run(parse_config(config), progress=False).ok
    assert main(["export", str(tmp_path / "out"), "--target", "llava_video", "--out", str(tmp_path / "train")]) == 0
    return json.loads((tmp_path / "train" / "llava_video.json").read_text())


def test_one_conversation_per_video_with_its_file(tmp_path):
    entries = _run(tmp_path, [{"type": "caption", "backend": {"type": "fake"}, "formats": ["dsc_plus"]}])
    assert [e["id"] for e in entries] == ["vid0000", "vid0001"]
    first = entries[0]
    assert first["video"] == "videos/00000/vid0000.mp4" and first["text_source"] == "dsc_plus"
    assert first["conversations"][0]["value"].startswith("<video>\n") and first["conversations"][1]["value"]
    written = (tmp_path / "train" / "videos" / "00000" / "vid0000.mp4").read_bytes()
    assert written == next(video_items(1, tones=True, scene_seconds=2.0, gop=5)).data


def test_howtocaption_clips_become_entries_with_their_times(tmp_path):
    stages = [{"type": "asr", "backend": {"type": "fake", "segment_seconds": 2}},
              {"type": "howtocaption", "llm": {"type": "fake"}, "block_words": 10}]
    entries = _run(tmp_path, stages)
    assert len(entries) >= 4 and all("start" in e and "end" in e and e["text_source"] == "howtocaption" for e in entries)
    assert entries[0]["id"] == "vid0000_0000" and entries[0]["video"] == "videos/00000/vid0000.mp4"


def test_clip_samples_carry_their_window(tmp_path):
    entries = _run(tmp_path, [{"type": "caption", "backend": {"type": "fake"}, "formats": ["dsc_plus"]}],
                   clips={"seconds": 2.0, "min_seconds": 0.5})
    assert [e["id"] for e in entries][:3] == ["vid0000_clip0000", "vid0000_clip0001", "vid0000_clip0002"]
    assert (entries[1]["source"], entries[1]["start"], entries[1]["end"]) == ("vid0000", 2.0, 4.0)
    assert (tmp_path / "train" / "videos" / "00000" / "vid0000_clip0001.mp4").stat().st_size > 0
