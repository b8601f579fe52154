"""Stages on batches: error isolation, drops, rejects, stats."""

import json
from typing import Literal

import pyarrow.parquet as pq

from capmill import keys, registry
from capmill.components import StageConfig
from capmill.config import parse_config
from capmill.pipeline import run_stages
from capmill.run import run
from capmill.sample import Sample
from capmill.stages.base import Stage
from tests.conftest import make_config


class ExplodeConfig(StageConfig):
    """Test double: raises on samples whose key ends with one of `bad`, drops those ending with `drop`."""

    type: Literal["explode"] = "explode"
    bad: list[str] = []
    drop: list[str] = []

    def build(self):
        return ExplodeStage(self)

    def io(self, available):
        return keys.StageIO(writes=[keys.score("seen")])


class ExplodeStage(Stage):
    def process(self, batch):
        out = []
        for s in batch:
            if any(s.key.endswith(b) for b in self.config.bad):
                raise RuntimeError(f"cannot handle {s.key}")
            if any(s.key.endswith(d) for d in self.config.drop):
                continue  # not returned: dropped by this stage
            s.scores["seen"] = 1.0
            out.append(s)
        return out


def test_exception_costs_only_the_bad_sample():
    batch = [Sample(key=f"k{i}") for i in range(5)]
    seconds = {}
    out = run_stages([ExplodeStage(ExplodeConfig(bad=["2"], drop=["4"]))], batch, seconds)
    assert [s.key for s in out] == [f"k{i}" for i in range(5)]
    assert out[2].status == "stage_error" and "explode: RuntimeError: cannot handle k2" == out[2].error
    assert out[4].status == "dropped" and out[4].error == "explode"
    assert all(out[i].ok and out[i].scores["seen"] == 1.0 for i in (0, 1, 3))
    assert seconds["explode"] > 0


def test_later_stages_skip_failed_samples():
    batch = [Sample(key="a"), Sample(key="b", status="decode_error", error="x")]
    seen = []

    class Record(Stage):
        def process_one(self, s):
            seen.append(s.key)
            return s

    run_stages([Record(ExplodeConfig())], batch, {})
    assert seen == ["a"]


def test_drops_are_counted_by_reason_and_written_to_rejects(tmp_path, wds):
    config = make_config(tmp_path / "data", tmp_path / "out", stages=[
        {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]},
        {"type": "explode", "drop": ["1", "3"], "bad": ["5"]},
    ])
    config["output"]["rejects"] = True
    with registry.registered(registry.STAGES, ExplodeConfig):
        summary = run(parse_config(config), progress=False)
    # keys 000000..000023: six end in 1 or 3, two end in 5
    assert summary.drops == {"explode": 6} and summary.by_status["stage_error"] == 2
    assert summary.by_status["ok"] == 24 - 8
    stats = json.loads((tmp_path / "out" / "_stats" / "00000.json").read_text())
    assert stats["drops"] == {"explode": 2} and stats["by_status"]["dropped"] == 2
    assert "_rejects/00000.parquet" in stats["outputs"]
    rejects = pq.read_table(tmp_path / "out" / "_rejects" / "00000.parquet").to_pylist()
    assert len(rejects) == 2 and all(r["status"] == "dropped" for r in rejects)
    main = pq.read_table(tmp_path / "out" / "00000.parquet").column("key").to_pylist()
    assert not set(main) & {r["key"] for r in rejects}  # dropped samples leave the main output
    assert "explode" in summary.render() and "stage_error" in summary.render()


def test_unknown_stage_and_backend_types_list_the_registered_ones(tmp_path):
    import pytest

    from capmill.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown stage type 'nope'; registered: .*caption"):
        parse_config(make_config(tmp_path, tmp_path / "o", stages=[{"type": "nope"}]))
    with pytest.raises(ConfigError, match="unknown backend type 'nope'; registered: .*fake"):
        parse_config(make_config(tmp_path, tmp_path / "o", stages=[{"type": "caption", "backend": {"type": "nope"}, "formats": ["ssc"]}]))
    with pytest.raises(ConfigError, match=r"stages\.0: unknown key 'formatz' \(did you mean 'formats'\?\)\. Valid keys here: .*backend, .*formats"):
        parse_config(make_config(tmp_path, tmp_path / "o", stages=[{"type": "caption", "backend": {"type": "fake"}, "formatz": ["ssc"]}]))
    with pytest.raises(ConfigError, match="input: Input tag 'tarball' .* 'webdataset'"):
        parse_config({**make_config(tmp_path, tmp_path / "o"), "input": {"type": "tarball", "path": "x"}})


def test_template_with_unknown_slot_is_a_config_error(tmp_path):
    import pytest

    from capmill.errors import ConfigError

    fmt = tmp_path / "mine.yaml"
    fmt.write_text("name: mine\nversion: 2\ntemplate: 'Describe {subject} in {word_count} words'\n")
    config = parse_config(make_config(tmp_path, tmp_path / "o", stages=[
        {"type": "caption", "backend": {"type": "fake"}, "formats": [str(fmt)]}]))
    with pytest.raises(ConfigError, match=r"mine@2 uses unknown slot\(s\) \{subject\}"):
        config.stages[0].build()
