"""`capmill recipes list|show NAME`: the packaged run configs."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("recipes", help="list the packaged recipes or print one")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="names and one-line descriptions").set_defaults(handler=list_main)
    show = actions.add_parser("show", help="print a recipe (copy it to edit; run it with `capmill run NAME`)")
    show.add_argument("name")
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
    print(recipe.text, end="")
    return 0
