"""The caption stage on videos: the built-in formats' video prompts, the sampled frames as the
request's video, formats without a video prompt, mixed image/video shards, and the outputs."""

import json
import tarfile

import pyarrow.parquet as pq
import pytest

from capmill.config import parse_config
from capmill.errors import ConfigError
from capmill.run import run
from capmill.stages.caption import CaptionStageConfig
from capmill.testing import items, write_tar
from capmill.testing.videos import video_items, write_video_folder, write_video_webdataset


def run_on(data_glob, out, stages, input_type="webdataset", **sections):
    config = {"input": {"type": input_type, "path": data_glob}, "output": {"path": str(out)}, "stages": stages, **sections}
    summary = run(parse_config(config), progress=False)
    rows = [r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    return summary, rows


def test_a_webdataset_of_videos_runs_with_the_defaults(tmp_path):
    write_video_webdataset(tmp_path / "data", shards=1, per_shard=3, hostile=True)
    stage = {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}
    summary, rows = run_on(f"{tmp_path}/data/*.tar", tmp_path / "out", [stage])
    good = [r for r in rows if r["status"] == "ok"]
    bad = [r for r in rows if r["key"].startswith("bad_")]
    assert len(good) == 3 and all(r["caption.ssc"] for r in good)
    assert len(bad) == 5 and all(r["status"] == "decode_error" and r["error"] for r in bad)
    record = json.loads(good[0]["record"])
    caption = record["captions"]["ssc"]
    assert caption["prompt_id"] == "ssc@1:video"
    assert caption["meta"]["frames"] == 8 and caption["meta"]["seconds"] == 3.0
    assert record["media"]["kind"] == "video" and len(record["media"]["frame_times"]) == 8
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        names = tar.getnames()
        assert tar.extractfile("vid0000.mp4").read() == next(video_items(1)).data
    assert {"vid0000.mp4", "vid0000.json", "vid0000.txt"} <= set(names)
    assert summary.by_status["ok"] == 3 and summary.by_status["decode_error"] == 5


def test_the_fake_answer_depends_on_the_frames_received(tmp_path):
    write_video_webdataset(tmp_path / "data", shards=1, per_shard=1)
    stage = {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}
    _, four = run_on(f"{tmp_path}/data/*.tar", tmp_path / "a", [stage], video={"sampling": {"frames": 4}})
    _, again = run_on(f"{tmp_path}/data/*.tar", tmp_path / "b", [stage], video={"sampling": {"frames": 4}})
    _, six = run_on(f"{tmp_path}/data/*.tar", tmp_path / "c", [stage], video={"sampling": {"frames": 6}})
    assert four[0]["caption.ssc"] == again[0]["caption.ssc"] != six[0]["caption.ssc"]


def test_video_and_image_prompts_in_one_shard(tmp_path):
    samples = list(items(2, photos=False)) + list(video_items(2))
    write_tar(tmp_path / "data" / "00000.tar", samples)
    backend = {"type": "fake"}
    config = CaptionStageConfig(backend=backend, formats=["ssc", "dsc_plus"])
    stage = config.build()
    from capmill.stages.base import RunContext

    stage.setup(RunContext())
    from capmill.media.decode import decode_batch
    from capmill.media.image import ImageConfig
    from capmill.readers import WebDatasetInput

    reader = WebDatasetInput(path=str(tmp_path / "data" / "00000.tar")).build()
    batch = list(reader.read(reader.shards()[0]))
    decode_batch(batch, ImageConfig())
    stage.process(batch)
    assert [s.captions["ssc"].prompt_id for s in batch] == ["ssc@1", "ssc@1", "ssc@1:video", "ssc@1:video"]
    prompts = stage.backend.prompts
    assert sum("video" in p for p in prompts) == 4 and sum("this image" in p for p in prompts) == 4
    # {seconds} filled in from the video's length.
    assert any("3-second video" in p for p in prompts)


def test_a_format_without_a_video_prompt(tmp_path):
    (tmp_path / "fmt").mkdir()
    (tmp_path / "fmt" / "photo_only.yaml").write_text("name: photo_only\ntemplate: Describe the photo.\n")
    write_video_webdataset(tmp_path / "data", shards=1, per_shard=1)
    only = {"type": "caption", "backend": {"type": "fake"}, "formats": ["photo_only"], "prompt_dirs": [str(tmp_path / "fmt")]}
    _, rows = run_on(f"{tmp_path}/data/*.tar", tmp_path / "a", [only])
    assert rows[0]["status"] == "stage_error" and "media.video" in rows[0]["error"]
    mixed = {**only, "formats": ["photo_only", "ssc"]}
    _, rows = run_on(f"{tmp_path}/data/*.tar", tmp_path / "b", [mixed])
    record = json.loads(rows[0]["record"])
    assert rows[0]["status"] == "ok" and "ssc" in record["captions"] and "photo_only" not in record["captions"]
    assert record["meta"]["formats_without_prompt"] == ["photo_only"]


def test_video_slots_are_for_video_prompts_only(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: bad\ntemplate: 'Describe this {seconds} s image.'\n")
    with pytest.raises(ConfigError, match=r"\{seconds\}"):
        CaptionStageConfig(backend={"type": "fake"}, formats=[str(tmp_path / "bad.yaml")]).build()
    (tmp_path / "good.yaml").write_text("name: good\ntemplate: 'Describe.'\nkinds: [video]\n"
                                        "media: {}\n")
    CaptionStageConfig(backend={"type": "fake"}, formats=[str(tmp_path / "good.yaml")]).build()


def test_a_folder_of_mp4_files_keeps_each_file_in_the_output(tmp_path):
    write_video_folder(tmp_path / "videos", n=2)
    stage = {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc", "dsc"]}
    summary, rows = run_on(str(tmp_path / "videos"), tmp_path / "out", [stage], input_type="folder",
                           output={"path": str(tmp_path / "out"), "writers": ["webdataset", "parquet", "sidecar"]})
    assert summary.ok and [r["status"] for r in rows] == ["ok", "ok"]
    original = (tmp_path / "videos" / "vid0001.mp4").read_bytes()
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        assert tar.extractfile("vid0001.mp4").read() == original
    assert (tmp_path / "out" / "00000" / "vid0001.mp4").read_bytes() == original


def test_clip_samples_are_written_with_their_own_bytes_and_window(tmp_path):
    write_video_webdataset(tmp_path / "data", shards=1, per_shard=1, scenes=3, scene_seconds=2.0, gop=10)
    stage = {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}
    config = {"input": {"type": "webdataset", "path": f"{tmp_path}/data/*.tar", "clips": {"by": "scenes"}},
              "output": {"path": str(tmp_path / "out")}, "stages": [stage]}
    assert run(parse_config(config), progress=False).ok
    rows = pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()
    assert [r["key"] for r in rows] == ["vid0000_clip0000", "vid0000_clip0001", "vid0000_clip0002"]
    clips = [json.loads(r["record"])["media"]["clip"] for r in rows]
    assert [(c["start"], round(c["end"])) for c in clips] == [(0, 2), (2, 4), (4, 6)]
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        sizes = [tar.getmember(f"vid0000_clip000{i}.mp4").size for i in range(3)]
    assert all(0 < size < len(next(video_items(1, scenes=3, scene_seconds=2.0, gop=10)).data) for size in sizes)
