import os

import pytest

# Keep every test offline: hub clients must read local folders only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture
def wds(tmp_path):
    """Three small webdataset shards of real and generated photos (8 samples each)."""
    from capmill.testing import write_webdataset

    return write_webdataset(tmp_path / "data", shards=3, per_shard=8)


def make_config(data_dir, out_dir, stages=None, **sections):
    """A run config dict over the tar shards in `data_dir`."""
    config = {
        "input": {"type": "webdataset", "path": f"{data_dir}/*.tar"},
        "output": {"path": str(out_dir), "writers": ["webdataset", "parquet"]},
        "executor": {"type": "local", "batch_size": 4},
        "stages": stages if stages is not None else [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc", "dsc"]}],
    }
    config.update(sections)
    return config


@pytest.fixture(scope="session")
def tiny_models():
    """Folder holding the tiny random models of every family (`tiny_models / "qwen2_vl"` …), built
    once and cached under .cache/tiny_models keyed by the build version."""
    from pathlib import Path

    from capmill.testing.tiny_models import cached_tiny_models

    root = os.environ.get("CAPMILL_TINY_MODELS_CACHE") or Path(__file__).resolve().parent.parent / ".cache" / "tiny_models"
    return cached_tiny_models(root)
