"""Video members, files and manifest paths in every reader; clips as samples; the records and
rows that carry them."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from capmill.config import parse_config
from capmill.media.decode import decode_batch
from capmill.media.image import ImageConfig
from capmill.media.video import VideoConfig
from capmill.readers import FolderInput, JsonlInput, ParquetInput, WebDatasetInput
from capmill.sample import Sample
from capmill.testing import write_tar
from capmill.testing.videos import video_items, write_video_folder, write_video_webdataset


def read_all(config):
    reader = config.build()
    return [s for shard in reader.shards() for s in reader.read(shard)]


@pytest.fixture(scope="module")
def items():
    return list(video_items(3, scenes=2, scene_seconds=1.5))


def test_webdataset_video_members_with_their_alt_text(tmp_path, items):
    write_tar(tmp_path / "00000.tar", items)
    samples = read_all(WebDatasetInput(path=str(tmp_path / "00000.tar")))
    assert [s.key for s in samples] == ["vid0000", "vid0001", "vid0002"]
    for sample, item in zip(samples, items):
        assert sample.media.kind == "video" and sample.media.ext == "mp4" and sample.media.data == item.data
        assert sample.alt_text == item.alt_text


def test_a_video_wins_over_its_thumbnail(tmp_path, items):
    from capmill.testing import generated
    from capmill.testing.shards import encode

    path = write_tar(tmp_path / "00000.tar", items[:1], extra_members={"vid0000.jpg": encode(generated(1))})
    # Members of one key must be adjacent: rewrite so the thumbnail follows the video.
    sample = read_all(WebDatasetInput(path=str(path)))[0]
    assert sample.media.kind == "video"


@pytest.mark.parametrize("ext", ["mp4", "webm", "mkv", "mov"])
def test_every_video_extension_is_read(tmp_path, items, ext):
    from capmill.testing.shards import Item

    item = items[0]
    write_tar(tmp_path / "00000.tar", [Item("k", item.data, ext, "alt", {})])
    sample = read_all(WebDatasetInput(path=str(tmp_path / "00000.tar")))[0]
    assert sample.media.kind == "video" and sample.media.ext == ext


def test_folder_videos_are_read_where_they_lie(tmp_path):
    write_video_folder(tmp_path / "videos", n=2, scenes=2)
    samples = read_all(FolderInput(path=str(tmp_path / "videos")))
    assert [s.key for s in samples] == ["vid0000", "vid0001"]
    assert all(s.media.kind == "video" and s.media.path and s.media.data is None for s in samples)
    decode_batch(samples, ImageConfig().with_video(VideoConfig()))
    assert all(s.ok and len(s.media.frames) == 8 for s in samples)
    assert samples[0].media.data is None  # decoded from the file, never read whole


def test_manifest_video_paths_are_confined_like_image_paths(tmp_path, items):
    root = tmp_path / "data"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "a.mp4").write_bytes(items[0].data)
    (tmp_path / "outside.mp4").write_bytes(items[1].data)
    lines = [{"key": "a", "image_path": "videos/a.mp4", "alt_text": "x"},
             {"key": "b", "image_path": "../outside.mp4", "alt_text": "y"},
             {"key": "c", "image_path": str(tmp_path / "outside.mp4"), "alt_text": "z"}]
    (root / "m.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    a, b, c = read_all(JsonlInput(path=str(root / "m.jsonl")))
    assert a.ok and a.media.kind == "video" and a.media.path.endswith("videos/a.mp4")
    for refused in (b, c):
        assert refused.status == "read_error" and "outside the input root" in refused.error
        assert refused.media.data is None


def test_parquet_video_bytes_are_sniffed_and_paths_located(tmp_path, items):
    (tmp_path / "clip.webm").write_bytes(items[2].data)
    table = pa.table({"key": ["x", "y"], "image": [items[0].data, None], "path": [None, "clip.webm"],
                      "caption": ["a", "b"]})
    pq.write_table(table, tmp_path / "t.parquet")
    x, y = read_all(ParquetInput(path=str(tmp_path / "t.parquet"), image_path_column="path"))
    assert x.media.kind == "video" and x.media.ext == "mp4" and x.media.data == items[0].data
    assert y.media.kind == "video" and y.media.path.endswith("clip.webm")


def test_clips_from_a_reader_have_deterministic_keys_and_a_link_to_their_source(tmp_path):
    write_video_webdataset(tmp_path, shards=1, per_shard=2, scenes=3, scene_seconds=2.0, gop=10)
    config = WebDatasetInput(path=str(tmp_path / "00000.tar"), clips={"seconds": 2.0, "min_seconds": 0.5},
                             key_prefix="shard")
    samples = read_all(config)
    assert [s.key for s in samples] == [f"00000_vid000{v}_clip000{c}" for v in range(2) for c in range(3)]
    assert [(s.media.clip.start, s.media.clip.end) for s in samples[:3]] == [(0, 2), (2, 4), (4, 6)]
    assert {s.media.clip.source for s in samples} == {"00000_vid0000", "00000_vid0001"}
    assert [s.key for s in read_all(config)] == [s.key for s in samples]


def test_video_records_round_trip_and_keep_image_records_unchanged():
    from capmill.sample import Clip, MediaRef

    video = Sample(key="v", image=MediaRef(path="a.mp4", ext="mp4", kind="video", clip=Clip("src", 2, 4.0, 8.0, 3.5),
                                           frame_times=[0.5, 1.5]))
    d = video.to_dict()
    assert "image" not in d and d["media"]["kind"] == "video" and d["media"]["clip"]["source"] == "src"
    back = Sample.from_json(video.to_json())
    assert back.media.kind == "video" and back.media.clip == video.media.clip and back.media.times == [0.5, 1.5]
    image = Sample(key="i", image=MediaRef(path="a.jpg", ext="jpg"))
    assert image.to_dict()["image"] == {"path": "a.jpg", "url": None, "ext": "jpg"} and "media" not in image.to_dict()


def test_sampled_frames_cross_to_a_pooled_ray_stage(items):
    """On Ray, a shard owner sends samples to a pooled stage's actor pickled (capmill.executors.
    ray_workers): the sampled frames arrive as decoded, with their times."""
    import pickle

    from capmill.media.decode import decode_video_one
    from capmill.testing.videos import read_frame_number

    sample = Sample(key="v", image=__import__("capmill.sample", fromlist=["MediaRef"]).MediaRef(
        data=items[0].data, ext="mp4", kind="video"))
    decode_video_one(sample, VideoConfig())
    back = pickle.loads(pickle.dumps(sample))
    assert back.media.kind == "video" and back.media.data == items[0].data
    assert [f.t for f in back.media.frames] == [f.t for f in sample.media.frames]
    assert [read_frame_number(f.image) for f in back.media.frames] == [read_frame_number(f.image) for f in sample.media.frames]


def test_the_run_config_hands_its_video_section_to_the_decode_step(tmp_path):
    config = parse_config({"input": {"type": "folder", "path": str(tmp_path)}, "output": {"path": str(tmp_path / "o")},
                           "video": {"sampling": {"mode": "fps", "fps": 2}, "max_side": 64}})
    assert config.image.video.sampling.fps == 2 and config.image.video.max_side == 64
    with pytest.raises(Exception, match="unknown_key|extra"):
        parse_config({"input": {"type": "folder", "path": "x"}, "output": {"path": "o"}, "video": {"unknown_key": 1}})
