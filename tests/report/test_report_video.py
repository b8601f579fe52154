"""The report shows, for each video, a strip of the frames the run sampled."""

import base64
import io

from PIL import Image

from capmill.config import parse_config
from capmill.report.build import collect
from capmill.run import run
from capmill.testing.videos import read_frame_number, write_video_webdataset


def test_each_video_gets_a_strip_of_its_sampled_frames(tmp_path):
    write_video_webdataset(tmp_path / "data", shards=1, per_shard=2, hostile=True)
    config = {"input": {"type": "webdataset", "path": f"{tmp_path}/data/*.tar"}, "output": {"path": str(tmp_path / "out")},
              "video": {"sampling": {"mode": "fps", "fps": 1}},
              "stages": [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}]}
    assert run(parse_config(config), progress=False).ok
    data = collect(str(tmp_path / "out"), thumb_size=128)
    videos = {r["key"]: r for r in data["samples"] if r.get("strip")}
    assert set(videos) >= {"vid0000", "vid0001"}
    strip = Image.open(io.BytesIO(base64.b64decode(videos["vid0000"]["thumb"].split(",", 1)[1])))
    # Three sampled frames (one a second of a 3 s video) at 96 px high, 128 x 96 each, 2 px apart.
    assert strip.size == (3 * 128 + 4, 96)
    tiles = [strip.crop((i * 130, 0, i * 130 + 128, 96)) for i in range(3)]
    assert [read_frame_number(t) for t in tiles] == [5, 15, 25]  # the frames at 0.5, 1.5 and 2.5 s
    # Videos that could not be decoded have a row without a strip image.
    assert all(r["thumb"] is None for r in data["samples"] if r["key"].startswith("bad_"))
