"""Paper-style reproductions: ``run(workdir, budget) -> results dict``.

Each writes ``results.json`` (shared schema), ``report.md`` and PNGs into its
workdir, training every model of the study with `common.train_variant`.
Re-running resumes: finished runs are restored from their last checkpoint.

A study registers its entry point, ``@register('name')`` above ``run``
(`research.registry`); the modules of this package are imported on the first
lookup of an unregistered name, so a new study is one new file here.
"""
from __future__ import annotations

from typing import Callable

from research.registry import Registry

EXPERIMENTS: Registry[Callable[..., dict]] = Registry('experiment', __name__)
register = EXPERIMENTS.register


def get(name: str) -> Callable[..., dict]:
  """The study's ``run``; an unknown name is a `research.errors.UserError` naming it,
  the closest known name and all of them."""
  return EXPERIMENTS[name]
