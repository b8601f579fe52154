"""`capmill inspect` on video shards shows the media record of a video."""

import json

from capmill.cli.main import main
from capmill.testing.videos import write_video_webdataset


def test_inspect_shows_a_video_record(tmp_path, capsys):
    write_video_webdataset(tmp_path, shards=1, per_shard=1)
    assert main(["inspect", str(tmp_path / "00000.tar"), "--show", "1"]) == 0
    out = capsys.readouterr().out
    record = json.loads(out[: out.rindex("}") + 1])
    assert record["media"]["kind"] == "video" and record["media"]["bytes"] > 0 and "image" not in record
