"""Model registry: ``build_model(config.model, info)`` -> a Flax Linen module.

Every model is called as ``model.apply(variables, x, train=bool)`` and returns
logits (or the task's raw outputs). ``config.model.name`` picks the class; the
remaining keys of ``config.model`` are its constructor arguments, so a typo in
a model option fails at construction with the option named.

A model registers itself where it is defined, ``@register('name')`` above its
class (`research.registry`); the modules of this package are imported on the
first lookup of an unregistered name, so a new file here needs no import list.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import ml_collections

from research.registry import Registry

MODELS: Registry[type[nn.Module]] = Registry('model', __name__)
register = MODELS.register


def build_model(config: ml_collections.ConfigDict, info: dict[str, Any]) -> nn.Module:
  kwargs = {k: (v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v)
            for k, v in config.items() if k != 'name'}
  cls = MODELS[config.name]
  fields = {f.name for f in dataclasses.fields(cls)}
  if 'num_outputs' in fields and 'num_outputs' not in kwargs:
    kwargs['num_outputs'] = info.get('num_outputs', info.get('num_classes'))
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f'Model {config.name!r} has no option(s) {unknown}')
  return cls(**kwargs)
