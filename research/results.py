"""The ``results.json`` schema shared by every experiment, sweep and benchmark.

``{"experiment": str, "rows": [{"name", "metric", "value", "std", "n",
"published", "source"}], ...}``: one row per model / variant / member group;
``value`` is the mean over seeds, ``std`` their sample standard deviation
(null for one seed), ``n`` the number of seeds.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

ROW_KEYS = {'name': str, 'metric': str, 'value': float, 'std': (float, type(None)),
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


def write(path: str | os.PathLike, experiment: str, rows: list[dict], **extra: Any) -> dict:
  results = {'experiment': experiment, 'rows': rows, **extra}
  validate(results)
  path = Path(path)
  tmp = path.with_suffix('.json.tmp')
  tmp.write_text(json.dumps(results, indent=2, default=_jsonable))
  os.replace(tmp, path)  # atomic: a kill never leaves half a results.json
  return results


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
    lines.append(f'| {r["name"]} | {r["metric"]} | {r["value"] * scale:.{digits}f}{std} | '
                 f'{r["n"]} | {pub} | {r["source"] or ""} |')
  return '\n'.join(lines)
