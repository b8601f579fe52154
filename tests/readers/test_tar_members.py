"""Tar members the reader refuses keep a row each, under keys that never collide across shards."""

import io
import tarfile

import pyarrow.parquet as pq

from capmill.config import parse_config
from capmill.readers import WebDatasetInput
from capmill.run import run
from capmill.testing import items, write_tar


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def shard_with(path, good, extra):
    """A tar with the `good` items, then `extra` members: (name, kind, link target)."""
    write_tar(path, good)
    with tarfile.open(path, "a") as tar:
        for name, kind, link in extra:
            add_member(tar, name, b"not read", kind, link)
    return path


def read_all(config):
    reader = config.build()
    return [s for sh in reader.shards() for s in reader.read(sh)]


def test_one_refused_member_in_each_shard_fails_no_shard(tmp_path):
    data = tmp_path / "in"
    for s in range(3):
        shard_with(data / f"{s:05d}.tar", items(2, start=2 * s), [("../../escape.txt", tarfile.REGTYPE, "")])
    config = parse_config({"input": {"type": "webdataset", "path": str(data / "*.tar")},
                           "output": {"path": str(tmp_path / "out"), "writers": ["parquet"]}})
    summary = run(config, progress=False)
    assert summary.ok and not summary.failed_shards
    assert summary.by_status == {"ok": 6, "read_error": 3}
    table = pq.read_table(sorted(str(p) for p in (tmp_path / "out").glob("*.parquet")))
    refused = sorted(k for k, st in zip(table.column("key").to_pylist(), table.column("status").to_pylist()) if st != "ok")
    assert refused == ["refused_00000_00001", "refused_00001_00001", "refused_00002_00001"]
    # Deterministic: reading again gives the same keys.
    again = sorted(s.key for s in read_all(WebDatasetInput(path=str(data / "*.tar"))) if not s.ok)
    assert again == refused


def test_key_whose_only_member_is_a_link_keeps_a_row(tmp_path):
    path = shard_with(tmp_path / "x.tar", items(1), [
        ("sym.jpg", tarfile.SYMTYPE, "/etc/passwd"),
        ("hard.jpg", tarfile.LNKTYPE, "000000.jpg"),
        ("fifo.jpg", tarfile.FIFOTYPE, ""),
    ])
    got = {s.key: s for s in read_all(WebDatasetInput(path=str(path)))}
    assert set(got) == {"000000", "sym", "hard", "fifo"}
    assert got["000000"].ok
    assert got["sym"].status == "read_error" and "symbolic link to '/etc/passwd'" in got["sym"].error
    assert got["hard"].status == "read_error" and "hard link" in got["hard"].error
    assert got["fifo"].status == "read_error" and "not a regular file" in got["fifo"].error


def test_link_beside_regular_members_is_recorded_not_followed(tmp_path):
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tar:
        (item,) = list(items(1))
        add_member(tar, "k.jpg", item.data)
        add_member(tar, "k.txt", kind=tarfile.SYMTYPE, link="/etc/hostname")
    (sample,) = read_all(WebDatasetInput(path=str(path)))
    assert sample.ok and sample.image.data == item.data
    assert sample.alt_text is None and sample.meta["refused_members"] == ["k.txt"]


def test_unsafe_member_inside_a_group_does_not_split_it(tmp_path):
    path = tmp_path / "x.tar"
    (item,) = list(items(1))
    with tarfile.open(path, "w") as tar:
        add_member(tar, "k.jpg", item.data)
        add_member(tar, "/abs/k.txt", b"not read")
        add_member(tar, "k.txt", b"the alt text")
    got = read_all(WebDatasetInput(path=str(path), key_prefix="shard"))
    assert [(s.key, s.status) for s in got] == [("x_k", "ok"), ("x_refused_x_00001", "read_error")]
    assert got[0].alt_text == "the alt text" and got[1].meta["member"] == "/abs/k.txt"
