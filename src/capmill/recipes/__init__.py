"""Ready run configs for the methods capmill implements, shipped as YAML beside this file, and
export recipes (`export/NAME.yaml`) fixing the training mix a published method uses.

`capmill run --recipe revisit` runs the packaged file; `capmill recipes show revisit > run.yaml`
copies it to edit. A config argument that names a recipe but is no file is an error that says
both, so a missing file never silently becomes a packaged pipeline. `capmill/data/provenance.yaml`
says where every parameter of every method comes from (see `capmill.recipes.provenance`).
"""

from capmill.recipes.catalog import (
    Recipe,
    config_tree,
    find_export_recipe,
    find_recipe,
    list_export_recipes,
    list_recipes,
    recipe_named_by,
)

__all__ = ["Recipe", "config_tree", "find_export_recipe", "find_recipe", "list_export_recipes", "list_recipes",
           "recipe_named_by"]
