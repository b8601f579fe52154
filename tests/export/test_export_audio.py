"""`capmill export --target clap`: audio files with their captions for contrastive training, in
the layout LAION-CLAP's webdataset loader reads; clip samples keep their window."""

import io
import json
import tarfile

from capmill.cli.main import main
from capmill.config import parse_config
from capmill.run import run
from capmill.testing.audio import audio_items, write_audio_webdataset


def _export(tmp_path, stages, **input_extra):
    write_audio_webdataset(tmp_path / "data", shards=1, per_shard=2, seconds=4.0, hostile=True)
    config = {"input": {"type": "webdataset", "path": f"{tmp_path}/data/*.tar", **input_extra},
              "output": {"path": str(tmp_path / "out")}, "stages": stages}
    assert run(parse_config(config), progress=False).ok
    assert main(["export", str(tmp_path / "out"), "--target", "clap", "--out", str(tmp_path / "train")]) == 0
    with tarfile.open(tmp_path / "train" / "00000.tar") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_audio_and_its_caption_in_clap_layout(tmp_path, capsys):
    members = _export(tmp_path, [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc", "dsc"]}])
    assert sorted(members) == ["snd0000.flac", "snd0000.json", "snd0000.txt", "snd0001.flac", "snd0001.json", "snd0001.txt"]
    assert members["snd0000.flac"] == next(audio_items(1, seconds=4.0)).data
    record = json.loads(members["snd0000.json"])
    assert record["text"] == [members["snd0000.txt"].decode()] and record["text_source"] in ("ssc", "dsc")
    assert set(record["texts"]) == {"ssc", "dsc", "alt_text"} and record["original_data"]["seconds"] == 4.0
    report = capsys.readouterr().out
    assert "export clap: 2 of 9 samples written" in report and "skipped: status:decode_error" in report


def test_clips_are_exported_with_their_window(tmp_path):
    members = _export(tmp_path, [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}],
                      clips={"seconds": 2.0, "min_seconds": 0.5})
    assert "snd0000_clip0001.flac" in members
    record = json.loads(members["snd0000_clip0001.json"])
    assert record["original_data"]["clip"]["start"] == 2.0 and record["original_data"]["clip"]["source"] == "snd0000"
    assert io.BytesIO(members["snd0000_clip0001.flac"]).read(4) == b"fLaC"
