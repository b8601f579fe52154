"""The chain check: reads nothing provides, second writers and unwritten text fields stop a run
(exit 2) before anything is read, loaded or claimed; `_run.json` records what a run wrote."""

import json

import pytest
import yaml

from capmill.chain import check_chain, written_keys
from capmill.cli.main import main
from capmill.config import parse_config
from capmill.errors import ConfigError
from capmill.run import run
from tests.conftest import make_config

FAKE = {"type": "fake"}


def caption(*formats, **extra):
    return {"type": "caption", "backend": FAKE, "formats": list(formats), **extra}


def run_cli(tmp_path, config, *args):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return main(["run", str(path), "--no-progress", *args])


# --- the reproductions: exit 2, the stage, the key and what is available, nothing claimed

@pytest.mark.parametrize("dry_run", [False, True])
def test_fuse_of_a_caption_no_stage_writes_is_exit_2_before_any_work(tmp_path, wds, capsys, dry_run):
    config = make_config(tmp_path / "data", tmp_path / "out", stages=[
        caption("ssc"), {"type": "fuse", "caption": "dsc", "backend": FAKE}])
    assert run_cli(tmp_path, config, *(["--dry-run"] if dry_run else [])) == 2
    err = capsys.readouterr().err
    assert 'stage 1 (fuse) reads captions["dsc"], which no earlier stage writes' in err
    assert "captions: ssc" in err and "fields: alt_text, audio, image, video" in err
    assert not (tmp_path / "out").exists()


def test_filter_on_a_score_no_stage_writes_is_exit_2(tmp_path, wds, capsys):
    config = make_config(tmp_path / "data", tmp_path / "out", stages=[
        caption("ssc", "dsc"), {"type": "filter", "rules": [{"score": "clip:dsc", "min": 0.2}]}])
    assert run_cli(tmp_path, config) == 2
    err = capsys.readouterr().err
    assert 'stage 1 (filter) reads scores["clip:dsc"]' in err and "scores: none" in err
    assert not (tmp_path / "out").exists()


def test_output_text_field_no_stage_writes_is_exit_2(tmp_path, wds, capsys):
    config = make_config(tmp_path / "data", tmp_path / "out", stages=[caption("ssc")])
    config["output"]["text_field"] = "dsc"
    assert run_cli(tmp_path, config) == 2
    err = capsys.readouterr().err
    assert "output.text_field 'dsc' names captions[\"dsc\"], which no stage writes" in err
    assert "did you mean 'ssc'?" in err.lower()
    assert not (tmp_path / "out").exists()


def test_filter_length_rule_and_misspelt_score_are_checked_with_a_suggestion(tmp_path):
    config = parse_config(make_config(tmp_path, tmp_path / "o", stages=[
        caption("dsc"), {"type": "clip_score", "backend": FAKE},
        {"type": "filter", "rules": [{"length": "dsc", "max": 77}, {"score": "clip:dcs", "min": 0.2}]}]))
    with pytest.raises(ConfigError, match=r"scores\[\"clip:dcs\"\].*Did you mean 'clip:dsc'\?"):
        check_chain(config)


def test_stages_without_images_or_alt_text_are_refused(tmp_path):
    no_decode = make_config(tmp_path, tmp_path / "o", stages=[caption("ssc")], image={"decode": False})
    with pytest.raises(ConfigError, match=r"stage 0 \(caption\) reads image.*image.decode: false"):
        check_chain(parse_config(no_decode))
    no_alt = make_config(tmp_path, tmp_path / "o", stages=[caption("ssc"), {"type": "fuse", "caption": "ssc", "backend": FAKE}])
    no_alt["input"] = {"type": "parquet", "path": "x.parquet", "alt_text_column": None}
    with pytest.raises(ConfigError, match=r"stage 1 \(fuse\) reads alt_text.*without an AltText"):
        check_chain(parse_config(no_alt))


def test_a_stage_io_error_names_the_stage(tmp_path):
    config = parse_config(make_config(tmp_path, tmp_path / "o", stages=[caption("ssc", "dsc", store_as="same")]))
    with pytest.raises(ConfigError, match=r"stage 0 \(caption\): caption: formats .* all store under \['same'\]"):
        check_chain(config)


# --- second writers, names and score prefixes

def test_a_second_writer_of_a_key_is_refused(tmp_path):
    twice = make_config(tmp_path, tmp_path / "o", stages=[
        caption("dsc"), {"type": "clip_score", "backend": FAKE}, {"type": "clip_score", "backend": FAKE}])
    with pytest.raises(ConfigError, match=r"stage 2 \(clip_score_2\) writes scores\[\"clip:alt_text\"\], which "
                                          r"stage 1 \(clip_score\) already writes"):
        check_chain(parse_config(twice))
    again = make_config(tmp_path, tmp_path / "o", stages=[caption("ssc"), caption("ssc", backend={"type": "fake", "model": "b"})])
    with pytest.raises(ConfigError, match=r"writes captions\[\"ssc\"\]"):
        check_chain(parse_config(again))
    # {model} in store_as keeps two captioners apart
    apart = make_config(tmp_path, tmp_path / "o", stages=[
        caption("ssc", store_as="{format}_{model}"),
        caption("ssc", store_as="{format}_{model}", backend={"type": "fake", "model": "b"})])
    assert written_keys(parse_config(apart))["captions"] == ["ssc_fake:b", "ssc_fake:fake"]


def test_named_scoring_stages_keep_their_own_keys_and_timings(tmp_path, wds):
    config = parse_config(make_config(tmp_path / "data", tmp_path / "out", stages=[
        caption("dsc"),
        {"type": "clip_score", "backend": FAKE, "fields": ["dsc"]},
        {"type": "clip_score", "name": "siglip", "backend": {"type": "fake", "dim": 16}, "fields": ["dsc"]},
        {"type": "filter", "rules": [{"score": "siglip:dsc", "min": -1}]},
        {"type": "filter", "rules": [{"score": "clip:dsc", "min": -1}]},
    ]))
    assert [s.display_name for s in config.stages] == ["caption", "clip_score", "siglip", "filter", "filter_2"]
    summary = run(config, progress=False, limit=4)
    assert summary.ok and {"clip_score", "siglip", "filter", "filter_2"} <= set(summary.seconds)
    record = json.loads(next(iter(_records(tmp_path / "out"))))
    assert set(record["scores"]) == {"clip:dsc", "clipscore:dsc", "siglip:dsc", "siglipscore:dsc"}
    assert record["scores"]["clip:dsc"] != record["scores"]["siglip:dsc"]


def test_two_stages_with_one_name_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="stages 0 and 1 are both named 'x'"):
        parse_config(make_config(tmp_path, tmp_path / "o", stages=[caption("ssc", name="x"), caption("dsc", name="x")]))


def test_unnamed_configs_keep_their_hash(tmp_path):
    """Adding `name:` to stages must not change the hash of configs that do not use it."""
    config = parse_config(make_config(tmp_path, tmp_path / "o", stages=[caption("ssc")]))
    assert "name" not in config.model_dump()["stages"][0]
    named = parse_config(make_config(tmp_path, tmp_path / "o", stages=[caption("ssc", name="cap")]))
    assert named.model_dump()["stages"][0]["name"] == "cap"


# --- what a run wrote, and a later run on it

def test_run_records_what_it_wrote_and_a_later_run_starts_from_it(tmp_path, wds, capsys):
    first = make_config(tmp_path / "data", tmp_path / "first", stages=[caption("ssc", "dsc")])
    assert run_cli(tmp_path, first) == 0
    record = json.loads((tmp_path / "first" / "_run.json").read_text())
    assert record["written"] == {"captions": ["dsc", "ssc"], "scores": [], "fields": ["alt_text", "image"]}

    later = make_config(tmp_path / "data", tmp_path / "later", stages=[
        {"type": "fuse", "caption": "dsc", "backend": FAKE},
        {"type": "filter", "rules": [{"length": "capsfusion", "min": 1}]}])
    later["input"] = {"type": "capmill", "path": str(tmp_path / "first")}
    # The fake backend's fusions drop the AltText's names, so the guards may reject a whole
    # shard's: degenerate, which this test of the chain does not judge.
    later["reliability"] = {"fail_at_fallback_share": 2}
    config = parse_config(later)
    assert written_keys(config)["captions"] == ["capsfusion", "dsc", "ssc"]
    assert run(config, progress=False).ok

    wrong = {**later, "stages": [{"type": "fuse", "caption": "dsc_plus", "backend": FAKE}]}
    assert run_cli(tmp_path, wrong) == 2
    assert 'reads captions["dsc_plus"]' in capsys.readouterr().err


def test_an_earlier_run_without_a_written_list_is_read_from_its_config(tmp_path, wds):
    first = parse_config(make_config(tmp_path / "data", tmp_path / "first", stages=[caption("ssc")],
                                     output={"path": str(tmp_path / "first"), "writers": ["parquet"]}))
    assert run(first, progress=False).ok
    run_file = tmp_path / "first" / "_run.json"
    record = json.loads(run_file.read_text())
    del record["written"]  # as runs before the chain check wrote it
    run_file.write_text(json.dumps(record))
    later = make_config(tmp_path / "data", tmp_path / "later", stages=[caption("dsc")])
    later["input"] = {"type": "capmill", "path": str(tmp_path / "first")}
    # a parquet-only output gives no images back: captioning it needs them
    with pytest.raises(ConfigError, match=r"stage 0 \(caption\) reads image"):
        check_chain(parse_config(later))
    later["stages"] = [{"type": "filter", "rules": [{"length": "ssc", "min": 1}]}]
    assert written_keys(parse_config(later)) == {"captions": ["ssc"], "scores": [], "fields": ["alt_text"]}


def test_a_capmill_input_that_is_not_an_output_is_a_config_error(tmp_path):
    config = make_config(tmp_path, tmp_path / "o", stages=[])
    config["input"] = {"type": "capmill", "path": str(tmp_path / "nothing")}
    with pytest.raises(ConfigError, match="is not a capmill output directory"):
        check_chain(parse_config(config))


def _records(out):
    import pyarrow.parquet as pq

    for path in sorted(out.glob("*.parquet")):
        yield from pq.read_table(path).column("record").to_pylist()


def test_an_earlier_run_that_says_nothing_usable_is_taken_on_trust(tmp_path, caplog):
    first = tmp_path / "first"
    first.mkdir()
    (first / "_run.json").write_text(json.dumps({"config": {"stages": [{"type": "gone_plugin"}]}, "config_hash": "x"}))
    later = make_config(tmp_path, tmp_path / "later", stages=[{"type": "filter", "rules": [{"score": "old:dsc", "min": 0}]}])
    later["input"] = {"type": "capmill", "path": str(first)}
    chain = check_chain(parse_config(later))
    assert chain.written is None  # a partial list would mislead the next run
    assert "does not say what that run wrote" in caplog.text
