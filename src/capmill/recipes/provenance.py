"""Where every parameter comes from: `capmill/data/provenance.yaml` read, matched to stages and exports, printed.

A stage belongs to a method by its type (`caption` → Revisit, `tldr` → TL;DR, `align_bin` → NoC,
`clip_score` → CLIPScore), for `fuse` by its template (`fuse/capsfusion`, `fuse/veclip`), for
`judge` and `refine` by their mode (`judge/grade`, `refine/merge`), for `caption` by a format a
method claims (`caption/autocap`); an
export recipe belongs to the method of its name. A parameter's row is the method's, else the
`common` (stages) or `export` (exports) one. Parameters are a config's fields; a nested section
(`params`, `mix`) is listed field by field when the method has rows for its fields.

    python -m capmill.recipes.provenance docs/methods.md     # regenerate the docs table
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

PROVENANCE_FILE = Path(__file__).parent.parent / "data" / "provenance.yaml"
SKIPPED = {"type"}  # the discriminator, not a parameter


@cache
def load() -> dict[str, Any]:
    return yaml.safe_load(PROVENANCE_FILE.read_text(encoding="utf-8"))


def selectors(stage: Any) -> list[str]:
    """How a stage names its method, most specific first: `fuse/TEMPLATE`; `caption/FORMAT` for a
    format a method claims; `TYPE/MODE` for stages with a mode (`judge/grade`, `refine/merge`);
    then its type."""
    if stage.type == "fuse":
        return [f"fuse/{stage.template}"]
    if stage.type == "caption":  # a method may claim one of its formats (autocap)
        return [f"caption/{name}" for name in stage.formats] + ["caption"]
    mode = getattr(stage, "mode", None)
    return ([f"{stage.type}/{mode}"] if isinstance(mode, str) else []) + [stage.type]


def method_of_stage(stage: Any) -> str | None:
    """The method a stage config implements, by its type (and template for fuse, mode for judge
    and refine)."""
    for selector in selectors(stage):
        for name, entry in load().items():
            if selector in (entry.get("stages") or []):
                return name
    return None


def parameters(config: BaseModel, method: str | None, fallback: str = "common") -> list[str]:
    """The parameter names of `config` (dotted for nested sections the method, or the fallback
    table, lists by field)."""
    data = load()
    rows = {**data.get(fallback, {}).get("rows", {}), **(data.get(method, {}).get("rows", {}) if method else {})}
    names: list[str] = []
    for field in type(config).model_fields:
        if field in SKIPPED:
            continue
        value = getattr(config, field)
        nested = isinstance(value, BaseModel) and any(r.startswith(f"{field}.") for r in rows)
        if nested:
            names.extend(f"{field}.{sub}" for sub in type(value).model_fields)
        else:
            names.append(field)
    if getattr(config, "type", None) == "caption":
        names.extend(f"format.{name}" for name in config.formats)
    return names


def row(method: str | None, param: str, fallback: str) -> dict[str, Any] | None:
    """The row of `param`: the method's own, else the `fallback` table's (`common` or `export`)."""
    data = load()
    for table in (method, fallback):
        if table and param in data.get(table, {}).get("rows", {}):
            return {"method": table, **data[table]["rows"][param]}
    return None


def current(config: BaseModel, param: str) -> Any:
    node: Any = config
    for part in param.split("."):
        node = getattr(node, part, None)
    if isinstance(node, BaseModel):
        node = getattr(node, "model", None) or node.model_dump(mode="json")
    return node


def recipe_lines(stage_configs: list[Any], export: Any = None, export_method: str | None = None) -> list[str]:
    """`capmill recipes show`: one comment line per parameter — published | this recipe | source."""
    lines = ["# Provenance: PARAMETER: published | this recipe | source (see docs/methods.md)"]
    for index, stage in enumerate(stage_configs):
        method = method_of_stage(stage)
        title = load().get(method, {}).get("title", "no published method") if method else "no published method"
        lines.append(f"# stages.{index} {stage.type} — {title}")
        for param in parameters(stage, method, "common"):
            lines.append(_line(param, row(method, param, "common"), current(stage, param)))
    if export is not None:
        title = load().get(export_method, {}).get("title", "") if export_method else ""
        lines.append(f"# export {export.target}" + (f" — {title}" if title else ""))
        for param in parameters(export, export_method, "export"):
            lines.append(_line(param, row(export_method, param, "export"), current(export, param)))
    return lines


def _line(param: str, found: dict[str, Any] | None, value: Any) -> str:
    if param.startswith("format."):
        value = param.split(".", 1)[1]
    if found is None:
        return f"#   {param}: NO PROVENANCE ROW | {value!r} |"
    return f"#   {param}: {found['published']} | {_show(value)} | {found['source']}"


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, dict):
        shown = "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
        return shown if len(shown) <= 100 else "{" + ", ".join(value) + "}"  # a long section: its keys
    if isinstance(value, str) and value != value.strip():
        return repr(value)
    return "none" if value is None else str(value)


def render_markdown() -> str:
    """docs/methods.md: one table per method."""
    out = ["# Methods and where their parameters come from",
           "",
           "Generated from `src/capmill/data/provenance.yaml` by "
           "`python -m capmill.recipes.provenance docs/methods.md`; do not edit by hand.",
           "For every method capmill implements and every parameter it exposes: the published value (the "
           "paper's or its reference code's; \"not published\" when neither says), capmill's default, and the "
           "source. \"capmill's own\" marks a choice of capmill's where nothing was published. "
           "`capmill recipes show NAME` prints the same rows for one recipe, with that recipe's values.",
           ""]
    for name, entry in load().items():
        out.append(f"## {entry['title']} (`{name}`)")
        out.append("")
        if entry.get("reference"):
            out.append(f"Reference: {entry['reference']}." + (f" Stages: {', '.join(f'`{s}`' for s in entry['stages'])}."
                                                                 if entry.get("stages") else ""))
            out.append("")
        out.append("| parameter | published | capmill default | source |")
        out.append("|---|---|---|---|")
        for param, r in entry["rows"].items():
            cells = [f"`{param}`", str(r["published"]), str(r["default"]), str(r["source"])]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render_markdown()
    if args:
        Path(args[0]).parent.mkdir(parents=True, exist_ok=True)
        Path(args[0]).write_text(text, encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
