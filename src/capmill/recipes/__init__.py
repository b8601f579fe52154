"""Ready run configs for the methods capmill implements, shipped as YAML beside this file, and
export recipes (`export/NAME.yaml`) fixing the training mix a published method uses.

`capmill run revisit` and `capmill run recipes/revisit.yaml` both find the packaged file when
no such file exists in the working directory; a local file of that path always wins, so a
copied and edited recipe is what runs. `capmill/data/provenance.yaml` says where every parameter of every
method comes from (see `capmill.recipes.provenance`).
"""

from capmill.recipes.catalog import (Recipe, find_export_recipe, find_recipe, list_export_recipes, list_recipes,
                                     resolve_config_path)

__all__ = ["Recipe", "find_export_recipe", "find_recipe", "list_export_recipes", "list_recipes", "resolve_config_path"]
