"""Every reader feeds every writer, and what comes out reads back the same."""

import os

import pytest

from capmill.config import parse_config
from capmill.readers import FolderInput, JsonlInput, ParquetInput, RunOutputInput, WebDatasetInput
from capmill.run import run
from capmill.testing import items, write_folder, write_jsonl, write_parquet, write_tar

N = 10


def originals():
    return {it.key: it for it in items(N, photos=True)}


def make_input(kind, tmp_path):
    data = list(originals().values())
    if kind == "webdataset":
        write_tar(tmp_path / "in" / "a.tar", data[:6])
        write_tar(tmp_path / "in" / "b.tar", data[6:])
        return {"type": "webdataset", "path": str(tmp_path / "in" / "*.tar")}
    if kind == "parquet":
        write_parquet(tmp_path / "in" / "a.parquet", data, row_group_size=4)
        return {"type": "parquet", "path": str(tmp_path / "in" / "a.parquet"), "row_groups_per_shard": 2}
    if kind == "folder":
        write_folder(tmp_path / "in", data)
        return {"type": "folder", "path": str(tmp_path / "in"), "shard_size": 4}
    write_jsonl(tmp_path / "in" / "m.jsonl", data)
    return {"type": "jsonl", "path": str(tmp_path / "in" / "m.jsonl"), "shard_size": 4}


@pytest.mark.parametrize("kind", ["webdataset", "parquet", "folder", "jsonl"])
def test_reader_to_every_writer_round_trip(kind, tmp_path):
    out = tmp_path / "out"
    config = parse_config({
        "input": make_input(kind, tmp_path),
        "output": {"path": str(out), "writers": ["webdataset", "parquet", "sidecar"], "text_field": "ssc"},
        "executor": {"type": "local", "batch_size": 3},
        "stages": [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}],
    })
    summary = run(config, progress=False)
    assert summary.ok and summary.samples == N and summary.by_status == {"ok": N}
    want = originals()

    # webdataset output → the record and the original image bytes
    tar_samples = {s.key: s for shard in RunOutputInput(path=str(out)).build().shards()
                   for s in RunOutputInput(path=str(out)).build().read(shard)}
    assert set(tar_samples) == set(want)
    for key, s in tar_samples.items():
        assert s.image.data == want[key].data
        assert s.alt_text == want[key].alt_text
        assert s.captions["ssc"].prompt_id == "ssc@1" and s.captions["ssc"].model == "fake:fake"

    # parquet output → same records
    import pyarrow.parquet as pq

    table = pq.read_table([str(p) for p in sorted(out.glob("*.parquet"))])
    assert sorted(table.column("key").to_pylist()) == sorted(want)
    rows = {r["key"]: r for r in table.to_pylist()}
    for key, s in tar_samples.items():
        assert rows[key]["caption.ssc"] == s.captions["ssc"].text == rows[key]["text"]

    # sidecar output → a folder the folder reader reads back, with the chosen caption as text
    folders = [d for d in out.iterdir() if d.is_dir() and not d.name.startswith("_")]
    back = {}
    for d in folders:
        reader = FolderInput(path=str(d)).build()
        for shard in reader.shards():
            back.update({s.key: s for s in reader.read(shard)})
    assert set(back) == set(want)
    for key, s in back.items():
        assert s.image.read_bytes() == want[key].data
        assert s.alt_text == tar_samples[key].captions["ssc"].text

    # output shards are named after input shards
    names = sorted(p.name for p in (out / "_stats").iterdir())
    assert len(names) == len(run_shards(config))


def run_shards(config):
    return config.input.build().shards()


def test_webdataset_reader_alt_text_from_json(tmp_path):
    data = list(items(3))
    for it in data:
        it.meta["caption"] = f"json caption {it.key}"
    write_tar(tmp_path / "x.tar", data)
    reader = WebDatasetInput(path=str(tmp_path / "x.tar"), alt_text="json:caption").build()
    got = [s.alt_text for s in reader.read(reader.shards()[0])]
    assert got == [f"json caption {it.key}" for it in data]


def test_brace_ranges_keep_missing_shards_by_name(tmp_path):
    write_tar(tmp_path / "000.tar", items(1))
    write_tar(tmp_path / "002.tar", items(1, start=1))
    reader = WebDatasetInput(path=str(tmp_path / "{000..002}.tar")).build()
    assert [s.name for s in reader.shards()] == ["000", "001", "002"]


def test_parquet_generated_keys_do_not_depend_on_sharding(tmp_path):
    data = list(items(9))
    for it in data:
        it.key = None
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": [it.data for it in data], "caption": [it.alt_text for it in data]}),
                   tmp_path / "t.parquet", row_group_size=2)
    whole = ParquetInput(path=str(tmp_path / "t.parquet")).build()
    split = ParquetInput(path=str(tmp_path / "t.parquet"), row_groups_per_shard=1).build()
    keys_whole = [s.key for sh in whole.shards() for s in whole.read(sh)]
    keys_split = [s.key for sh in split.shards() for s in split.read(sh)]
    assert keys_whole == keys_split == [f"t_{i:08d}" for i in range(9)]


def test_jsonl_bad_line_keeps_a_row(tmp_path):
    path = tmp_path / "m.jsonl"
    write_jsonl(path, items(2))
    with open(path, "a") as f:
        f.write("{not json\n")
    reader = JsonlInput(path=str(path)).build()
    samples = [s for sh in reader.shards() for s in reader.read(sh)]
    assert len(samples) == 3 and samples[-1].status == "read_error" and "line 3" in samples[-1].error


def test_unsafe_keys_from_data_are_replaced(tmp_path):
    path = tmp_path / "m.jsonl"
    write_jsonl(path, items(1))
    with open(path, "a") as f:
        f.write('{"key": "../../etc/passwd", "image_path": "images/000000.jpg", "alt_text": "x"}\n')
    out = tmp_path / "out"
    config = parse_config({"input": {"type": "jsonl", "path": str(path)},
                           "output": {"path": str(out), "writers": ["webdataset", "sidecar"]}})
    assert run(config, progress=False).ok
    assert not (tmp_path / "etc").exists()
    bad = [s for sh in RunOutputInput(path=str(out)).build().shards() for s in RunOutputInput(path=str(out)).build().read(sh)
           if s.status != "ok"]
    assert len(bad) == 1 and bad[0].key.startswith("badkey_") and bad[0].meta["original_key"] == "../../etc/passwd"
    assert os.path.commonpath([str(out), *map(str, out.rglob("*"))]) == str(out)
