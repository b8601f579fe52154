"""`capmill recipes list|show NAME`: the packaged run configs."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("recipes", help="list the packaged recipes or print one")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="names and one-line descriptions").set_defaults(handler=list_main)
    show = actions.add_parser("show", help="print a recipe with where each of its parameters comes from "
                                           "(copy it to edit; run it with `capmill run --recipe NAME`)")
    show.add_argument("name")
    show.add_argument("--models", metavar="DIR", help="with every model replaced by the tiny model of its role from DIR "
                      "(written by `python -m capmill.testing.tiny_models DIR`)")
    show.set_defaults(handler=show_main)


def list_main(args: argparse.Namespace) -> int:
    from capmill.recipes import list_export_recipes, list_recipes

    runs, exports = list_recipes(), list_export_recipes()
    width = max(len(r.name) for r in runs + exports) + 2
    for recipe in runs:
        print(f"{recipe.name:<{width}}{recipe.summary}")
    print("\nexport recipes (capmill export OUT --recipe NAME):")
    for recipe in exports:
        print(f"{recipe.name:<{width}}{recipe.summary}")
    return 0


def show_main(args: argparse.Namespace) -> int:
    """The run recipe NAME (a valid config: the provenance lines are comments) and, below it, the
    export recipe of that name as comments; with only an export recipe of that name, that one."""
    import yaml

    from capmill.config import load_yaml, parse_config
    from capmill.errors import ConfigError
    from capmill.export import export_config
    from capmill.recipes import find_recipe, list_export_recipes
    from capmill.recipes.provenance import load, recipe_lines

    exports = {r.name: r for r in list_export_recipes()}
    try:
        recipe = find_recipe(args.name)
    except ConfigError:
        if args.name not in exports:
            raise
        recipe = None
    export = exports.get(recipe.name if recipe else args.name)
    export_cfg = export_config(None, 0, [], recipe=yaml.safe_load(export.text)) if export else None
    method = export.name if export and export.name in load() else None
    stages = []
    if recipe is not None:
        print(f"# {recipe.path}")
        if args.models:
            from capmill.testing.smoke import with_tiny_models

            tree = with_tiny_models(load_yaml(recipe.path), args.models)
            print(f"# every model replaced by the tiny model of its role from {args.models}: outputs are gibberish")
            for line in recipe.text.splitlines():
                if not line.startswith("#"):
                    break
                print(line)
            print(yaml.safe_dump(tree, sort_keys=False, allow_unicode=True), end="")
        else:
            print(recipe.text, end="")
        stages = parse_config(yaml.safe_load(recipe.text)).stages
    if export is not None:
        print(f"#\n# export recipe {export.path} (capmill export OUT --recipe {export.name}):")
        print("\n".join(f"#   {line}" if line else "#" for line in export.text.splitlines()))
    print("#")
    print("\n".join(recipe_lines(stages, export_cfg, method)))
    return 0
