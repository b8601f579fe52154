"""Hugging Face datasets as input, offline: a `save_to_disk` folder and a local folder of parquet
files in hub layout, read through `datasets` itself."""

import os

import pyarrow.parquet as pq
import pytest

from capmill.config import parse_config
from capmill.errors import ConfigError
from capmill.readers import HfInput
from capmill.run import run
from capmill.testing import items

datasets = pytest.importorskip("datasets")


def hf_dataset(n=7):
    from datasets import Dataset, Features, Image, Value

    data = list(items(n))
    return data, Dataset.from_dict(
        {"img": [{"bytes": it.data, "path": None} for it in data], "text": [it.alt_text for it in data],
         "id": [f"id{it.key}" for it in data]},
        features=Features({"img": Image(), "text": Value("string"), "id": Value("string")}))


@pytest.fixture
def saved(tmp_path):
    data, ds = hf_dataset()
    ds.save_to_disk(str(tmp_path / "saved"))
    return data, str(tmp_path / "saved")


@pytest.fixture
def hub_layout(tmp_path):
    """data/train-0000N-of-00002.parquet and a test split, as the hub stores a dataset."""
    data, ds = hf_dataset()
    root = tmp_path / "hub"
    (root / "data").mkdir(parents=True)
    ds.select(range(4)).to_parquet(str(root / "data" / "train-00000-of-00002.parquet"))
    ds.select(range(4, 7)).to_parquet(str(root / "data" / "train-00001-of-00002.parquet"))
    ds.select(range(2)).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return data, str(root)


def read(config):
    reader = config.build()
    return [s for sh in reader.shards() for s in reader.read(sh)]


def test_saved_dataset_is_read_in_row_shards_with_stable_keys(saved, tmp_path):
    data, path = saved
    reader = HfInput(path=path, image_column="img", alt_text_column="text", rows_per_shard=3).build()
    reader.check()
    shards = reader.shards()
    assert [s.name for s in shards] == ["train_00000", "train_00001", "train_00002"]
    samples = [s for sh in shards for s in reader.read(sh)]
    assert [s.key for s in samples] == [f"train_{i:08d}" for i in range(7)]
    assert [s.image.data for s in samples] == [it.data for it in data]  # the stored bytes, undecoded
    assert [s.alt_text for s in samples] == [it.alt_text for it in data]
    assert samples[0].meta["id"] == "id000000"
    keyed = read(HfInput(path=path, image_column="img", alt_text_column="text", key_column="id"))
    assert [s.key for s in keyed] == [f"id{it.key}" for it in data]


def test_saved_dataset_runs_and_resumes(saved, tmp_path):
    _, path = saved
    config = parse_config({"input": {"type": "hf", "path": path, "image_column": "img", "alt_text_column": "text",
                                     "rows_per_shard": 4},
                           "output": {"path": str(tmp_path / "out"), "writers": ["parquet"]},
                           "stages": [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}]})
    first = run(config, progress=False)
    assert first.ok and first.by_status == {"ok": 7}
    (tmp_path / "out" / "_stats" / "train_00001.json").unlink()  # as if killed before this commit
    again = run(config, progress=False)
    assert again.shards_skipped == 1 and again.samples == 3
    table = pq.read_table(sorted(str(p) for p in (tmp_path / "out").glob("*.parquet")))
    assert sorted(table.column("key").to_pylist()) == [f"train_{i:08d}" for i in range(7)]


def test_hub_layout_folder_streams_one_shard_per_file(hub_layout, tmp_path):
    data, path = hub_layout
    reader = HfInput(path=path, image_column="img", alt_text_column="text").build()
    reader.check()
    shards = reader.shards()
    assert [s.name for s in shards] == ["train_00000", "train_00001"]
    per_shard = [[s.key for s in reader.read(sh)] for sh in shards]
    assert per_shard == [[f"train_00000_{i:08d}" for i in range(4)], [f"train_00001_{i:08d}" for i in range(3)]]
    samples = [s for sh in shards for s in reader.read(sh)]
    assert [s.image.data for s in samples] == [it.data for it in data]
    test = read(HfInput(path=path, split="test", image_column="img", alt_text_column="text"))
    assert [s.key for s in test] == ["test_00000_00000000", "test_00000_00000001"]
    rows = read(HfInput(path=path, streaming=False, image_column="img", alt_text_column="text", rows_per_shard=5,
                        cache_dir=str(tmp_path / "cache")))
    assert [s.image.data for s in rows] == [it.data for it in data]


def test_missing_columns_and_splits_are_config_errors(saved, hub_layout):
    _, path = saved
    with pytest.raises(ConfigError, match=r"image_column: column 'image' is not in .*img, text, id"):
        HfInput(path=path, alt_text_column="text").build().check()
    with pytest.raises(ConfigError, match="alt_text_column: column 'caption'"):
        HfInput(path=path, image_column="img").build().check()
    with pytest.raises(ConfigError, match="key_column: column 'uid'"):
        HfInput(path=path, image_column="img", alt_text_column="text", key_column="uid").build().check()
    _, hub = hub_layout
    with pytest.raises(ConfigError, match="alt_text_column: column 'caption'"):
        HfInput(path=hub, image_column="img").build().check()
    with pytest.raises(ConfigError, match="no such folder, and not a hub id"):
        HfInput(path="/does/not/exist").build().shards()


def test_image_paths_in_a_dataset_are_confined(tmp_path):
    from datasets import Dataset, Features, Value

    inside = tmp_path / "ds" / "inside.jpg"
    (tmp_path / "ds").mkdir()
    (first,) = list(items(1))
    inside.write_bytes(first.data)
    ds = Dataset.from_dict({"image": ["inside.jpg", "/etc/hostname", "../../x.jpg"], "caption": ["a", "b", "c"]},
                           features=Features({"image": Value("string"), "caption": Value("string")}))
    ds.save_to_disk(str(tmp_path / "ds" / "saved"))
    # Paths resolve in the dataset's folder: `inside.jpg` is not there, so point root at ds/.
    got = read(HfInput(path=str(tmp_path / "ds" / "saved"), root=str(tmp_path / "ds")))
    assert got[0].ok and got[0].image.read_bytes() == first.data
    assert [s.status for s in got[1:]] == ["read_error", "read_error"]
    assert all("outside the input root" in s.error for s in got[1:])


def test_reader_travels_without_its_loaded_dataset(saved):
    import pickle

    _, path = saved
    reader = HfInput(path=path, image_column="img", alt_text_column="text").build()
    reader.shards()
    copy = pickle.loads(pickle.dumps(reader))
    assert copy._dataset is None and len(read(copy.config)) == 7
    assert os.path.isdir(path)
