"""Manifest paths stay inside the manifest's folder (or `root`): escapes, absolute paths, links
out of the folder and other file systems are refused with the reason, and nothing is read."""

import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from capmill.config import parse_config
from capmill.errors import InputRefused
from capmill.readers import FolderInput, JsonlInput, ParquetInput
from capmill.readers.locate import LocationConfig, Locator
from capmill.run import run
from capmill.testing import generated, items, write_jsonl
from capmill.testing.shards import encode


@pytest.fixture
def layout(tmp_path):
    """data/m.jsonl with one good image, a secret JPEG beside data/ (outside the manifest's
    folder: on the current main it decodes fine and lands in the output), and a link inside
    data/ that points at the secret."""
    data = tmp_path / "data"
    write_jsonl(data / "m.jsonl", items(1))
    secret = encode(generated(99), "JPEG")
    (tmp_path / "secret.jpg").write_bytes(secret)
    os.symlink(tmp_path / "secret.jpg", data / "images" / "link.jpg")
    return tmp_path, secret


HOSTILE = {
    "escape": "../../../../../../../etc/passwd",
    "sibling": "../secret.jpg",
    "absolute": "/etc/hostname",
    "file_url": "file:///etc/hostname",
    "link": "images/link.jpg",
    "other_fs": "memory://elsewhere/x.jpg",
}


def add_lines(manifest, lines):
    with open(manifest, "a") as f:
        for key, location in lines.items():
            f.write(json.dumps({"key": key, "image_path": location, "alt_text": key}) + "\n")


def output_bytes(out):
    """Every member's bytes in every output tar."""
    blobs = []
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            blobs += [tar.extractfile(m).read() for m in tar if m.isfile()]
    return blobs


def records(out):
    table = pq.read_table([str(p) for p in sorted(out.glob("*.parquet"))])
    return {r["key"]: r for r in table.to_pylist()}


def test_jsonl_escapes_absolute_paths_and_links_are_refused_and_never_read(layout):
    tmp_path, secret = layout
    manifest = tmp_path / "data" / "m.jsonl"
    add_lines(manifest, {**HOSTILE, "sibling_abs": str(tmp_path / "secret.jpg")})
    out = tmp_path / "out"
    summary = run(parse_config({"input": {"type": "jsonl", "path": str(manifest)},
                                "output": {"path": str(out), "writers": ["webdataset", "parquet"]}}), progress=False)
    rows = records(out)
    assert rows["000000"]["status"] == "ok"
    for key in [*HOSTILE, "sibling_abs"]:
        assert rows[key]["status"] == "read_error", key
        assert "outside the input root" in rows[key]["error"] or "another file system" in rows[key]["error"], rows[key]
    assert "resolves to" in rows["link"]["error"] and "secret.jpg" in rows["link"]["error"]
    blobs = output_bytes(out)
    assert not any(secret in b for b in blobs)
    with open("/etc/hostname", "rb") as f:
        hostname = f.read()
    assert not any(b == hostname or b.startswith(b"root:") for b in blobs)
    assert summary.by_status == {"ok": 1, "read_error": len(HOSTILE) + 1}


def test_allow_outside_root_reads_them(layout):
    tmp_path, secret = layout
    manifest = tmp_path / "data" / "m.jsonl"
    add_lines(manifest, {"sibling": "../secret.jpg", "link": "images/link.jpg"})

    def samples(**extra):
        reader = JsonlInput(path=str(manifest), **extra).build()
        return {s.key: s for sh in reader.shards() for s in reader.read(sh)}

    assert {k: s.status for k, s in samples().items()} == {"000000": "ok", "sibling": "read_error", "link": "read_error"}
    allowed = samples(allow_outside_root=True)
    assert {k: s.status for k, s in allowed.items()} == {"000000": "ok", "sibling": "ok", "link": "ok"}
    assert allowed["link"].image.read_bytes() == allowed["sibling"].image.read_bytes() == secret


def test_root_is_where_relative_paths_resolve_and_stay(layout):
    tmp_path, secret = layout
    manifest = tmp_path / "data" / "m.jsonl"
    manifest.write_text("")
    add_lines(manifest, {"top": "secret.jpg", "deep": "data/images/000000.jpg", "up": "../x.jpg",
                         "link": "data/images/link.jpg"})
    reader = JsonlInput(path=str(manifest), root=str(tmp_path)).build()
    got = {s.key: s for sh in reader.shards() for s in reader.read(sh)}
    assert got["top"].ok and got["top"].image.read_bytes() == secret
    assert got["deep"].ok and got["link"].ok  # the link resolves inside the root now
    assert got["up"].status == "read_error" and "outside the input root" in got["up"].error


def test_parquet_image_path_column_is_confined(layout):
    tmp_path, secret = layout
    rows = {"good": "images/000000.jpg", **HOSTILE}
    pq.write_table(pa.table({"key": list(rows), "path": list(rows.values()), "caption": list(rows)}),
                   tmp_path / "data" / "t.parquet")
    reader = ParquetInput(path=str(tmp_path / "data" / "t.parquet"), image_path_column="path").build()
    got = {s.key: s for sh in reader.shards() for s in reader.read(sh)}
    assert got["good"].ok and got["good"].image.read_bytes() == (tmp_path / "data" / "images" / "000000.jpg").read_bytes()
    for key in HOSTILE:
        assert got[key].status == "read_error" and got[key].image.path is None, key
        assert got[key].meta["refused_location"] == HOSTILE[key]


def test_parquet_hugging_face_image_struct_with_a_path_is_confined(tmp_path):
    table = pa.table({"key": ["a"], "image": [{"bytes": None, "path": "/etc/hostname"}], "caption": ["x"]})
    pq.write_table(table, tmp_path / "t.parquet")
    reader = ParquetInput(path=str(tmp_path / "t.parquet")).build()
    (sample,) = [s for sh in reader.shards() for s in reader.read(sh)]
    assert sample.status == "read_error" and "outside the input root" in sample.error


def test_folder_links_out_of_the_folder_are_refused(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = encode(generated(1), "JPEG")
    (folder / "good.jpg").write_bytes(good)
    (folder / "good.txt").write_text("a good one")
    (tmp_path / "secret.jpg").write_bytes(encode(generated(2), "JPEG"))
    (tmp_path / "secret.txt").write_text("the secret text")
    os.symlink(tmp_path / "secret.jpg", folder / "linked.jpg")
    (folder / "stolen.jpg").write_bytes(good)
    os.symlink(tmp_path / "secret.txt", folder / "stolen.txt")
    os.symlink(folder / "good.jpg", folder / "inside.jpg")  # a link that stays inside is fine
    reader = FolderInput(path=str(folder)).build()
    got = {s.key: s for sh in reader.shards() for s in reader.read(sh)}
    assert got["good"].ok and got["inside"].ok
    assert got["linked"].status == "read_error" and "linked.jpg links outside" in got["linked"].error
    assert got["stolen"].status == "read_error" and "stolen.txt" in got["stolen"].error
    assert got["stolen"].alt_text is None  # the secret text was not read
    allowed = FolderInput(path=str(folder), allow_outside_root=True).build()
    got = {s.key: s for sh in allowed.shards() for s in allowed.read(sh)}
    assert got["stolen"].ok and got["stolen"].alt_text == "the secret text"


@pytest.mark.parametrize(("location", "expected"), [
    ("img/a.jpg", "s3://bucket/dir/img/a.jpg"),
    ("./img/../img/b.jpg", "s3://bucket/dir/img/b.jpg"),
    ("s3://bucket/dir/img/c.jpg", "s3://bucket/dir/img/c.jpg"),
    ("../../other/x.jpg", None),
    ("../dir2/x.jpg", None),
    ("s3://bucket/dirx/x.jpg", None),  # a shared prefix is not inside
    ("s3://bucket/dir/../secret.jpg", None),
    ("gs://bucket/dir/x.jpg", None),
    ("file:///etc/passwd", None),
    ("/etc/passwd", None),
])
def test_remote_manifest_rule(location, expected):
    locator = Locator.for_file("s3://bucket/dir/m.jsonl", LocationConfig())
    if expected is None:
        with pytest.raises(InputRefused):
            locator.locate(location)
    else:
        assert locator.locate(location).path == expected


def test_http_manifest_relative_images_are_urls_for_the_guarded_fetcher():
    locator = Locator.for_file("https://host.example/data/m.jsonl", LocationConfig())
    ref = locator.locate("img/a.jpg")
    assert ref.url == "https://host.example/data/img/a.jpg" and ref.path is None
    with pytest.raises(InputRefused):
        locator.locate("file:///etc/passwd")


def test_remote_manifest_end_to_end_on_an_in_memory_file_system(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    good = encode(generated(3), "JPEG")
    secret = encode(generated(4), "JPEG")
    fs.pipe("/capmill-test/data/img/a.jpg", good)
    fs.pipe("/capmill-test/secret.jpg", secret)
    lines = [{"key": "a", "image_path": "img/a.jpg"}, {"key": "up", "image_path": "../secret.jpg"},
             {"key": "abs", "image_path": "memory://capmill-test/secret.jpg"},
             {"key": "local", "image_path": "/etc/hostname"}]
    fs.pipe("/capmill-test/data/m.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode())
    try:
        out = tmp_path / "out"
        run(parse_config({"input": {"type": "jsonl", "path": "memory://capmill-test/data/m.jsonl", "alt_text_field": None},
                          "output": {"path": str(out)}}), progress=False)
        rows = records(out)
        assert rows["a"]["status"] == "ok"
        assert {k: rows[k]["status"] for k in ("up", "abs", "local")} == dict.fromkeys(("up", "abs", "local"), "read_error")
        assert not any(secret in b for b in output_bytes(out))
    finally:
        fs.rm("/capmill-test", recursive=True)
