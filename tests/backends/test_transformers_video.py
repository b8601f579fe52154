"""Videos through the transformers backend on the tiny models: the Qwen2-VL video processor
with the frames' real rate, frames as timestamped images elsewhere, and whole runs."""

import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from capmill.backends.base import GenerationParams, VideoInput, VLMRequest
from capmill.backends.transformers import TransformersConfig, frames_as_images
from capmill.errors import SetupError


@pytest.fixture(scope="module", autouse=True)
def _threads():
    import torch

    torch.set_num_threads(1)


def _video(n=6, seconds=3.0):
    frames = [Image.new("RGB", (128, 96), ((40 * i) % 256, 80, 160)) for i in range(n)]
    return VideoInput(frames=frames, times=[seconds * (i + 0.5) / n for i in range(n)], seconds=seconds)


def _backend(tiny_models, family, **kw):
    backend = TransformersConfig(model=str(tiny_models / family), params=GenerationParams(max_new_tokens=4), **kw).build()
    backend.load()
    return backend


def test_qwen2_vl_takes_the_frames_as_one_video_with_their_rate(tiny_models, monkeypatch):
    backend = _backend(tiny_models, "qwen2_vl")
    assert backend.video_native
    seen = {}
    call = backend.processor.__class__.__call__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(backend.processor.__class__, "__call__", spy)
    video = _video(6, seconds=3.0)
    gens = backend.generate([VLMRequest(prompt="Describe the video.", video=video, tag="v")])
    assert gens[0].ok and gens[0].meta["prompt_tokens"] > 20  # the video's tokens are in the prompt
    assert len(seen["videos"]) == 1 and len(seen["videos"][0]) == 6 and seen["do_sample_frames"] is False
    assert seen["video_metadata"][0].fps == pytest.approx(2.0)
    assert "<|video_pad|>" in backend.render(VLMRequest(prompt="x", video=video))


def test_mixed_image_and_video_requests_in_one_call_match_one_by_one(tiny_models):
    backend = _backend(tiny_models, "qwen2_vl")
    image = Image.new("RGB", (120, 90), (10, 200, 30))
    requests = [VLMRequest(prompt="Describe the video.", video=_video(6), tag="a"),
                VLMRequest(prompt="Describe the image.", images=[image], tag="b"),
                VLMRequest(prompt="Describe the video briefly.", video=_video(4, 2.0), tag="c")]
    together = backend.generate(requests)
    alone = [backend.generate([r])[0] for r in requests]
    assert all(g.ok for g in together) and [g.texts for g in together] == [g.texts for g in alone]


def test_models_without_a_video_processor_get_timestamped_frames(tiny_models):
    backend = _backend(tiny_models, "idefics3")
    assert not backend.video_native
    video = _video(4, seconds=8.0)
    as_images = frames_as_images(VLMRequest(prompt="Describe.", video=video))
    assert as_images.images == video.frames and as_images.video is None
    assert "at 1.0 s, 3.0 s, 5.0 s, 7.0 s" in as_images.prompt and "8-second video" in as_images.prompt
    gens = backend.generate([VLMRequest(prompt="Describe.", video=video, tag="v")])
    assert gens[0].ok
    with pytest.raises(SetupError, match="video_as: frames"):
        _backend(tiny_models, "idefics3", video_as="video")
    forced = _backend(tiny_models, "qwen2_vl", video_as="frames")
    assert not forced.video_native and forced.generate([VLMRequest(prompt="x", video=video)])[0].ok


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3"])
def test_a_video_shard_captioned_by_a_tiny_model(tiny_models, tmp_path, family):
    from capmill.config import parse_config
    from capmill.run import run
    from capmill.testing.videos import write_video_webdataset

    write_video_webdataset(tmp_path / "data", shards=1, per_shard=2, hostile=True)
    config = {"input": {"type": "webdataset", "path": f"{tmp_path}/data/*.tar"}, "output": {"path": str(tmp_path / "out")},
              "video": {"sampling": {"frames": 4}},
              "stages": [{"type": "caption", "formats": ["ssc", "dsc"],
                          "backend": {"type": "transformers", "model": str(tiny_models / family),
                                      "params": {"max_new_tokens": 6}}}]}
    summary = run(parse_config(config), progress=False)
    rows = pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()
    good = [r for r in rows if not r["key"].startswith("bad_")]
    assert [r["status"] for r in good] == ["ok", "ok"], [r["error"] for r in good]
    record = json.loads(good[0]["record"])
    assert record["captions"]["dsc"]["prompt_id"] == "dsc@1:video" and record["captions"]["ssc"]["meta"]["backend"] == "transformers"
    assert summary.by_status["decode_error"] == 5
