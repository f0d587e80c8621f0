"""The ``results.json`` schema shared by every experiment, sweep and benchmark.

``{"experiment": str, "rows": [{"name", "metric", "value", "std", "n",
"published", "source"}], "provenance": {...}, ...}``: one row per model /
variant / member group; ``value`` is the mean over seeds, ``std`` their sample
standard deviation (null for one seed), ``n`` the number of seeds.
``provenance`` (`research.provenance`) says which code, packages, command and
devices produced the file. The file is strict JSON: a non-finite number (the
metric of a diverged member, the mean of an empty group) is written as null, and
``null_values`` then says so.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

ROW_KEYS = {'name': str, 'metric': str, 'value': (float, type(None)), 'std': (float, type(None)),
            'n': int, 'published': (float, type(None)), 'source': (str, type(None))}


def row(name: str, metric: str, values: Sequence[float], published: float | None = None,
        source: str | None = None) -> dict[str, Any]:
  vals = [float(v) for v in values]
  n = len(vals)
  mean = sum(vals) / n if n else float('nan')
  std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
  return {'name': name, 'metric': metric, 'value': mean, 'std': std, 'n': n,
          'published': None if published is None else float(published), 'source': source}


def validate(results: dict[str, Any]) -> None:
  if not isinstance(results.get('experiment'), str):
    raise ValueError('results.json: "experiment" must be a string')
  rows = results.get('rows')
  if not isinstance(rows, list):
    raise ValueError('results.json: "rows" must be a list')
  for i, r in enumerate(rows):
    missing = set(ROW_KEYS) - set(r)
    if missing:
      raise ValueError(f'results.json row {i} lacks {sorted(missing)}')
    for key, types in ROW_KEYS.items():
      value = r[key]
      if key in ('value', 'std', 'published') and isinstance(value, int):
        value = float(value)
      if not isinstance(value, types):
        raise ValueError(f'results.json row {i}: {key!r} has type {type(r[key]).__name__}')


def write(path: str | os.PathLike | None, experiment: str, rows: list[dict], **extra: Any) -> dict:
  """Writes results.json atomically; adds ``provenance`` unless ``extra`` has one.
  ``path=None`` validates and returns the results without writing (a multi-process
  run's processes other than 0)."""
  results = {'experiment': experiment, 'rows': rows, **extra}
  if 'provenance' not in results:
    from research import provenance
    results['provenance'] = provenance.collect()
  validate(results)
  if path is None:
    return results
  clean, nulls = _finite_or_null(results)
  if nulls:
    clean['null_values'] = (f'{nulls} non-finite number(s) (diverged members, empty groups) '
                            'are written as null')
  path = Path(path)
  tmp = path.with_suffix('.json.tmp')
  tmp.write_text(json.dumps(clean, indent=2, default=_jsonable, allow_nan=False))
  os.replace(tmp, path)  # atomic: a kill never leaves half a results.json
  return results


def _finite_or_null(x) -> tuple[Any, int]:
  if isinstance(x, float):
    return (x, 0) if math.isfinite(x) else (None, 1)
  if hasattr(x, 'tolist') and not isinstance(x, (str, bytes)):
    return _finite_or_null(x.tolist())
  if isinstance(x, dict):
    out, n = {}, 0
    for k, v in x.items():
      out[k], m = _finite_or_null(v)
      n += m
    return out, n
  if isinstance(x, (list, tuple)):
    pairs = [_finite_or_null(v) for v in x]
    return [p[0] for p in pairs], sum(p[1] for p in pairs)
  return x, 0


def read(path: str | os.PathLike) -> dict:
  results = json.loads(Path(path).read_text())
  validate(results)
  return results


def _jsonable(x):
  if hasattr(x, 'tolist'):
    return x.tolist()
  return str(x)


def markdown_table(rows: list[dict], scale: float = 1.0, digits: int = 2) -> str:
  """Rows as a Markdown table; ``scale=100`` shows fractions as percentages."""
  lines = ['| name | metric | ours (mean ± std) | n | published | source |',
           '|---|---|---|---|---|---|']
  for r in rows:
    std = '' if r['std'] is None else f' ± {r["std"] * scale:.{digits}f}'
    pub = '' if r['published'] is None else f'{r["published"] * scale:.{digits}f}'
    value = 'n/a' if r['value'] is None else f'{r["value"] * scale:.{digits}f}'
    lines.append(f'| {r["name"]} | {r["metric"]} | {value}{std} | '
                 f'{r["n"]} | {pub} | {r["source"] or ""} |')
  return '\n'.join(lines)


def group_rows(experiment: str, task, members: list[dict], varied: list[str],
               member_results: list[dict]) -> list[dict]:
  """results.json rows of one run: one group per setting of the varied keys (seeds
  pooled), each with the selection metric, the task's headline metrics and the
  loss on the test split, over the members that did not diverge."""
  from research import population
  groups: dict[str, list[int]] = {}
  for i, m in enumerate(members):
    groups.setdefault(population.group_name(m, varied), []).append(i)
  # The selection metric, the task's headline metrics, and the loss (each once;
  # a regression's loss is its MSE).
  keys = ['test/' + task.select_metric] + [f'test/{k}' for k in ('accuracy', 'mse')
                                           if f'test/{k}' in member_results[0]]
  keys = list(dict.fromkeys(keys + ([] if task.kind == 'regress' else ['test/loss'])))
  rows = []
  for gname, idx in groups.items():
    name = experiment + (f'[{gname}]' if gname else '')
    ok = [i for i in idx if not member_results[i]['diverged']]
    for key in keys:
      if key in member_results[0]:
        rows.append(row(name, key.replace('/', '_'), [member_results[i][key] for i in ok]))
  return rows


def member_summary(out: dict, workdir: str | os.PathLike | None = None) -> str:
  """A plain-text summary of a run, one line per member group: the validation
  metric at each member's selected epoch, the selected epochs, the test metric,
  the run's time, and the files written. Choosing by the validation column, not
  the test one, keeps the test split for the final word."""
  sel = out.get('select_metric') or 'val/loss'
  metric = sel.split('/', 1)[1]
  from research import population
  members = out['members']
  varied = population.varied_keys([m['hparams'] for m in members])
  groups: dict[str, list[dict]] = {}
  for m in members:
    groups.setdefault(population.group_name(m['hparams'], varied) or out['experiment'],
                      []).append(m)

  def mean(ms, key):
    vals = [m[key] for m in ms if m.get(key) is not None and not m['diverged']]
    return f'{sum(vals) / len(vals):.4g}' if vals else 'n/a'

  width = max(len(g) for g in groups)
  lines = [f'{"group":<{width}}  n  {sel + " (selected)":>18}  {"best epochs":>12}  '
           f'{"test/" + metric:>12}']
  for g, ms in groups.items():
    epochs = ','.join(str(m['best_epoch']) for m in ms)
    lines.append(f'{g:<{width}}  {len(ms)}  {mean(ms, sel):>18}  {epochs:>12}  '
                 f'{mean(ms, "test/" + metric):>12}'
                 + (f'  ({sum(m["diverged"] for m in ms)} diverged)'
                    if any(m['diverged'] for m in ms) else ''))
  lines.append(f'train time {out.get("train_time_s", 0):.1f} s'
               + (f' (first epoch incl. compile {out["first_epoch_s"]:.1f} s)'
                  if out.get('first_epoch_s') else ''))
  if workdir is not None:
    w = Path(workdir)
    lines.append('wrote ' + ', '.join(str(w / f) for f in ('results.json', 'metrics.jsonl',
                                                             'checkpoints', 'tensorboard')
                                      if (w / f).exists()))
  return '\n'.join(lines)
