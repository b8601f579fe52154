"""Videos to OpenAI-compatible servers: as timestamped frames, or as the file itself."""

import base64

import pytest

from capmill.backends.base import VideoInput, VLMRequest
from capmill.backends.openai_http import OpenAIBackendConfig
from capmill.backends.openai_wire import video_data_url, vlm_messages
from capmill.testing.fault_server import FaultServer
from capmill.testing.shards import generated
from capmill.testing.videos import Scene, make_video

pytest.importorskip("aiohttp")


def _video(data=None, path=None):
    frames = [generated(i, (96, 64)) for i in range(4)]
    return VideoInput(frames=frames, times=[0.5, 1.5, 2.5, 3.5], seconds=4.0, data=data, ext="mp4", path=path)


def _backend(server, **kw):
    backend = OpenAIBackendConfig.model_validate({"type": "openai", "base_url": server.base_url, "model": server.model,
                                                  "backoff_s": 0.01, **kw}).build()
    backend.load()
    return backend


def test_frames_go_as_images_with_their_times():
    with FaultServer() as server:
        backend = _backend(server)
        gens = backend.generate([VLMRequest(prompt="Describe the video.", video=_video(), tag="v")])
        backend.close()
    assert gens[0].ok and "4 images" in gens[0].texts[0]
    event = server.events[0]
    assert event.images == [(96, 64)] * 4
    assert "taken at 0.5 s, 1.5 s, 2.5 s, 3.5 s" in event.prompt


def test_video_url_sends_the_file_itself(tmp_path):
    data = make_video([Scene(1.0, "red")], fps=5)
    messages = vlm_messages(VLMRequest(prompt="Describe."), [], video_url=video_data_url(_video(data=data), 10**7))
    part = messages[-1]["content"][0]
    assert part["type"] == "video_url" and part["video_url"]["url"].startswith("data:video/mp4;base64,")
    assert base64.b64decode(part["video_url"]["url"].split(",", 1)[1]) == data
    (tmp_path / "v.mp4").write_bytes(data)
    from_file = video_data_url(_video(path=str(tmp_path / "v.mp4")), 10**7)
    assert from_file == part["video_url"]["url"]
    with pytest.raises(ValueError, match="over max_video_bytes"):
        video_data_url(_video(data=data), 10)


def test_a_video_too_large_to_send_fails_its_request_only():
    data = make_video([Scene(1.0, "red")], fps=5)
    with FaultServer() as server:
        backend = _backend(server, video_as="video_url", max_video_bytes=10)
        gens = backend.generate([VLMRequest(prompt="a", video=_video(data=data)),
                                 VLMRequest(prompt="b", images=[generated(1, (32, 32))])])
        backend.close()
    assert not gens[0].ok and "max_video_bytes" in gens[0].error
    assert gens[1].ok
