"""Finding packaged recipes and reading the description in their header comments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from capmill.errors import ConfigError

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
        return next((line for line in self.header if line), "")


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
    raise ConfigError(f"no recipe {name!r}; available: {', '.join(r.name for r in list_recipes())}")


def resolve_config_path(arg: str) -> str:
    """A config path for `capmill run`: the file if it exists, else a packaged recipe named by
    `NAME`, `NAME.yaml` or `recipes/NAME.yaml`; anything else is returned unchanged (and then
    reported as missing by the config loader)."""
    path = Path(arg)
    if path.exists():
        return arg
    bare = len(path.parts) == 1 and path.suffix in ("", ".yaml", ".yml")
    under_recipes = len(path.parts) == 2 and path.parts[0] == "recipes"
    if bare or under_recipes:
        try:
            return str(find_recipe(path.name).path)
        except ConfigError:
            return arg
    return arg
