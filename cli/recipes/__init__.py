"""Training recipes for ``medrecon train --recipe NAME``: data, network and schedule chosen together.

Each module of this package exposes ``RECIPES: dict[str, Recipe]``; the name is what the CLI
takes.  A recipe's ``run(args)`` receives the parsed ``medrecon train`` namespace, in which the
generic options (``--steps``, ``--batch-size``, ``--lr``, ``--preset``, ...) are ``None`` unless the
user set them (the recipe fills its own defaults) and ``args.recipe_options`` holds the
``--recipe-option KEY=VALUE`` pairs as a dict of strings.  ``--data`` is optional for recipes that
simulate their training set.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

__all__ = ["Recipe", "all_recipes", "get_recipe"]

_MODULES = ("mri", "ddgan", "ct", "distill", "distill_chain")


@dataclass(frozen=True)
class Recipe:
    name: str
    run: Callable[..., int]
    help: str


def all_recipes() -> dict[str, Recipe]:
    """Every recipe by name (imports the recipe modules; they import torch lazily)."""
    out: dict[str, Recipe] = {}
    for mod in _MODULES:
        for name, recipe in importlib.import_module(f"{__name__}.{mod}").RECIPES.items():
            if name in out:
                raise RuntimeError(f"training recipe {name!r} is defined twice")
            out[name] = recipe
    return out


def get_recipe(name: str) -> Recipe:
    recipes = all_recipes()
    if name not in recipes:
        raise ValueError(f"--recipe: unknown recipe {name!r}; valid recipes: {', '.join(sorted(recipes))}")
    return recipes[name]
