"""On Ray the fit runs once, in the driver, and every actor of a pool gets the same state: the output
equals a local run's, dedup included with two actors."""

from __future__ import annotations

import os
from typing import Any, Literal

import pytest

from capmill import keys
from capmill.components import StageConfig
from capmill.config import parse_config
from capmill.run import run
from capmill.sample import Sample
from capmill.stages.base import RunContext, Stage
from capmill.testing import write_webdataset
from tests.conftest import snapshot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


class CountingFitConfig(StageConfig):
    """Test double: a stage with a fit that appends a line to `marker` each time it runs."""

    type: Literal["counting_fit"] = "counting_fit"
    marker: str

    def build(self) -> CountingFitStage:
        return CountingFitStage(self)

    def io(self, available):
        return keys.StageIO(reads=[], writes=[keys.score("fitted_on")])


class CountingFitStage(Stage):
    config: CountingFitConfig

    @property
    def needs_fit(self) -> bool:
        return True

    def fit(self, ctx: RunContext, samples) -> dict[str, Any]:
        n = sum(1 for _ in samples)
        with open(self.config.marker, "a") as f:
            f.write(f"{os.getpid()}\n")
        return {"n": n}

    def process_one(self, sample: Sample) -> Sample:
        sample.scores["fitted_on"] = float(self.fit_state["n"])
        return sample


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray.data", reason="needs ray[data]: pip install 'capmill[ray]'")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, ROOT, os.environ.get("PYTHONPATH")) if p)
    import ray

    from capmill.executors.ray import start_local_cluster

    start_local_cluster(num_cpus=8, object_store_memory_gb=0.2, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_fitted_stages_on_ray_give_the_local_output_and_fit_once(tmp_path, ray_cluster):
    write_webdataset(tmp_path / "data", shards=2, per_shard=6)
    (tmp_path / "data" / "00002.tar").write_bytes((tmp_path / "data" / "00000.tar").read_bytes())  # duplicates
    marker = tmp_path / "fits.txt"
    two = {"concurrency": 2}
    stages = [CountingFitConfig(marker=str(marker), resources=two),
              {"type": "dedup", "exact": ["image"], "resources": two},
              {"type": "align_bin", "scorer": {"type": "fake", "dim": 16}, "resources": two}]

    def config(out, executor):
        return parse_config({"input": {"type": "webdataset", "path": f"{tmp_path}/data/*.tar", "key_prefix": "shard"},
                             "output": {"path": str(out), "rejects": True},
                             "executor": {"type": executor, "batch_size": 2}, "stages": stages,
                             # the duplicated test images fill a whole shard: dropping it is meant
                             "reliability": {"fail_at_drop_share": 2}})

    local = run(config(tmp_path / "local", "local"), progress=False)
    on_ray = run(config(tmp_path / "ray", "ray"), progress=False)
    assert local.ok and on_ray.ok
    assert marker.read_text().splitlines() == [str(os.getpid())] * 2  # once per run, in the driver
    assert snapshot(tmp_path / "ray", frozenset({"_run.json"})) == snapshot(tmp_path / "local", frozenset({"_run.json"}))
    assert on_ray.drops == {"dedup: exact image": 6} and on_ray.fits == local.fits
