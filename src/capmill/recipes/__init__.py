"""Ready run configs for the methods capmill implements, shipped as YAML beside this file.

`capmill run revisit` and `capmill run recipes/revisit.yaml` both find the packaged file when
no such file exists in the working directory; a local file of that path always wins, so a
copied and edited recipe is what runs.
"""

from capmill.recipes.catalog import Recipe, find_recipe, list_recipes, resolve_config_path

__all__ = ["Recipe", "find_recipe", "list_recipes", "resolve_config_path"]
