"""`capmill recipes list|show NAME`: the packaged run configs."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("recipes", help="list the packaged recipes or print one")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="names and one-line descriptions").set_defaults(handler=list_main)
    show = actions.add_parser("show", help="print a recipe (copy it to edit; run it with `capmill run --recipe NAME`)")
    show.add_argument("name")
    show.add_argument("--models", metavar="DIR", help="with every model replaced by the tiny model of its role from DIR "
                      "(written by `python -m capmill.testing.tiny_models DIR`)")
    show.set_defaults(handler=show_main)


def list_main(args: argparse.Namespace) -> int:
    from capmill.recipes import list_recipes

    for recipe in list_recipes():
        print(f"{recipe.name:<14}{recipe.summary}")
    return 0


def show_main(args: argparse.Namespace) -> int:
    from capmill.recipes import find_recipe

    recipe = find_recipe(args.name)
    print(f"# {recipe.path}")
    if not args.models:
        print(recipe.text, end="")
        return 0
    import yaml

    from capmill.config import load_yaml
    from capmill.testing.smoke import with_tiny_models

    tree = with_tiny_models(load_yaml(recipe.path), args.models)
    print(f"# every model replaced by the tiny model of its role from {args.models}: outputs are gibberish")
    for line in recipe.text.splitlines():
        if not line.startswith("#"):
            break
        print(line)
    print(yaml.safe_dump(tree, sort_keys=False, allow_unicode=True), end="")
    return 0
