"""Inputs check their columns and fields against the first file, and missing files are config
errors: both exit 2 before the output directory is claimed."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from capmill.cli.main import main
from capmill.errors import ConfigError
from capmill.readers import JsonlInput, ParquetInput, WebDatasetInput
from capmill.testing import items, write_jsonl, write_tar


def parquet(tmp_path, **columns):
    data = list(items(3))
    values = {"key": [it.key for it in data], "image": [it.data for it in data], "caption": [it.alt_text for it in data]}
    table = {name: values[source] for name, source in columns.items()}
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table(table), path)
    return str(path)


def cli_run(tmp_path, input_config, *extra):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"input": input_config, "output": {"path": str(tmp_path / "out")},
                                   "stages": [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}]}))
    return main(["run", str(cfg), "--no-progress", *extra])


def test_parquet_alt_text_column_not_the_default_is_an_error_listing_columns(tmp_path, capsys):
    path = parquet(tmp_path, key="key", image="image", TEXT="caption")
    with pytest.raises(ConfigError, match=r"alt_text_column: column 'caption' is not in .*key, image, TEXT"):
        ParquetInput(path=path).build().check()
    assert cli_run(tmp_path, {"type": "parquet", "path": path}) == 2
    assert "key, image, TEXT" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing claimed
    ParquetInput(path=path, alt_text_column="TEXT").build().check()
    ParquetInput(path=path, alt_text_column=None).build().check()


def test_parquet_image_column_not_the_default_is_an_error(tmp_path, capsys):
    path = parquet(tmp_path, key="key", jpg="image", caption="caption")
    with pytest.raises(ConfigError, match=r"image_column: column 'image' is not in .*key, jpg, caption"):
        ParquetInput(path=path).build().check()
    assert cli_run(tmp_path, {"type": "parquet", "path": path}, "--dry-run") == 2
    assert "jpg" in capsys.readouterr().err
    ParquetInput(path=path, image_column="jpg").build().check()
    with pytest.raises(ConfigError, match="image_path_column: column 'url'"):
        ParquetInput(path=path, image_path_column="url").build().check()


def test_parquet_key_column_missing_only_matters_when_configured(tmp_path):
    path = parquet(tmp_path, image="image", caption="caption")
    ParquetInput(path=path).build().check()  # the default: keys are generated
    with pytest.raises(ConfigError, match="key_column: column 'id'"):
        ParquetInput(path=path, key_column="id").build().check()


def test_jsonl_fields_are_checked(tmp_path):
    path = tmp_path / "m.jsonl"
    write_jsonl(path, items(2))
    JsonlInput(path=str(path)).build().check()
    with pytest.raises(ConfigError, match=r"image_field: .*'url'.*fields found: alt_text, image_path, key"):
        JsonlInput(path=str(path), image_field="url").build().check()
    with pytest.raises(ConfigError, match="alt_text_field: .*'caption'"):
        JsonlInput(path=str(path), alt_text_field="caption").build().check()
    JsonlInput(path=str(path), alt_text_field=None).build().check()


def test_webdataset_json_field_missing_from_the_first_shard_is_an_error(tmp_path, capsys):
    data = list(items(3))
    for it in data:
        it.meta["caption"] = "from json"
    write_tar(tmp_path / "in" / "00000.tar", data)
    path = str(tmp_path / "in" / "*.tar")
    WebDatasetInput(path=path, alt_text="json:caption").build().check()
    with pytest.raises(ConfigError, match=r"'json:TEXT' is in none of the first 3 samples.*KEY.json fields: caption, key, source, url"):
        WebDatasetInput(path=path, alt_text="json:TEXT").build().check()
    with pytest.raises(ConfigError, match=r"member extensions: jpg, json, txt"):
        WebDatasetInput(path=path, alt_text="caption").build().check()
    WebDatasetInput(path=path, alt_text=None).build().check()
    assert cli_run(tmp_path, {"type": "webdataset", "path": path, "alt_text": "json:TEXT"}) == 2
    assert not (tmp_path / "out").exists()


def test_webdataset_alt_text_found_late_in_the_first_shard_passes(tmp_path):
    data = list(items(5))
    for it in data[:-1]:
        it.alt_text = None
    write_tar(tmp_path / "00000.tar", data)
    WebDatasetInput(path=str(tmp_path / "00000.tar")).build().check()


@pytest.mark.parametrize("kind", ["webdataset", "parquet", "jsonl"])
def test_a_missing_input_file_is_a_config_error(tmp_path, kind, capsys):
    path = str(tmp_path / f"nope.{ {'webdataset': 'tar', 'parquet': 'parquet', 'jsonl': 'jsonl'}[kind]}")
    assert cli_run(tmp_path, {"type": kind, "path": path}) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_glob_matching_nothing_and_an_empty_brace_range_are_config_errors(tmp_path, capsys):
    assert cli_run(tmp_path, {"type": "webdataset", "path": str(tmp_path / "*.tar")}) == 2
    assert "matches no file" in capsys.readouterr().err
    assert cli_run(tmp_path, {"type": "webdataset", "path": str(tmp_path / "{000..004}.tar")}) == 2
    assert "none of its 5 files exists" in capsys.readouterr().err


def test_a_brace_range_with_one_missing_shard_runs_the_others_and_names_it(tmp_path, capsys):
    write_tar(tmp_path / "000.tar", items(2))
    write_tar(tmp_path / "002.tar", items(2, start=2))
    assert cli_run(tmp_path, {"type": "webdataset", "path": str(tmp_path / "{000..002}.tar")}) == 1
    assert "FAILED shard 001" in capsys.readouterr().err
    stats = sorted(p.name for p in (tmp_path / "out" / "_stats").iterdir())
    assert stats == ["000.json", "002.json"]
    assert json.loads((tmp_path / "out" / "_stats" / "000.json").read_text())["by_status"] == {"ok": 2}
