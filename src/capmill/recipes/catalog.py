"""Finding packaged recipes and reading the description in their header comments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capmill.errors import ConfigError
from capmill.suggest import did_you_mean

RECIPE_DIR = Path(__file__).parent
# Export recipes: the target and mix a published method trains on (`capmill export --recipe NAME`).
EXPORT_DIR = RECIPE_DIR / "export"


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def header(self) -> list[str]:
        """The comment block at the top of the file: what it does, its paper, its defaults."""
        lines = []
        for line in self.text.splitlines():
            if not line.startswith("#"):
                break
            lines.append(line[1:].strip())
        return lines

    @property
    def summary(self) -> str:
        """The header's first paragraph, on one line."""
        first: list[str] = []
        for line in self.header:
            if not line and first:
                break
            if line:
                first.append(line)
        return " ".join(first)


def list_recipes() -> list[Recipe]:
    return [Recipe(p.stem, p) for p in sorted(RECIPE_DIR.glob("*.yaml"))]


def list_export_recipes() -> list[Recipe]:
    return [Recipe(p.stem, p) for p in sorted(EXPORT_DIR.glob("*.yaml"))]


def find_export_recipe(name: str) -> Recipe:
    """An export recipe by name, or a YAML file of export settings by path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return Recipe(path.stem, path)
    for recipe in list_export_recipes():
        if recipe.name == name:
            return recipe
    raise ConfigError(f"no export recipe {name!r}; available: {', '.join(r.name for r in list_export_recipes())}")


def find_recipe(name: str) -> Recipe:
    stem = Path(name).stem if name.endswith((".yaml", ".yml")) else name
    for recipe in list_recipes():
        if recipe.name == stem:
            return recipe
    names = [r.name for r in list_recipes()]
    raise ConfigError(f"no recipe {name!r}; available: {', '.join(names)}.{did_you_mean(stem, names)}")


def recipe_named_by(arg: str) -> Recipe | None:
    """The packaged recipe a config argument names when it is no file: `NAME`, `NAME.yaml` or
    `recipes/NAME.yaml`."""
    path = Path(arg)
    bare = len(path.parts) == 1 and path.suffix in ("", ".yaml", ".yml")
    under_recipes = len(path.parts) == 2 and path.parts[0] == "recipes"
    if path.exists() or not (bare or under_recipes):
        return None
    try:
        return find_recipe(path.name)
    except ConfigError:
        return None


def config_tree(config: str | None, recipe: str | None, command: str = "run") -> dict[str, Any]:
    """The config of `capmill COMMAND CONFIG` or `capmill COMMAND --recipe NAME`, as a tree.

    A packaged recipe is run only when asked for with `--recipe`: a config path that does not
    exist but names a recipe is an error saying so, so a missing file never silently becomes a
    packaged pipeline.
    """
    from capmill.config import load_yaml

    if (config is None) == (recipe is None):
        raise ConfigError(f"capmill {command}: give a config file or --recipe NAME (one of the two)")
    if recipe is not None:
        return load_yaml(find_recipe(recipe).path)
    named = recipe_named_by(config)
    if named is not None:
        raise ConfigError(
            f"no config file {config!r}. {named.name!r} is a packaged recipe: run it with "
            f"`capmill {command} --recipe {named.name}`, or copy it to edit with "
            f"`capmill recipes show {named.name} > run.yaml`"
        )
    return load_yaml(config)
