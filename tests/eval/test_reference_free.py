"""Self-retrieval, RefCLIPScore and the eval runner on awkward sets (no Java, no weights)."""

import math

import numpy as np
import pytest

from capmill.cli.main import main as cli
from capmill.config import parse_config
from capmill.eval import EvalConfig, evaluate, load_set
from capmill.metrics.embedding import own_ranks, ref_clip_s, self_retrieval
from capmill.run import run
from capmill.testing import write_webdataset
from tests.conftest import make_config


def test_identity_embeddings_retrieve_perfectly():
    e = np.eye(200)
    assert self_retrieval(e, e) == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0}
    assert self_retrieval(e, e, bag=99)["R@1"] == 1.0


def test_shuffled_captions_retrieve_at_chance():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2000, 64))
    texts = images[rng.permutation(2000)]
    bag = self_retrieval(texts, images, bag=9, seed=1)  # bags of 10
    assert bag["R@1"] == pytest.approx(0.1, abs=0.02)
    assert bag["R@5"] == pytest.approx(0.5, abs=0.04)
    whole = self_retrieval(texts, images)
    assert whole["R@10"] == pytest.approx(10 / 2000, abs=0.006)


def test_ties_and_nan_rows():
    same = np.ones((5, 3))
    assert own_ranks(same, same).tolist() == [4] * 5  # constant embeddings earn no credit
    e = np.eye(4)
    e[2] = np.nan
    assert self_retrieval(e, np.eye(4))["R@1"] == 1.0  # the NaN caption is left out, not counted wrong


def test_ref_clip_s_harmonic_mean_and_clipping():
    cs = np.array([0.8, 0.0, 0.5])
    t = np.array([[1.0, 0], [1, 0], [1, 0]])
    refs = [np.array([[1.0, 0], [0, 1]]), np.array([[1.0, 0]]), np.array([[-1.0, 0]])]
    out = ref_clip_s(cs, t, refs)
    assert out[0] == pytest.approx(2 * 0.8 * 1.0 / 1.8)
    assert out[1] == 0.0
    assert out[2] == pytest.approx(2 * 0.5 * -1 / (0.5 - 1))  # unclipped, as the reference code
    assert ref_clip_s(cs, t, refs, clip_reference=True)[2] == 0.0
    assert math.isnan(ref_clip_s(cs[:1], t[:1], [None])[0])


class NanScorer:
    """A scorer whose text tower returns NaN for captions containing "nan": a broken model."""

    model_id = "nan-scorer"

    def load(self):
        pass

    def close(self):
        pass

    def embed_images(self, images):
        return np.stack([np.eye(8)[i % 8] for i, _ in enumerate(images)])

    def embed_texts(self, texts):
        return np.stack([np.full(8, np.nan) if "nan" in t.lower() else np.ones(8) / 8 ** 0.5 for t in texts])


def test_eval_with_nan_scores_and_zero_ok_samples(tmp_path, capsys):
    write_webdataset(tmp_path / "data", shards=1, per_shard=6)
    cfg = make_config(tmp_path / "data", tmp_path / "out", stages=[{"type": "filter", "rules": [{"length": "alt_text", "max": 0}]}])
    run(parse_config(cfg), progress=False)
    assert cli(["eval", str(tmp_path / "out"), "--skip", "clip,retrieval"]) == 1
    err = capsys.readouterr().err
    assert "no ok samples to evaluate" in err and "6 dropped" in err

    cfg = make_config(tmp_path / "data", tmp_path / "out2", stages=[])
    run(parse_config(cfg), progress=False)
    data = load_set(str(tmp_path / "out2"), ["alt_text"])
    data.texts["alt_text"][0] = "nan here"
    result = evaluate(data, EvalConfig(fields=["alt_text"], bags=[]), scorer=NanScorer())
    metrics = result.metrics["alt_text"]
    assert math.isfinite(metrics["CLIPScore"]) and math.isfinite(metrics["R@1"])
    assert any("1 NaN values" in n for n in result.notes)


def test_compare_two_fields_and_unknown_field(tmp_path, capsys):
    write_webdataset(tmp_path / "data", shards=1, per_shard=4)
    run(parse_config(make_config(tmp_path / "data", tmp_path / "out")), progress=False)
    code = cli(["eval", str(tmp_path / "out"), "--compare", "ssc", "dsc", "--scorer", "{type: fake}", "--bags", ""])
    captured = capsys.readouterr()
    assert code == 0
    header = captured.out.splitlines()[0].split()
    assert header == ["metric", "ssc", "dsc"]
    assert cli(["eval", str(tmp_path / "out"), "--fields", "nope", "--skip", "clip,retrieval"]) == 1
    assert "field 'nope': no sample has it" in capsys.readouterr().err
    assert cli(["eval", str(tmp_path / "out"), "--scorer", "{type: nosuch}"]) == 2


def test_default_scorer_offline_says_how_to_eval_without_it(tmp_path, capsys):
    write_webdataset(tmp_path / "data", shards=1, per_shard=4)
    run(parse_config(make_config(tmp_path / "data", tmp_path / "out")), progress=False)
    assert cli(["eval", str(tmp_path / "out"), "--fields", "ssc"]) == 1  # default: a hub CLIP, offline here
    err = capsys.readouterr().err
    assert "openai/clip-vit-base-patch32" in err and "--skip clip,retrieval" in err and "Traceback" not in err
    assert cli(["eval", str(tmp_path / "out"), "--fields", "ssc", "--skip", "clip,retrieval"]) == 0
