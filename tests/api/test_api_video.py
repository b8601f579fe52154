"""The Python API takes video paths and bytes as video samples."""

import capmill
from capmill.testing.videos import Scene, make_video


def test_caption_a_video_path_and_video_bytes(tmp_path):
    data = make_video([Scene(1.0, "red"), Scene(1.0, "blue")], fps=10)
    (tmp_path / "clip.mp4").write_bytes(data)
    results = capmill.caption([str(tmp_path / "clip.mp4"), data], formats=["ssc"], backend={"type": "fake"})
    assert len(results) == 2 and all(r.ok for r in results)
    assert all(r["ssc"] for r in results)
    from capmill.api.pipeline import as_sample

    assert as_sample(str(tmp_path / "clip.mp4"), "k").media.kind == "video"
    assert as_sample(data, "k").media.kind == "video" and as_sample(data, "k").media.ext == "mp4"
