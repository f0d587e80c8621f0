"""Paper-style reproductions: ``run(workdir, budget) -> results dict``.

Each writes ``results.json`` (shared schema), ``report.md`` and PNGs into its
workdir, training every model of the study with `research.train`. Re-running
resumes: finished runs are restored from their last checkpoint.
"""
from __future__ import annotations

import difflib
import importlib

EXPERIMENTS = {
    'mnist1d': 'research.experiments.mnist1d',
    'rnn_music': 'research.experiments.rnn_music',
    'bptt': 'research.experiments.bptt',
    'lstm_variants': 'research.experiments.lstm_variants',
    'ucr': 'research.experiments.ucr',
    'forecast': 'research.experiments.forecast',
    'text': 'research.experiments.text',
    'hybrid_ablation': 'research.experiments.hybrid_ablation',
    'vae_optimizers': 'research.experiments.vae_optimizers',
    'vae_tradeoff': 'research.experiments.vae_tradeoff',
    'hpo_compare': 'research.experiments.hpo_compare',
}


def get(name: str):
  """The study's module; an unknown name is a `research.errors.UserError` naming it,
  the closest known name and all of them."""
  if name not in EXPERIMENTS:
    from research.errors import UserError
    close = difflib.get_close_matches(str(name), EXPERIMENTS, n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    raise UserError(f'unknown experiment {name!r}{hint}; known: {", ".join(sorted(EXPERIMENTS))}')
  return importlib.import_module(EXPERIMENTS[name])
