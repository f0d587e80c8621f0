"""Character-level language models: char CNN-LSTM vs LSTM only vs CNN only.

Trained on Python's help topics (research/data/text.py), chunks of 100
characters, next-character cross-entropy. Reported: test bits per character
(loss / ln 2) against the unigram baseline (the training split's character
frequencies), parameter counts, and samples at two temperatures from each
model's first seed, primed with the same text.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from research import results
from research.analysis import curves
from research.data import text as text_data
from research.experiments import register
from research.experiments.common import train_variant, variant_config, write_report
from research.models.text import sample
from research.train import load_trained, member_variables

MODELS = {'cnn_lstm': 'char CNN-LSTM', 'lstm': 'LSTM only', 'cnn': 'CNN only'}
BUDGETS = {'full': dict(epochs=10, quick=False, sample_len=300),
           'smoke': dict(epochs=2, quick=True, sample_len=40)}
PRIME = 'The "for" statement'
TEMPERATURES = (0.5, 1.0)


@register('text')
def run(workdir: str | Path, budget: str = 'full') -> dict:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  b = BUDGETS[budget]
  t0 = time.time()
  rows, extra, samples, runs = [], {}, [], {}
  unigram = None
  for model, label in MODELS.items():
    arg = f'model={model},epochs={b["epochs"]}' + (',quick' if b['quick'] else '')
    over = {'train.progress': budget == 'full'}
    config = variant_config('configs/text.py', arg, **over)
    run_dir = workdir / model
    out = train_variant('configs/text.py', arg, run_dir, **over)
    runs[label] = run_dir
    bits = [m['test/loss'] / math.log(2) for m in out['members'] if not m['diverged']]
    trainer, ds, members, state = load_trained(config, run_dir)
    if unigram is None:
      unigram = ds.info['unigram_bits']
      rows.append(results.row('unigram (train frequencies)', 'test_bits_per_char', [unigram]))
    rows.append(results.row(label, 'test_bits_per_char', bits))
    extra[label] = {'num_params': out['num_params'], 'train_time_s': out['train_time_s'],
                    'first_epoch_s': out['first_epoch_s']}
    vocab = ds.info['vocab']
    prime = jnp.asarray(text_data.encode(PRIME, vocab))
    for temp in TEMPERATURES:
      ids = sample(trainer.model, member_variables(state, 0), prime, b['sample_len'],
                   jax.random.key(0), temperature=temp, context=int(config.data.seq_len))
      samples.append(f'**{label}, temperature {temp}**\n\n```\n'
                     f'{text_data.decode(ids, vocab)}\n```')
  wall = time.time() - t0
  curves.plot_curves(runs, 'val/loss', workdir / 'curves.png',
                     title='Character-level text: validation loss (mean ± std over seeds)',
                     ylabel='validation loss (nats/char)')
  out = results.write(workdir / 'results.json', 'text', rows, budget=budget, wall_time_s=wall,
                      runs=extra, corpus={k: ds.info[k] for k in ('chars', 'python_version',
                                                                  'corpus_sha1')})
  cost = ['| model | parameters | train time (s) |', '|---|---|---|']
  cost += [f'| {n} | {e["num_params"]} | {e["train_time_s"]:.0f} |' for n, e in extra.items()]
  write_report(workdir, 'Character-level text: CNN-LSTM vs LSTM vs CNN',
               f'Budget `{budget}`. Test bits per character (lower is better), mean ± std over '
               f'seeds; corpus: pydoc topics of Python {ds.info["python_version"]} '
               f'(sha1 {ds.info["corpus_sha1"]}), {ds.info["chars"]} characters.',
               [results.markdown_table(rows, digits=3), '\n'.join(cost),
                f'Samples primed with `{PRIME}`:', *samples],
               {'validation loss': 'curves.png'}, wall)
  print(results.markdown_table(rows, digits=3))
  return out
