"""`capmill eval` on audio: CLAPScore and audio self-retrieval through the same machinery as
images, with the fake test double and the tiny CLAP; SPIDEr-max reads CLAP-Refine's candidates
(candidates + rank on audio)."""

import numpy as np
import pytest

from capmill.config import parse_config
from capmill.errors import SetupError
from capmill.eval import EvalConfig, evaluate, load_set
from capmill.eval.data import audio_set, candidates_of
from capmill.run import run
from capmill.testing.audio import write_audio_webdataset


@pytest.fixture
def audio_run(tmp_path):
    write_audio_webdataset(tmp_path / "data", shards=1, per_shard=4, hostile=True)
    config = {"input": {"type": "webdataset", "path": f"{tmp_path}/data/*.tar"}, "output": {"path": str(tmp_path / "out")},
              "stages": [{"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"], "media": "audio"},
                         {"type": "candidates", "captioners": [{"type": "fake"}], "media": "audio",
                          "settings": [{"sweep": {"num_beams": [2, 3, 4]}}]},
                         {"type": "rank", "name": "clap_refine", "candidates": "cand", "scorer": {"type": "fake"},
                          "top_k": 3}]}
    assert run(parse_config(config), progress=False).ok
    return tmp_path / "out"


def test_clapscore_and_retrieval_of_audio_match_the_scorer(audio_run):
    from capmill.backends.fake import FakeBackend, FakeBackendConfig
    from capmill.media.audio import AudioConfig, decode_audio
    from capmill.sample import MediaRef

    data = load_set(str(audio_run), ["ssc", "alt_text"])
    assert audio_set(data) and len(data.keys) == 4 and data.excluded["decode_error"] == 7
    result = evaluate(data, EvalConfig(fields=["ssc", "alt_text"], scorer={"type": "fake"}, bags=[2]))
    metrics = result.metrics["ssc"]
    assert {"CLAPScore", "R@1", "R@5", "RD3 R@1"} <= set(metrics) and "CLIPScore" not in metrics
    fake = FakeBackend(FakeBackendConfig())
    waves = [decode_audio(MediaRef(data=raw, ext=ext, kind="audio"), AudioConfig())[0]
             for raw, ext in zip(data.images, data.exts, strict=True)]
    audio, texts = fake.embed_audio(waves), fake.embed_texts(data.texts["ssc"])
    cos = np.einsum("ij,ij->i", audio, texts)
    assert metrics["CLAPScore"] == pytest.approx(float(np.mean(2.5 * np.maximum(cos, 0))), abs=1e-6)
    ranks = [(audio @ texts[i] >= cos[i]).sum() - 1 for i in range(4)]
    assert metrics["R@1"] == pytest.approx(float(np.mean(np.array(ranks) < 1)))


def test_audio_sets_default_to_clap_and_an_image_scorer_says_what_to_use(audio_run, tiny_models):
    data = load_set(str(audio_run), ["ssc"])
    assert EvalConfig().scorer_config(audio=True).type == "clap"
    with pytest.raises(SetupError, match="embeds no audio.*type: clap"):
        evaluate(data, EvalConfig(fields=["ssc"], scorer={"type": "clip", "model": str(tiny_models / "clip")}))
    result = evaluate(data, EvalConfig(fields=["ssc"], scorer={"type": "clap", "model": str(tiny_models / "clap")}, bags=[]))
    assert np.isfinite(result.metrics["ssc"]["CLAPScore"]) and 0 <= result.metrics["ssc"]["R@1"] <= 1


def test_clap_refine_candidates_are_what_spider_max_reads(audio_run):
    from capmill.readers.run_output import RunOutputInput

    reader = RunOutputInput(path=str(audio_run)).build()
    sample = next(s for shard in reader.shards() for s in reader.read(shard) if s.ok)
    caption = sample.captions["clap_refine"]
    candidates = candidates_of(sample, "clap_refine", caption.text)
    assert candidates[0] == caption.text and len(candidates) == len(caption.meta["ranking"]) == 3


def test_eval_cli_on_an_audio_run(audio_run, capsys):
    from capmill.cli.main import main

    assert main(["eval", str(audio_run), "--fields", "ssc,clap_refine", "--scorer", "{type: fake}"]) == 0
    out = capsys.readouterr().out
    assert "CLAPScore" in out and "R@1" in out


def test_the_report_shows_audio_as_a_spectrogram(audio_run, tmp_path):
    import base64
    import io

    from PIL import Image

    from capmill.readers.run_output import RunOutputInput
    from capmill.report.build import spectrogram

    reader = RunOutputInput(path=str(audio_run)).build()
    sample = next(s for shard in reader.shards() for s in reader.read(shard) if s.ok)  # 220 Hz over noise, then alone
    uri = spectrogram(sample, 64)
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("L"), np.float32)
    second_half = image[:, image.shape[1] * 3 // 4:]  # the tone alone: one bright line near the bottom
    rows = second_half.mean(axis=1)
    assert int(np.argmax(rows)) > image.shape[0] * 0.9 and rows.max() > 4 * np.median(rows)
    assert spectrogram(type(sample)(key="x"), 64) is None
