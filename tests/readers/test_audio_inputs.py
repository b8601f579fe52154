"""Audio members, files and manifest paths in every reader; long audio cut into clip samples;
the records, rows and output members that carry audio."""

import hashlib
import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from capmill.config import parse_config
from capmill.media.audio import AudioConfig, decode_audio
from capmill.media.decode import decode_batch
from capmill.media.image import ImageConfig
from capmill.readers import FolderInput, JsonlInput, ParquetInput, WebDatasetInput
from capmill.sample import Clip, MediaRef, Sample
from capmill.testing import write_tar
from capmill.testing.audio import (
    Sound,
    audio_items,
    dominant_hz,
    make_audio,
    write_audio_folder,
    write_audio_webdataset,
)
from capmill.testing.shards import Item


def read_all(config):
    reader = config.build()
    return [s for shard in reader.shards() for s in reader.read(shard)]


@pytest.fixture(scope="module")
def items():
    return list(audio_items(3))


def test_webdataset_audio_members_with_their_alt_text_and_metadata(tmp_path, items):
    write_tar(tmp_path / "00000.tar", items)
    samples = read_all(WebDatasetInput(path=str(tmp_path / "00000.tar")))
    assert [s.key for s in samples] == ["snd0000", "snd0001", "snd0002"]
    for sample, item in zip(samples, items, strict=True):
        assert sample.media.kind == "audio" and sample.media.ext == "flac" and sample.media.data == item.data
        assert sample.alt_text == item.alt_text and sample.meta["json"]["title"] == item.meta["title"]


@pytest.mark.parametrize("ext", ["wav", "flac", "mp3", "ogg", "m4a"])
def test_every_audio_extension_is_read_and_decoded(tmp_path, ext):
    data = make_audio([Sound(1.0, tone_hz=660)], ext=ext)
    write_tar(tmp_path / "00000.tar", [Item("k", data, ext, "alt", {})])
    samples = read_all(WebDatasetInput(path=str(tmp_path / "00000.tar")))
    assert samples[0].media.kind == "audio" and samples[0].media.ext == ext
    decode_batch(samples, ImageConfig().with_audio(AudioConfig(rate=16000)))
    assert samples[0].ok and dominant_hz(samples[0].media.audio.samples, 16000) == pytest.approx(660, abs=3)


def test_audio_wins_over_its_cover_art(tmp_path, items):
    from capmill.testing import generated
    from capmill.testing.shards import encode

    path = write_tar(tmp_path / "00000.tar", items[:1], extra_members={"snd0000.jpg": encode(generated(1))})
    assert read_all(WebDatasetInput(path=str(path)))[0].media.kind == "audio"


def test_folder_audio_is_read_where_it_lies(tmp_path):
    write_audio_folder(tmp_path / "sounds", n=2)
    samples = read_all(FolderInput(path=str(tmp_path / "sounds")))
    assert [s.key for s in samples] == ["snd0000", "snd0001"]
    assert all(s.media.kind == "audio" and s.media.path and s.media.data is None for s in samples)
    assert samples[0].alt_text.startswith("a low hum")
    decode_batch(samples, ImageConfig())
    assert all(s.ok and s.media.audio.rate == 48000 for s in samples)
    assert samples[0].media.data is None  # decoded from the file, never read whole


def test_manifest_audio_paths_are_confined(tmp_path, items):
    root = tmp_path / "data"
    (root / "sounds").mkdir(parents=True)
    (root / "sounds" / "a.flac").write_bytes(items[0].data)
    (tmp_path / "outside.flac").write_bytes(items[1].data)
    lines = [{"key": "a", "image_path": "sounds/a.flac", "alt_text": "x"},
             {"key": "b", "image_path": "../outside.flac", "alt_text": "y"}]
    (root / "m.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    a, b = read_all(JsonlInput(path=str(root / "m.jsonl")))
    assert a.ok and a.media.kind == "audio" and a.media.path.endswith("sounds/a.flac")
    assert b.status == "read_error" and "outside the input root" in b.error


def test_parquet_audio_bytes_are_sniffed_and_paths_located(tmp_path, items):
    wav = make_audio([Sound(0.5, tone_hz=440)], ext="wav")
    mp3 = make_audio([Sound(0.5, tone_hz=440)], ext="mp3")
    m4a = make_audio([Sound(0.5, tone_hz=440)], ext="m4a")
    (tmp_path / "c.ogg").write_bytes(make_audio([Sound(0.5, tone_hz=440)], ext="ogg"))
    table = pa.table({"key": ["w", "f", "m", "a", "o"],
                      "image": [wav, items[0].data, mp3, m4a, None],
                      "path": [None, None, None, None, "c.ogg"], "caption": ["a"] * 5})
    pq.write_table(table, tmp_path / "t.parquet")
    samples = read_all(ParquetInput(path=str(tmp_path / "t.parquet"), image_path_column="path"))
    assert [(s.media.kind, s.media.ext) for s in samples] == [
        ("audio", "wav"), ("audio", "flac"), ("audio", "mp3"), ("audio", "m4a"), ("audio", "ogg")]
    decode_batch(samples, ImageConfig())
    assert all(s.ok for s in samples), [s.error for s in samples]


def test_a_hugging_face_audio_struct_is_read_by_its_bytes(items):
    from capmill.readers.parquet import image_value

    sample = Sample(key="x")
    image_value(sample, {"bytes": items[0].data, "path": "x.flac"}, None)
    assert sample.media.kind == "audio" and sample.media.ext == "flac" and sample.media.data == items[0].data


def test_long_audio_becomes_clips_with_deterministic_keys_and_exact_windows(tmp_path):
    long = make_audio([Sound(2.0, tone_hz=440), Sound(2.0, tone_hz=880), Sound(1.3, tone_hz=660)], rate=22050,
                      ext="mp3", channels=2)
    write_tar(tmp_path / "00000.tar", [Item("long", long, "mp3", "three tones", {"title": "t"})])
    config = WebDatasetInput(path=str(tmp_path / "00000.tar"), clips={"seconds": 2.0, "min_seconds": 0.5})
    clips = read_all(config)
    assert [c.key for c in clips] == ["long_clip0000", "long_clip0001", "long_clip0002"]
    assert [(c.media.clip.start, c.media.clip.end) for c in clips] == [(0, 2), (2, 4), (4, 5.3)]
    assert all(c.media.ext == "flac" and c.media.clip.offset == c.media.clip.start for c in clips)
    assert clips[0].meta["audio"] == {"source_duration": 5.3, "source_clips": 3} and clips[0].alt_text == "three tones"
    for clip, hz, seconds in zip(clips, (440, 880, 660), (2.0, 2.0, 1.3), strict=True):
        wave, info = decode_audio(clip.media, AudioConfig(rate=16000))
        assert info.channels == 2 and info.rate == 22050  # the source's own rate and channels
        assert wave.seconds == pytest.approx(seconds, abs=1e-3) and dominant_hz(wave.samples, 16000) == pytest.approx(hz, abs=3)
    again = read_all(config)
    assert [hashlib.sha1(c.media.data).hexdigest() for c in again] == [hashlib.sha1(c.media.data).hexdigest() for c in clips]


def test_audio_that_cannot_be_cut_keeps_its_row(tmp_path):
    from capmill.testing.audio import hostile_audio

    data, ext = hostile_audio()["garbage"]
    write_tar(tmp_path / "00000.tar", [Item("bad", data, ext, "x", {})])
    (bad,) = read_all(WebDatasetInput(path=str(tmp_path / "00000.tar"), clips={"seconds": 2.0}))
    assert bad.key == "bad" and bad.status == "decode_error" and bad.error.startswith("cutting into clips:")


def test_audio_records_round_trip():
    sound = Sample(key="a", image=MediaRef(path="a.flac", ext="flac", kind="audio", clip=Clip("src", 1, 2.0, 4.0, 2.0)))
    d = sound.to_dict()
    assert "image" not in d and d["media"]["kind"] == "audio" and "frame_times" not in d["media"]
    back = Sample.from_json(sound.to_json())
    assert back.media.kind == "audio" and back.media.clip == sound.media.clip


def test_a_pooled_stage_gets_the_waveform_and_does_not_send_it_back(items):
    """On Ray, samples reach a pooled stage's actor with their waveform; one the stage did not
    replace is left out of the reply (the shard owner still holds it)."""
    pytest.importorskip("ray")
    from capmill.executors.ray_workers import StageActor
    from capmill.stages.score import ClipScoreStageConfig

    sample = Sample(key="a", image=MediaRef(data=items[0].data, ext="flac", kind="audio"), alt_text="a low hum")
    decode_batch([sample], ImageConfig())
    actor = StageActor(ClipScoreStageConfig(backend={"type": "fake"}, name="clap"), {})
    (back, same_pixels, same_data), = actor.process([sample])
    assert "clap:alt_text" in back.scores  # the stage embedded the waveform it was sent
    assert same_pixels and same_data and back.media.audio is None and back.media.data is None


def test_the_run_config_hands_its_audio_section_to_the_decode_step(tmp_path):
    config = parse_config({"input": {"type": "folder", "path": str(tmp_path)}, "output": {"path": str(tmp_path / "o")},
                           "audio": {"rate": 16000, "max_seconds": 30}})
    assert config.image.audio.rate == 16000 and config.image.audio.max_seconds == 30
    with pytest.raises(Exception, match="unknown_key|extra"):
        parse_config({"input": {"type": "folder", "path": "x"}, "output": {"path": "o"}, "audio": {"unknown_key": 1}})
    default = parse_config({"input": {"type": "folder", "path": "x"}, "output": {"path": "o"}})
    assert "audio" not in default.hashed_content()  # configs from before the section keep their hash
    assert config.hashed_content()["audio"]["rate"] == 16000


def test_outputs_keep_the_audio_file_and_its_extension(tmp_path):
    from capmill.run import run

    data = write_audio_webdataset(tmp_path / "data", shards=1, per_shard=2, hostile=True)
    config = parse_config({
        "input": {"type": "webdataset", "path": data[0]}, "output": {"path": str(tmp_path / "out"), "parquet_images": True,
                                                                      "writers": ["webdataset", "parquet", "sidecar"]},
        "stages": [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}]})
    run(config, progress=False)
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        names = tar.getnames()
        original = {i.key: i.data for i in audio_items(2)}
        assert tar.extractfile("snd0000.flac").read() == original["snd0000"]
        assert not any(n.startswith("bad_") and not n.endswith((".json", ".txt")) for n in names)
    rows = pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()
    by_key = {r["key"]: r for r in rows}
    assert by_key["snd0001"]["audio"] == {"bytes": original["snd0001"], "path": "snd0001.flac"}
    assert by_key["bad_empty"]["audio"] is None and by_key["snd0001"]["image"] is None
    assert (tmp_path / "out" / "00000" / "snd0000.flac").read_bytes() == original["snd0000"]
    schema = json.loads(pq.read_schema(tmp_path / "out" / "00000.parquet").metadata[b"huggingface"])
    assert schema["info"]["features"]["audio"] == {"_type": "Audio"}
    sound = io.BytesIO(by_key["snd0000"]["audio"]["bytes"])
    assert sound.read(4) == b"fLaC"


def test_a_header_claiming_hours_is_measured_before_it_is_cut(tmp_path):
    """5 hours claimed over half a second of data: one clip, not ten thousand empty ones."""
    from capmill.testing.audio import flac_claiming

    write_tar(tmp_path / "00000.tar", [Item("liar", flac_claiming(5 * 3600.0), "flac", "x", {})])
    clips = read_all(WebDatasetInput(path=str(tmp_path / "00000.tar"), clips={"seconds": 1.5, "min_seconds": 0.2}))
    assert [c.key for c in clips] == ["liar_clip0000"]
    assert clips[0].meta["audio"] == {"source_duration": 0.5, "source_clips": 1, "source_duration_claimed": 18000.0}
    decode_batch(clips, ImageConfig())
    assert clips[0].ok and clips[0].media.audio.seconds == pytest.approx(0.5, abs=0.01)


def test_a_window_of_nothing_but_nan_is_refused_not_cut_into_silence(tmp_path):
    from capmill.testing.audio import nan_wav

    write_tar(tmp_path / "00000.tar", [Item("nan", nan_wav(3.0, share=0.5), "wav", "x", {})])
    first, second = read_all(WebDatasetInput(path=str(tmp_path / "00000.tar"), clips={"seconds": 1.5, "min_seconds": 0.2}))
    assert first.status == "decode_error" and "NaN or infinite" in first.error
    assert second.ok and second.key == "nan_clip0001"
