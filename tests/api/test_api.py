"""The Python API: `capmill.caption`, `capmill.Pipeline`, `capmill.evaluate`, and a light import."""

import json
import subprocess
import sys

import pytest

import capmill
from capmill.errors import ConfigError, DuplicateKeyError
from capmill.testing import hostile_images, photo
from capmill.testing.shards import encode
from tests.conftest import make_config

FAKE = {"type": "fake"}


def test_import_is_light_and_names_resolve():
    code = ("import sys, capmill; names = [capmill.caption, capmill.Pipeline, capmill.evaluate, capmill.Stage, "
            "capmill.StageConfig, capmill.VisionLanguageModel, capmill.ImageTextScorer, capmill.RunSummary, "
            "capmill.Sample, capmill.Caption]; print(sorted(m for m in ('torch', 'transformers', 'open_clip', 'ray', "
            "'datasets', 'wandb', 'mlflow', 'tensorboardX', 'PIL', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == []
    with pytest.raises(AttributeError):
        capmill.no_such_name  # noqa: B018


def test_caption_pil_paths_and_bytes(tmp_path):
    big = photo("astronaut").resize((1600, 1200))
    path = tmp_path / "coffee.jpg"
    path.write_bytes(encode(photo("coffee")))
    raw = encode(photo("chelsea"))
    results = capmill.caption([big, str(path), raw], formats=["ssc", "dsc"], backend=FAKE)
    assert [r.ok for r in results] == [True, True, True]
    assert all(set(r) == {"ssc", "dsc"} and all(r.values()) for r in results)
    assert big.size == (1600, 1200)  # the caller's image is left as it was
    assert max(results[0].sample.image.image.size) == 768  # the run's bounded resize applied
    assert results[1].sample.captions["ssc"].prompt_id == "ssc@1" and results[1].sample.captions["ssc"].model == "fake:fake"

    # The same texts as the caption stage writes in a run: the fake backend answers per key and prompt.
    with capmill.Pipeline.from_config({"stages": [{"type": "caption", "backend": FAKE, "formats": ["ssc", "dsc"]}]}) as p:
        again = p.process([capmill.Sample(key="1", image=capmill.ImageRef(path=str(path)))])
    assert again[0].captions["dsc"].text == results[1]["dsc"]


def test_caption_keeps_bad_images_as_rows_and_takes_a_dict():
    bad = hostile_images()
    results = capmill.caption({"good": photo("coffee"), "html": bad["not_an_image"][0], "bomb": bad["bomb_header"][0],
                               "huge": photo("coffee").resize((9000, 9000))},
                              formats="ssc", backend=FAKE, image={"max_pixels": 50_000_000})
    assert results["good"].ok and results["good"]["ssc"]
    assert (results["html"].status, results["html"].error) == ("decode_error", "not a recognised image format")
    assert results["bomb"].status == "decode_error" and "pixel limit" in results["bomb"].error
    assert results["huge"].status == "decode_error" and "over the pixel limit of 50000000" in results["huge"].error
    assert dict(results["html"]) == {} and "decode_error" in repr(results["html"])


def test_caption_errors_say_what_to_do():
    with pytest.raises(ConfigError, match="needs a backend"):
        capmill.caption([photo("coffee")], formats=["ssc"])
    with pytest.raises(ConfigError, match="unknown backend type 'nope'"):
        capmill.caption([photo("coffee")], formats=["ssc"], backend={"type": "nope"})
    with pytest.raises(ConfigError, match="stages.0.n"):
        capmill.caption([photo("coffee")], formats=["ssc"], backend=FAKE, n=0)
    with pytest.raises(TypeError, match="cannot make a sample from int"):
        capmill.caption([3], formats=["ssc"], backend=FAKE)


def test_pipeline_run_matches_the_cli(tmp_path, wds):
    import yaml

    from capmill.cli.main import main as cli
    from tests.conftest import snapshot

    cfg = make_config(tmp_path / "data", tmp_path / "cli")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli(["run", str(path), "--no-progress"]) == 0
    summary = capmill.Pipeline.from_config(path, output={"path": str(tmp_path / "api")}).run(progress=False)
    assert isinstance(summary, capmill.RunSummary) and summary.ok and summary.samples == 24
    assert snapshot(tmp_path / "api", frozenset({"_run.json"})) == snapshot(tmp_path / "cli", frozenset({"_run.json"}))


def test_from_config_overrides(tmp_path, wds):
    cfg = make_config(tmp_path / "data", tmp_path / "out")
    p = capmill.Pipeline.from_config(cfg, executor={"batch_size": 3}, **{"stages.0.formats": ["ssc"]},
                                     set=["output.text_field=ssc"])
    assert p.config.executor.batch_size == 3 and p.config.executor.type == "local"  # merged, not replaced
    assert p.config.stages[0].formats == ["ssc"] and p.config.output.text_field == "ssc"
    assert cfg["executor"]["batch_size"] == 4  # the caller's dict is not modified
    with pytest.raises(ConfigError, match="batch_size: Input should be greater than or equal to 1"):
        capmill.Pipeline.from_config(cfg, executor={"batch_size": 0})
    stages_only = capmill.Pipeline.from_config({"stages": cfg["stages"]})
    with pytest.raises(ConfigError, match="no input and output"):
        stages_only.run()
    recipe = capmill.Pipeline.from_config(recipe="revisit", input={"type": "webdataset", "path": "x.tar"}, output={"path": "o"})
    assert [s.type for s in recipe.config.stages][0] == "caption"


def test_process_in_memory(tmp_path):
    pipeline = capmill.Pipeline.from_config({
        "stages": [{"type": "caption", "backend": FAKE, "formats": ["ssc"]},
                   {"type": "clip_score", "backend": {"type": "fake", "dim": 8}},
                   {"type": "filter", "rules": [{"score": "clip:ssc", "min": 2.0}]}],
        "image": {"max_side": 64}})
    samples = [capmill.Sample(key="a", image=capmill.ImageRef(data=encode(photo("coffee"))), alt_text="coffee"),
               capmill.Sample(key="b", image=capmill.ImageRef(data=b"junk"))]
    with pipeline:
        out = pipeline.process(samples)
    assert [s.key for s in out] == ["a", "b"]
    assert out[0].status == "dropped" and out[0].error == "filter: clip:ssc < 2"  # every score is under 2
    assert "clip:ssc" in out[0].scores and max(out[0].image.image.size) == 64
    assert out[1].status == "decode_error"
    assert not list(tmp_path.iterdir())  # nothing written anywhere
    with pytest.raises(DuplicateKeyError, match="share the key 'a'"):
        pipeline.process([capmill.Sample(key="a"), capmill.Sample(key="a")])


@pytest.fixture
def scored_run(tmp_path, wds):
    cfg = make_config(tmp_path / "data", tmp_path / "out")
    assert capmill.Pipeline.from_config(cfg).run(progress=False).ok
    return tmp_path / "out"


SCORER = {"type": "fake", "dim": 16}


@pytest.mark.slow
def test_evaluate_mirrors_the_cli_and_keeps_history(scored_run, tmp_path):
    from capmill.cli.main import main as cli
    from capmill.report import collect

    assert cli(["eval", str(scored_run), "--fields", "alt_text,ssc", "--scorer", "{type: fake, dim: 16}",
                "--bags", "", "--skip", "coco", "--json", str(tmp_path / "cli.json")]) == 0
    cli_metrics = json.loads((tmp_path / "cli.json").read_text())
    metrics = capmill.evaluate(scored_run, fields=["alt_text", "ssc"], scorer=SCORER, bags=[], skip=["coco"])
    assert metrics == cli_metrics
    assert set(metrics["ssc"]) >= {"CLIPScore", "R@1", "words (mean)"}

    history = json.loads((scored_run / "_eval.json").read_text())["evaluations"]
    assert len(history) == 1  # the same evaluation twice: replaced, not added
    assert history[0]["image_embeddings"] == {"reused": 24, "embedded": 0}  # the API's run reused the CLI's

    dsc = capmill.evaluate(scored_run, fields=["dsc"], scorer=SCORER, bags=[], skip=["coco"])
    limited = capmill.evaluate(scored_run, fields=["dsc"], scorer=SCORER, bags=[], skip=["coco"], limit=5)
    history = json.loads((scored_run / "_eval.json").read_text())["evaluations"]
    assert [(e["fields"], e["limit"], e["samples"]) for e in history] == [
        (["alt_text", "ssc"], None, 24), (["dsc"], None, 24), (["dsc"], 5, 5)]
    assert history[1]["image_embeddings"] == {"reused": 24, "embedded": 0}  # other fields: images not embedded again
    assert history[0]["scorer"] == "fake:fake" and history[0]["references"] is None
    assert dsc["dsc"]["captions"] == 24 and limited["dsc"]["captions"] == 5
    # the report shows every evaluation
    assert len(collect(str(scored_run))["evaluations"]) == 3


@pytest.mark.slow
def test_evaluate_cache_is_per_scorer_and_checks_the_images(scored_run):
    from capmill.eval.cache import CACHE_DIR

    capmill.evaluate(scored_run, fields=["ssc"], scorer=SCORER, bags=[], skip=["coco"])
    first = capmill.evaluate(scored_run, fields=["ssc"], scorer={"type": "fake", "dim": 8}, bags=[], skip=["coco"])
    history = json.loads((scored_run / "_eval.json").read_text())["evaluations"]
    assert [e["image_embeddings"]["embedded"] for e in history] == [24, 24]  # another scorer: its own cache
    assert len(list((scored_run / CACHE_DIR).glob("images-*.npz"))) == 2
    again = capmill.evaluate(scored_run, fields=["ssc"], scorer={"type": "fake", "dim": 8}, bags=[], skip=["coco"])
    assert again == first


@pytest.mark.slow
def test_evaluate_references_mapping_and_two_runs(scored_run, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(scored_run, other)
    refs = {"000000": ["an astronaut in a suit"], "000001": ["a cup of coffee"]}
    out = capmill.evaluate([scored_run, other], fields=["alt_text"], references=refs, skip=["clip", "retrieval", "coco"])
    assert set(out) == {str(scored_run), str(other)} and out[str(scored_run)] == out[str(other)]
    assert out[str(other)]["alt_text"]["captions"] == 24
    history = json.loads((scored_run / "_eval.json").read_text())["evaluations"]
    assert history[-1]["references"]["path"] is None and len(history[-1]["references"]["sha256"]) == 16
    assert history[-1]["scorer"] is None  # no image metrics, no scorer


@pytest.mark.slow
def test_evaluate_takes_the_dense_metrics_options(scored_run, tmp_path):
    """`capmill.evaluate` mirrors `capmill eval --instances --judge --compare --verifier`."""
    from capmill.cli.main import main as cli

    keys = [f"{i:06d}" for i in range(24)]
    instances = {"images": [{"id": k} for k in keys], "categories": [{"id": 18, "name": "dog"}],
                 "annotations": [{"image_id": k, "category_id": 18} for k in keys]}
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    judge = {"type": "fake", "script": [{"when": "Verdict: tie", "answer": "Verdict: 1"}]}
    options = dict(fields=["ssc", "dsc"], instances=tmp_path / "instances.json", scorer=SCORER, bags=[], truematch=[3],
                   skip=["coco", "openchair", "facts", "vdc"], judge=judge, compare=True)
    metrics = capmill.evaluate(scored_run, **options)
    assert {"CHAIRi", "CHAIRs", "TrueMatch_R@1_bag3", "facts_per_caption", "win_rate"} <= set(metrics["dsc"])
    assert metrics["ssc"]["win_rate"] == pytest.approx(1 - metrics["dsc"]["win_rate"])
    assert cli(["eval", str(scored_run), "--compare", "ssc", "dsc", "--instances", str(tmp_path / "instances.json"),
                "--scorer", "{type: fake, dim: 16}", "--bags", "", "--truematch", "3",
                "--skip", "coco,openchair,facts,vdc", "--judge", json.dumps(judge), "--json", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text()) == metrics
