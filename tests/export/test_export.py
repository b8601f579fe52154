"""`capmill export`: the seeded mix sampler and the four training layouts."""

import json
import tarfile

import pyarrow.parquet as pq
import pytest

from capmill.cli.main import main
from capmill.config import parse_config
from capmill.errors import ConfigError
from capmill.export import MixConfig, MixSampler, export_config, export_run
from capmill.run import run
from tests.conftest import make_config

TEXTS = {"alt_text": "alt", "ssc": "short", "dsc": "dense"}


@pytest.mark.parametrize("p", [0.5, 0.4, 0.13])
def test_sampler_ratio_within_one_percent_over_100k_draws(p):
    sampler = MixSampler(MixConfig(p_synthetic=p, synthetic=["ssc", "dsc"]), seed=7)
    picks = [sampler.choose(f"key{i}", TEXTS) for i in range(100_000)]
    synthetic = sum(1 for x in picks if x != "alt_text") / len(picks)
    assert abs(synthetic - p) < 0.01
    # Synthetic draws spread evenly over the listed formats.
    ssc = picks.count("ssc") / max(1, len(picks) - picks.count("alt_text"))
    assert abs(ssc - 0.5) < 0.02


def test_sampler_is_deterministic_per_key_and_seed():
    a = MixSampler(MixConfig(p_synthetic=0.5), seed=1)
    b = MixSampler(MixConfig(p_synthetic=0.5), seed=1)
    keys = [f"k{i}" for i in range(500)]
    assert [a.choose(k, TEXTS) for k in keys] == [b.choose(k, TEXTS) for k in reversed(keys)][::-1]
    other = MixSampler(MixConfig(p_synthetic=0.5), seed=2)
    assert [a.choose(k, TEXTS) for k in keys] != [other.choose(k, TEXTS) for k in keys]


def test_sampler_falls_back_to_what_a_sample_has():
    s = MixSampler(MixConfig(p_synthetic=1.0, synthetic=["dsc_plus"]))
    assert s.choose("k", {"alt_text": "alt"}) == "alt_text"
    assert MixSampler(MixConfig(p_synthetic=0.0)).choose("k", {"dsc": "d"}) == "dsc"
    assert s.choose("k", {}) == ""


def test_join_alt_text_gives_the_tldr_training_text():
    s = MixSampler(MixConfig(p_synthetic=1.0, synthetic=["dsc"], join_alt_text=True))
    from capmill.sample import Caption, Sample

    sample = Sample(key="k", alt_text=" a dog ", captions={"dsc": Caption(text="A brown dog runs.", source="dsc")})
    assert s.text_for(sample)[:2] == ("alt_text+dsc", "a dog; A brown dog runs.")
    sample.alt_text = ""  # nothing to join: the caption alone
    assert s.text_for(sample)[:2] == ("dsc", "A brown dog runs.")
    plain = MixSampler(MixConfig(p_synthetic=0.0, join_alt_text=True))
    sample.alt_text = "a dog"
    assert plain.text_for(sample)[:2] == ("alt_text", "a dog")  # an AltText draw stays as it is


def test_overrides_and_bad_target():
    cfg = export_config("clip", 3, ["mix.p_synthetic=0.4", "mix.synthetic=[dsc]"])
    assert (cfg.mix.p_synthetic, cfg.mix.synthetic, cfg.seed) == (0.4, ["dsc"], 3)
    assert export_config("mllm").mix.synthetic == ["dsc_plus"]
    with pytest.raises(ConfigError, match="p_synthetic"):
        export_config("clip", 0, ["mix.p_synthetic=1.5"])
    with pytest.raises(ConfigError, match="unknown export target"):
        export_config("dalle")


@pytest.fixture(scope="module")
def run_out(tmp_path_factory):
    from capmill.testing import write_webdataset

    root = tmp_path_factory.mktemp("export")
    write_webdataset(root / "data", shards=2, per_shard=6)
    cfg = make_config(root / "data", root / "out", stages=[
        {"type": "caption", "formats": ["ssc", "dsc", "dsc_plus"], "backend": {"type": "fake", "words": 40}},
        {"type": "fuse", "caption": "dsc", "backend": {"type": "fake"}},
    ])
    assert run(parse_config(cfg), progress=False).ok
    return root / "out"


def _tar(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def test_clip_export_mixes_texts_and_keeps_every_variant(run_out, tmp_path):
    report = export_run(str(run_out), export_config("clip", 0), str(tmp_path / "clip"))
    assert report.written == 12 and set(report.text_source) <= {"alt_text", "ssc", "dsc"}
    members = _tar(tmp_path / "clip" / "00000.tar")
    keys = {name.split(".")[0] for name in members}
    assert len(keys) == 6
    for key in keys:
        record = json.loads(members[f"{key}.json"])
        assert members[f"{key}.txt"].decode() == record["texts"][record["text_source"]]
        assert {"alt_text", "ssc", "dsc", "dsc_plus", "capsfusion"} <= set(record["texts"])
        assert members[f"{key}.jpg"][:2] == b"\xff\xd8"
    again = export_run(str(run_out), export_config("clip", 0), str(tmp_path / "clip2"))
    assert _tar(tmp_path / "clip2" / "00000.tar") == members and again.text_source == report.text_source
    manifest = json.loads((tmp_path / "clip" / "_export.json").read_text())
    assert manifest["config"]["mix"]["p_synthetic"] == 0.5 and manifest["written"] == 12


def test_mllm_export_is_llava_json_with_dsc_plus(run_out, tmp_path):
    export_run(str(run_out), export_config("mllm"), str(tmp_path / "mllm"))
    records = json.loads((tmp_path / "mllm" / "llava.json").read_text())
    assert len(records) == 12
    for r in records:
        human, gpt = r["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        assert gpt["from"] == "gpt" and r["text_source"] == "dsc_plus" and gpt["value"]
        assert (tmp_path / "mllm" / r["image"]).stat().st_size > 0


def test_diffusion_export_parquet_and_sidecar(run_out, tmp_path):
    export_run(str(run_out), export_config("diffusion"), str(tmp_path / "pq"))
    table = pq.read_table(tmp_path / "pq" / "00001.parquet").to_pylist()
    assert len(table) == 6 and all(r["caption"] and r["image"] for r in table)
    assert {r["caption_source"] for r in table} <= {"alt_text", "dsc", "dsc_plus"}
    export_run(str(run_out), export_config("diffusion", 0, ["diffusion_format=sidecar"]), str(tmp_path / "side"))
    txts = sorted((tmp_path / "side" / "00000").glob("*.txt"))
    assert len(txts) == 6 and all(t.with_suffix(".jpg").exists() for t in txts)


def test_cli_export_with_set(run_out, tmp_path, capsys):
    rc = main(["export", str(run_out), "--target", "clip", "--out", str(tmp_path / "c"), "--seed", "4",
               "--set", "mix.p_synthetic=0.0"])
    assert rc == 0
    assert "alt_text" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "c" / "_export.json").read_text())
    assert manifest["text_source"] == {"alt_text": 12} and manifest["config"]["seed"] == 4
    assert main(["export", str(run_out), "--target", "clip", "--out", str(run_out)]) == 2
