"""img2dataset's output is a valid capmill input, and `capmill inspect`/`capmill eval` read a
folder of tar or parquet files."""

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from capmill.cli.main import main
from capmill.config import parse_config
from capmill.readers.guess import guess_input
from capmill.run import run
from capmill.testing import items, write_parquet


def write_img2dataset_shard(folder, shard: int, samples, failed_urls=()):
    """One shard as img2dataset writes it with output_format webdataset: SHARD.tar with
    KEY.jpg, KEY.txt (the caption) and KEY.json (url, caption, key, status, sizes, sha256, ...),
    SHARD.parquet with one status row per URL (failed downloads only appear there), and
    SHARD_stats.json."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for i, it in enumerate(samples):
            key = f"{shard:05d}{i:04d}"
            meta = {"url": it.meta["url"], "caption": it.alt_text, "key": key, "status": "success",
                    "error_message": None, "width": 96, "height": 72, "original_width": 96, "original_height": 72,
                    "exif": "{}", "sha256": "0" * 64}
            add(f"{key}.jpg", it.data)
            add(f"{key}.txt", it.alt_text.encode())
            add(f"{key}.json", json.dumps(meta).encode())
            rows.append(meta)
    for j, url in enumerate(failed_urls):
        rows.append({"url": url, "caption": "lost", "key": f"{shard:05d}{len(samples) + j:04d}",
                     "status": "failed_to_download", "error_message": "HTTP Error 404", "width": None,
                     "height": None, "original_width": None, "original_height": None, "exif": None, "sha256": None})
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{shard:05d}.parquet")
    (folder / f"{shard:05d}_stats.json").write_text(json.dumps({"count": len(rows), "successes": len(samples)}))


def test_img2dataset_output_is_a_capmill_input(tmp_path, capsys):
    folder = tmp_path / "laion"
    write_img2dataset_shard(folder, 0, list(items(3)), failed_urls=["https://example.com/gone.jpg"])
    write_img2dataset_shard(folder, 1, list(items(2, start=3)))
    out = tmp_path / "out"
    config = parse_config({"input": {"type": "webdataset", "path": str(folder / "{00000..00001}.tar")},
                           "output": {"path": str(out), "writers": ["webdataset", "parquet"]},
                           "stages": [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}]})
    summary = run(config, progress=False)
    assert summary.ok and summary.by_status == {"ok": 5}
    rows = pq.read_table(str(out / "00000.parquet")).to_pylist()
    assert [r["key"] for r in rows] == ["000000000", "000000001", "000000002"]
    record = json.loads(rows[0]["record"])
    first = next(items(1))
    assert record["alt_text"] == first.alt_text and record["meta"]["url"] == first.meta["url"]
    assert record["meta"]["width"] == 96 and record["meta"]["json"]["status"] == "success"
    # The folder itself is understood: the tars hold the data, the status parquets are ignored.
    assert guess_input(str(folder)) == {"type": "webdataset", "path": str(folder / "*.tar")}
    assert main(["inspect", str(folder), "-n", "0"]) == 0
    assert "5 samples in 2 shard(s) (webdataset)" in capsys.readouterr().out


def test_inspect_and_eval_read_a_folder_of_parquet_files(tmp_path, capsys):
    folder = tmp_path / "pq"
    write_parquet(folder / "a.parquet", items(3))
    write_parquet(folder / "b.parquet", items(2, start=3))
    assert guess_input(str(folder)) == {"type": "parquet", "path": str(folder / "*.parquet")}
    assert main(["inspect", str(folder), "-n", "0"]) == 0
    assert "5 samples in 2 shard(s) (parquet)" in capsys.readouterr().out
    code = main(["eval", str(folder), "--fields", "alt_text", "--skip", "clip,retrieval,coco"])
    out = capsys.readouterr().out
    assert code == 0 and "alt_text" in out


def test_eval_reads_a_folder_of_tars(tmp_path, capsys):
    folder = tmp_path / "tars"
    write_img2dataset_shard(folder, 0, list(items(3)))
    code = main(["eval", str(folder), "--fields", "alt_text", "--skip", "clip,retrieval,coco"])
    assert code == 0 and "alt_text" in capsys.readouterr().out


def test_folder_of_images_and_forced_types(tmp_path):
    from capmill.testing import write_folder

    write_folder(tmp_path / "imgs", items(2))
    assert guess_input(str(tmp_path / "imgs")) == {"type": "folder", "path": str(tmp_path / "imgs")}
    write_parquet(tmp_path / "imgs" / "x.parquet", items(1))
    assert guess_input(str(tmp_path / "imgs"), "folder")["type"] == "folder"
    assert guess_input(str(tmp_path / "imgs"), "parquet")["path"] == str(tmp_path / "imgs" / "*.parquet")
