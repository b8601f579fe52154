"""Packaged recipes: listed, shown, run with --recipe, and every one end to end on tiny models."""

import json

import pytest
import yaml

from capmill.cli.main import main
from capmill.config import apply_overrides, load_yaml, parse_config
from capmill.errors import ConfigError
from capmill.recipes import config_tree, find_recipe, list_recipes, recipe_named_by

FAKE = "{type: fake, words: 40}"


def test_recipes_list_and_show(capsys):
    assert main(["recipes", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("revisit", "capsfusion", "veclip"):
        assert name in out
    # Every name in its own column, every summary a whole first paragraph.
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip() and not line.startswith("export")}
    assert lines["compress_align"].startswith("compress_align  Compress & Align:")
    assert lines["vdc"].endswith("(short, detailed, main object, background, camera).")
    assert main(["recipes", "show", "veclip"]) == 0
    assert "ECCV 2024" in capsys.readouterr().out
    assert main(["recipes", "show", "nope"]) == 2


@pytest.mark.parametrize("name", ["revisit", "capsfusion", "veclip"])
def test_recipe_documents_its_paper_and_validates(name):
    recipe = find_recipe(name)
    header = "\n".join(recipe.header)
    assert any(year in header for year in ("2024", "2025")) and "Defaults" in header
    config = parse_config(load_yaml(recipe.path))
    models = [b.model for stage in config.stages for b in stage.backends()]
    assert models and all(m.startswith(("HuggingFaceTB/", "Qwen/")) for m in models)


@pytest.mark.parametrize("name", ["scalecap", "patch_matters", "vfc", "fusecap"])
def test_verifying_recipes_document_their_paper_and_validate(name):
    recipe = find_recipe(name)
    header = "\n".join(recipe.header)
    assert any(year in header for year in ("2024", "2025")) and "Defaults" in header and "Source:" in header
    config = parse_config(load_yaml(recipe.path))
    assert config.stages[-1].type == name and config.output.text_field == name
    models = [m for stage in config.stages for b in stage.backends() for m in b.model_ids()]
    assert models and all(m.startswith(("HuggingFaceTB/", "Qwen/", "google/owlv2", "rapidocr:", "spacy:")) for m in models)


def test_a_recipe_runs_only_when_asked_for_with_recipe(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for arg in ("revisit", "revisit.yaml", "recipes/revisit.yaml"):
        assert main(["run", arg, "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert f"no config file {arg!r}. 'revisit' is a packaged recipe" in err
        assert "capmill run --recipe revisit" in err and "capmill recipes show revisit > run.yaml" in err
    assert main(["models", "capsfusion"]) == 2
    assert "capmill models --recipe capsfusion" in capsys.readouterr().err
    assert config_tree(None, "revisit") == load_yaml(find_recipe("revisit").path)
    # a local file of that path is what runs
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "revisit.yaml").write_text("x: 1\n")
    assert config_tree("recipes/revisit.yaml", None) == {"x": 1}
    assert recipe_named_by("other/revisit.yaml") is None and recipe_named_by("nope") is None
    assert main(["run", "--recipe", "revisti", "--dry-run"]) == 2
    assert "Did you mean 'revisit'?" in capsys.readouterr().err
    assert main(["run", "x.yaml", "--recipe", "revisit"]) == 2
    assert "one of the two" in capsys.readouterr().err
    assert {r.name for r in list_recipes()} >= {"revisit", "capsfusion", "veclip"}


def test_revisit_recipe_end_to_end_with_all_four_exports(tmp_path, monkeypatch, wds, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    rc = main(["run", "--recipe", "revisit", "--no-progress", "--set", f"input.path={tmp_path}/data/*.tar",
               "--set", f"output.path={out}", "--set", f"stages.0.backend={FAKE}", "--set", f"stages.1.backend={FAKE}",
               # The fake backend's text drops the AltText's names, so the fuse guards may reject
               # every fusion of a shard: degenerate, which this plumbing test does not judge.
               "--set", "reliability.fail_at_fallback_share=2"])
    assert rc == 0
    summary = capsys.readouterr().err
    assert "dsc_plus" in summary and "capsfusion" in summary  # the length report is printed
    record = json.loads(next(iter(_records(out))))
    assert {"ssc", "dsc", "dsc_plus", "capsfusion"} <= set(record["captions"])
    for target in ("clip", "mllm", "diffusion", "dreamlip"):
        assert main(["export", str(out), "--target", target, "--out", str(tmp_path / target)]) == 0
        manifest = json.loads((tmp_path / target / "_export.json").read_text())
        assert manifest["written"] == 24, target


def _records(out):
    import pyarrow.parquet as pq

    for path in sorted(out.glob("*.parquet")):
        yield from pq.read_table(path).column("record").to_pylist()


def test_recipe_overrides_switch_backends():
    tree = apply_overrides(load_yaml(find_recipe("capsfusion").path),
                           ["stages.1.backend={type: fake}", "input.path=x/*.tar"])
    config = parse_config(tree)
    assert config.stages[1].backend.type == "fake" and config.stages[1].caption == "ssc"


# --- every recipe without weights: --models DIR swaps each model for the tiny one of its role

def test_models_dir_replaces_every_model_by_its_role(tmp_path, capsys):
    from capmill.testing.smoke import with_tiny_models
    from capmill.testing.tiny_models import ROLES

    models = tmp_path / "tiny"
    for entry in ROLES.values():
        if "family" in entry:
            (models / entry["family"]).mkdir(parents=True, exist_ok=True)
    for recipe in list_recipes():
        tree = with_tiny_models(load_yaml(recipe.path), str(models))
        config = parse_config(tree)
        for stage in config.stages:
            for field, role in stage.backend_roles().items():
                value = getattr(stage, field)
                for backend in value if isinstance(value, list) else [value]:
                    if backend is None:
                        continue
                    entry = ROLES[role.__name__]
                    if "family" in entry:
                        assert backend.model_ids() == [str(models / entry["family"])], recipe.name
                    else:  # played by an offline backend as it is (OCR, text analysis)
                        assert backend.type == entry["type"], recipe.name
        assert main(["recipes", "show", recipe.name, "--models", str(models)]) == 0
        shown = capsys.readouterr().out
        assert shown.count("# every model replaced by the tiny model") == 1
        assert yaml.safe_load(shown) == tree  # what is shown is what runs
    caption = {"type": "caption", "backend": {"type": "fake"}, "formats": ["ssc"]}
    with pytest.raises(ConfigError, match=r"nowhere/idefics3 does not exist; write the tiny models with "
                                          r"`python -m capmill.testing.tiny_models .*nowhere`"):
        with_tiny_models({"input": {"type": "webdataset", "path": "x"}, "output": {"path": "o"}, "stages": [caption]},
                         str(tmp_path / "nowhere"))


def _image_recipes() -> list[str]:
    """Recipes for images; the video recipes (those with a `video:` section) run on video data in
    tests/recipes/test_video_recipes.py, the audio recipes (an `audio:` section) on audio data in
    tests/recipes/test_audio_recipes.py."""
    return [r.name for r in list_recipes() if not {"video", "audio"} & set(load_yaml(r.path))]


@pytest.mark.slow
@pytest.mark.parametrize("name", _image_recipes())
def test_every_recipe_runs_end_to_end_on_tiny_models(name, tiny_models, tmp_path, wds, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    rc = main(["run", "--recipe", name, "--models", str(tiny_models), "--set", f"input.path={tmp_path}/data/*.tar",
               "--set", f"output.path={out}", "--limit", "8", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    written = json.loads((out / "_run.json").read_text())["written"]
    records = [json.loads(r) for r in _records(out)]
    stats = [json.loads(p.read_text()) for p in (out / "_stats").glob("*.json")]
    assert sum(s["samples"] for s in stats) == 8 and all(r["status"] == "ok" for r in records)
    # TL;DR keeps a share of each cluster, Compress & Align the best-rated 12%, by design
    assert len(records) == 8 or name in ("tldr", "compress_align")
    for record in records:
        assert set(record["captions"]) == set(written["captions"])
        assert {c["model"] for c in record["captions"].values()} <= {None, *(str(tiny_models / f) for f in ("idefics3", "qwen2_lm"))}


@pytest.mark.parametrize("name, fakes, export", [
    ("tldr", ["stages.0.scorer", "stages.0.itm", "stages.1.backend"], "tldr"),
    ("noc", ["stages.0.scorer"], None),
    ("dreamlip", ["stages.0.backend"], "dreamlip"),
])
def test_method_recipes_run_and_export_with_test_doubles(tmp_path, wds, capsys, name, fakes, export):
    out = tmp_path / "out"
    sets = [f"input.path={tmp_path}/data/*.tar", f"output.path={out}", *(f"{k}={FAKE}" for k in fakes)]
    if name == "tldr":
        sets.append("stages.0.clusters=4")  # 24 samples: a handful of clusters
        # keeping one in five of each cluster can leave a shard of 8 with none: not degenerate here
        sets.append("reliability.fail_at_drop_share=2")
    assert main(["run", "--recipe", name, "--no-progress", *sum((["--set", s] for s in sets), [])]) == 0
    summary = capsys.readouterr().err
    if name == "tldr":
        assert "fit 0:tldr: keeps" in summary and "better half by itm" in summary
    if name == "noc":
        assert "fit 0:align_bin: 8 uniform bins of clip:alt_text fitted on 24 of 24 samples" in summary
        assert {json.loads(r)["scores"]["align_bin"] for r in _records(out)} <= set(map(float, range(8)))
    if export:
        assert main(["export", str(out), "--recipe", export, "--out", str(tmp_path / "train")]) == 0
