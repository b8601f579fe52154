"""Hugging Face `datasets` loads a capmill output without help: `load_dataset("webdataset", ...)`
on the tar shards and `load_dataset("parquet", ...)` on the parquet shards, with failed rows (a
read error first in the first shard, undecodable images) and mixed source formats (PNG and JPEG)."""

import json
import os

import pytest

from capmill.config import parse_config
from capmill.run import run
from capmill.sample import Sample
from capmill.testing import corrupt_items, items, write_jsonl

datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is not installed (pip install 'capmill[hf]')")


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    samples = list(items(10))  # real photos; skimage's logo (index 8) is an RGBA PNG
    samples.insert(2, next(s for s in corrupt_items() if s.key == "bad_not_an_image"))
    manifest = write_jsonl(root / "data" / "m.jsonl", samples)
    with open(manifest, encoding="utf-8") as f:
        lines = f.readlines()
    with open(manifest, "w", encoding="utf-8") as f:
        f.write("{not json\n")  # the first row of the first shard: a read_error without an image
        f.writelines(lines)
    os.remove(root / "data" / "images" / "000004.jpg")  # a read_error in the middle of a shard
    # The first shard: read error, 2 photos, an undecodable file, 2 photos, a missing file, a photo.
    config = {
        "input": {"type": "jsonl", "path": str(manifest), "shard_size": 8},
        "output": {"path": str(root / "out"), "writers": ["webdataset", "parquet"], "parquet_images": True},
        "executor": {"type": "local", "batch_size": 4},
        "stages": [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc", "dsc"]},
                   {"type": "clip_score", "backend": {"type": "fake", "dim": 8}}],
    }
    summary = run(parse_config(config), progress=False)
    assert summary.ok and summary.by_status == {"ok": 9, "read_error": 2, "decode_error": 1}
    return root / "out"


def _files(out, ext):
    return sorted(str(p) for p in out.glob(f"*.{ext}"))


def test_webdataset_loader_reads_every_row(output, tmp_path):
    ds = datasets.load_dataset("webdataset", data_files=_files(output, "tar"), split="train", cache_dir=str(tmp_path))
    assert len(ds) == 12
    assert set(ds.features) == {"jpg", "json", "txt", "__key__", "__url__"}  # one image field for JPEG and PNG
    rows = {row["__key__"]: row for row in ds}
    for key, row in rows.items():
        record = Sample.from_dict(row["json"])
        assert record.key == key and row["json"]["status"] == record.status
        if record.ok:
            assert row["jpg"] is not None and row["jpg"].size[0] > 0
            assert set(record.captions) == {"ssc", "dsc"} and "clip:dsc" in record.scores
            assert row["txt"] == record.alt_text and row["json"]["error"] == ""
        else:
            assert row["jpg"] is None and row["json"]["error"] == record.error and record.error
    assert rows["000008"]["jpg"].mode == "RGBA"  # the PNG came back as itself
    assert rows["000008"]["jpg"].format == "PNG" and json.loads(rows["000008"]["json"]["record"])["image"]["ext"] == "png"
    failed = {k: r["json"]["status"] for k, r in rows.items() if r["json"]["status"] != "ok"}
    assert failed == {"m_00000000": "read_error", "000004": "read_error", "bad_not_an_image": "decode_error"}


def test_parquet_loader_gives_pil_images(output, tmp_path):
    ds = datasets.load_dataset("parquet", data_files=_files(output, "parquet"), split="train", cache_dir=str(tmp_path))
    assert len(ds) == 12
    assert type(ds.features["image"]).__name__ == "Image"
    assert ds.features["score.clip:dsc"].dtype == "float64"
    for row in ds:
        if row["status"] == "ok":
            assert row["image"].size[0] > 0 and row["caption.dsc"] and row["score.clip:dsc"] is not None
            assert row["error"] is None
        else:
            assert row["image"] is None and row["error"]
    logo = next(r for r in ds if r["key"] == "000008")
    assert logo["image"].mode == "RGBA"


def test_default_parquet_has_no_image_column_and_loads(tmp_path, wds):
    from tests.conftest import make_config

    assert run(parse_config(make_config(tmp_path / "data", tmp_path / "out")), progress=False).ok
    ds = datasets.load_dataset("parquet", data_files=_files(tmp_path / "out", "parquet"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 24 and "image" not in ds.features and "caption.ssc" in ds.features


def test_original_extensions_on_request(tmp_path):
    from capmill.testing import write_webdataset
    from tests.conftest import make_config

    write_webdataset(tmp_path / "data", shards=2, per_shard=6)
    cfg = make_config(tmp_path / "data", tmp_path / "out")
    cfg["output"]["image_ext"] = "original"
    assert run(parse_config(cfg), progress=False).ok
    import tarfile

    with tarfile.open(tmp_path / "out" / "00001.tar") as tar:
        names = tar.getnames()
    assert "000008.png" in names and "000006.jpg" in names
