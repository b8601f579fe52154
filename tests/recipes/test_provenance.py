"""The provenance table: every parameter of every packaged recipe has a row, rows state the code's
own defaults, docs/methods.md is the table, and `capmill recipes show` prints the rows."""

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from capmill.cli.main import main
from capmill.config import parse_config
from capmill.export import ExportConfig, export_config
from capmill.recipes import list_export_recipes, list_recipes
from capmill.recipes.provenance import load, method_of_stage, parameters, render_markdown, row
from capmill.registry import config_class

REPO = Path(__file__).resolve().parents[2]


def _stages(recipe):
    return parse_config(yaml.safe_load(recipe.text)).stages


@pytest.mark.parametrize("recipe", list_recipes(), ids=lambda r: r.name)
def test_every_parameter_of_every_run_recipe_has_a_row(recipe):
    missing = []
    for index, stage in enumerate(_stages(recipe)):
        method = method_of_stage(stage)
        assert method is not None, f"stages.{index} ({stage.type}) implements no method of the table"
        missing += [f"stages.{index}.{p}" for p in parameters(stage, method, "common") if row(method, p, "common") is None]
    assert not missing, f"{recipe.name}: no provenance row for {missing}"


@pytest.mark.parametrize("recipe", list_export_recipes(), ids=lambda r: r.name)
def test_every_parameter_of_every_export_recipe_has_a_row(recipe):
    assert recipe.name in load(), f"export recipe {recipe.name} names no method of the table"
    config = export_config(None, 0, [], recipe=yaml.safe_load(recipe.text))
    missing = [p for p in parameters(config, recipe.name, "export") if row(recipe.name, p, "export") is None]
    assert not missing, f"{recipe.name}: no provenance row for {missing}"
    # Every export parameter also has a generic row, whatever recipe uses it.
    assert all(row(None, p, "export") for p in parameters(config, None, "export"))


def _default(cls: type[BaseModel], dotted: str):
    head, _, rest = dotted.partition(".")
    field = cls.model_fields[head]
    value = field.default_factory() if field.default_factory is not None else field.default
    for part in rest.split(".") if rest else []:
        value = getattr(value, part)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def test_rows_state_the_codes_own_defaults():
    checked = 0
    for name, entry in load().items():
        classes = [config_class("capmill.stages", s.split("/")[0]) for s in entry.get("stages") or []]
        if name == "export":
            classes = [ExportConfig]
        for cls in classes:
            for param, r in entry["rows"].items():
                if "value" not in r:
                    continue
                head = param.split(".")[0]
                if head == "mix":
                    from capmill.export.mix import MixConfig

                    assert _default(MixConfig, param.split(".", 1)[1]) == r["value"], (name, param)
                elif head in cls.model_fields:
                    assert _default(cls, param) == r["value"], (name, param)
                else:
                    continue
                checked += 1
    assert checked >= 40


def test_the_numbers_the_issue_names_are_in_the_table():
    assert row("capsfusion", "input_budget", "common")["value"] == 256
    assert "config.yaml" in row("capsfusion", "input_budget", "common")["source"]
    assert row("noc", "fit_samples", "common")["value"] is None  # the whole input, as NoC
    assert "ViT-L/14" in row("noc", "scorer", "common")["published"]
    assert "Labbé" in load()["spider_max"]["title"]
    assert "capmill's own" in row("revisit", "format.ssc", "common")["source"]
    assert "not a Revisit format" in row("revisit", "format.tags", "common")["published"]


def test_docs_methods_is_generated_from_the_table():
    assert (REPO / "docs" / "methods.md").read_text(encoding="utf-8") == render_markdown(), (
        "docs/methods.md is stale: python -m capmill.recipes.provenance docs/methods.md")


def test_recipes_show_prints_the_provenance_of_the_recipe(capsys):
    assert main(["recipes", "show", "capsfusion"]) == 0
    out = capsys.readouterr().out
    assert "input_budget: 256 | 256 | config.yaml (text_input_max_length)" in out
    assert "params.num_beams: 3 | 3 | config.yaml (num_beams)" in out
    assert "mix.synthetic: the fused caption | [capsfusion] | paper" in out
    assert "NO PROVENANCE ROW" not in out
    # The output is still a config: the provenance lines are comments.
    config = parse_config(yaml.safe_load(out))
    assert config.stages[1].type == "fuse"
    assert main(["recipes", "show", "tldr"]) == 0
    out = capsys.readouterr().out
    assert "clusters: 1000 (CC3M) | 1000 | codebook_cluster.py" in out and "join_alt_text" in out
