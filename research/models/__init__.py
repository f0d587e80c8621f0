"""Model registry: ``build_model(config.model, info)`` -> a Flax Linen module.

Every model is called as ``model.apply(variables, x, train=bool)`` and returns
logits (or the task's raw outputs). ``config.model.name`` picks the class; the
remaining keys of ``config.model`` are its constructor arguments, so a typo in
a model option fails at construction with the option named.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import ml_collections

from research.models import cnn, hybrid, recurrent, simple, text, vae

MODELS: dict[str, type[nn.Module]] = {
    'linear': simple.Linear,
    'mlp': simple.ResidualMLP,
    'cnn': cnn.ConvNet1D,
    'rnn': recurrent.RNNClassifier,
    'cnn_rnn': hybrid.CNNRNN,
    'fcn': cnn.FCN,
    'lstm_fcn': hybrid.LSTMFCN,
    'vae': vae.VAE,
    'lrcn': hybrid.LRCN,
    'convlstm': hybrid.ConvLSTM,
    'char_lm': text.CharLM,
}


def build_model(config: ml_collections.ConfigDict, info: dict[str, Any]) -> nn.Module:
  kwargs = {k: (v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v)
            for k, v in config.items() if k != 'name'}
  if config.name not in MODELS:
    raise ValueError(f'Unknown model {config.name!r}; known: {sorted(MODELS)}')
  cls = MODELS[config.name]
  fields = {f.name for f in dataclasses.fields(cls)}
  if 'num_outputs' in fields and 'num_outputs' not in kwargs:
    kwargs['num_outputs'] = info.get('num_outputs', info.get('num_classes'))
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f'Model {config.name!r} has no option(s) {unknown}')
  return cls(**kwargs)
