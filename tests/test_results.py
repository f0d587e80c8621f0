"""The shared results.json schema (`research.results`)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from research import results


def test_row_mean_and_sample_std():
  vals = [0.9, 0.95, 0.8, 0.875]
  r = results.row('mlp', 'test_acc', vals, published=0.91, source='paper')
  assert r['name'] == 'mlp' and r['metric'] == 'test_acc'
  assert r['value'] == pytest.approx(np.mean(vals))
  assert r['std'] == pytest.approx(np.std(vals, ddof=1))
  assert r['std'] != pytest.approx(np.std(vals, ddof=0))
  assert r['n'] == 4
  assert r['published'] == 0.91 and r['source'] == 'paper'
  results.validate({'experiment': 'e', 'rows': [r]})


def test_row_single_value_has_no_std():
  r = results.row('cnn', 'test_acc', [0.5])
  assert r['value'] == 0.5 and r['std'] is None and r['n'] == 1
  assert r['published'] is None and r['source'] is None


def test_row_converts_numpy_and_int_values():
  r = results.row('gru', 'loss', np.asarray([1, 3], np.float32), published=1)
  assert r['value'] == 2.0 and isinstance(r['value'], float)
  assert r['std'] == pytest.approx(np.sqrt(2.0))
  assert isinstance(r['published'], float)
  json.dumps(r)  # plain Python types only


def _good():
  return {'experiment': 'mnist1d', 'rows': [results.row('a', 'acc', [0.1, 0.2])]}


@pytest.mark.parametrize('missing', sorted(results.ROW_KEYS))
def test_validate_rejects_missing_key(missing):
  res = _good()
  del res['rows'][0][missing]
  with pytest.raises(ValueError, match=missing):
    results.validate(res)


@pytest.mark.parametrize('key,value', [
    ('name', 3), ('metric', None), ('value', '0.5'), ('std', 'x'),
    ('n', 2.0), ('n', None), ('published', 'high'), ('source', 1.0)])
def test_validate_rejects_wrong_type(key, value):
  res = _good()
  res['rows'][0][key] = value
  with pytest.raises(ValueError, match=repr(key)):
    results.validate(res)


def test_validate_accepts_ints_for_floats_and_none_where_allowed():
  res = _good()
  res['rows'][0].update(value=1, std=None, published=0, source=None)
  results.validate(res)
  res['rows'][0]['value'] = None  # a non-finite mean (every member diverged) is written null
  results.validate(res)


@pytest.mark.parametrize('bad', [
    {'rows': []}, {'experiment': 3, 'rows': []}, {'experiment': 'e'},
    {'experiment': 'e', 'rows': {}}])
def test_validate_rejects_bad_top_level(bad):
  with pytest.raises(ValueError):
    results.validate(bad)


def test_write_read_round_trip(tmp_path):
  path = tmp_path / 'results.json'
  rows = [results.row('mlp', 'test_acc', [0.9, 0.92], published=0.91, source='paper'),
          results.row('cnn', 'test_acc', [0.95])]
  written = results.write(path, 'mnist1d', rows, steps=np.int64(5400),
                          lrs=np.asarray([1e-3, 1e-2]))
  assert sorted(p.name for p in tmp_path.iterdir()) == ['results.json']  # no .tmp left
  back = results.read(path)
  assert back['experiment'] == 'mnist1d'
  assert back['rows'] == rows
  assert back['lrs'] == [1e-3, 1e-2]
  assert written['rows'] == rows
  assert json.loads(path.read_text()) == back


def test_write_validates_before_touching_the_file(tmp_path):
  path = tmp_path / 'results.json'
  results.write(path, 'old', [results.row('a', 'acc', [1.0])])
  before = path.read_text()
  bad = results.row('b', 'acc', [1.0])
  del bad['n']
  with pytest.raises(ValueError):
    results.write(path, 'new', [bad])
  assert path.read_text() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ['results.json']


def test_write_is_atomic(tmp_path, monkeypatch):
  """A crash before the rename leaves the old results.json intact."""
  path = tmp_path / 'results.json'
  results.write(path, 'old', [results.row('a', 'acc', [1.0])])
  before = path.read_text()
  seen = []

  def crash(src, dst):
    seen.append((os.fspath(src), os.fspath(dst)))
    raise OSError('simulated crash before the rename')

  monkeypatch.setattr(results.os, 'replace', crash)
  with pytest.raises(OSError, match='simulated crash'):
    results.write(path, 'new', [results.row('b', 'acc', [0.5])])
  assert path.read_text() == before
  # The new content went to a temporary file in the same directory first.
  assert len(seen) == 1 and seen[0][1] == os.fspath(path)
  tmp = seen[0][0]
  assert os.path.dirname(tmp) == os.fspath(tmp_path) and tmp != os.fspath(path)
  assert json.loads(open(tmp).read())['experiment'] == 'new'


def test_read_rejects_invalid_file(tmp_path):
  path = tmp_path / 'results.json'
  path.write_text(json.dumps({'experiment': 'e', 'rows': [{'name': 'a'}]}))
  with pytest.raises(ValueError, match='lacks'):
    results.read(path)


def test_markdown_table():
  rows = [results.row('mlp', 'test_acc', [0.9, 0.92], published=0.91, source='paper'),
          results.row('cnn', 'test_acc', [0.955])]
  table = results.markdown_table(rows, scale=100, digits=1)
  lines = table.splitlines()
  assert len(lines) == 4
  assert lines[0].startswith('| name | metric |')
  assert lines[2] == (f'| mlp | test_acc | 91.0 ± {100 * np.std([0.9, 0.92], ddof=1):.1f} | '
                      f'2 | 91.0 | paper |')
  assert lines[3] == '| cnn | test_acc | 95.5 | 1 |  |  |'
  assert '±' not in lines[3]
  plain = results.markdown_table(rows[1:], digits=3)
  assert '| 0.955 |' in plain


def test_member_summary_shows_validation_at_the_selected_epoch_per_group():
  from research.results import member_summary
  mk = lambda i, lr, seed, val, test, ep, div=False: {
      'member': i, 'hparams': {'seed': seed, 'optim.lr': lr}, 'best_epoch': ep,
      'diverged': div, 'val/accuracy': val, 'test/accuracy': test}
  out = {'experiment': 'x', 'select_metric': 'val/accuracy', 'train_time_s': 12.0,
         'first_epoch_s': 2.0,
         'members': [mk(0, 1e-3, 0, 0.5, 0.4, 3), mk(1, 1e-3, 1, 0.7, 0.6, 5),
                     mk(2, 1e-2, 0, 0.9, 0.8, 2), mk(3, 1e-2, 1, float('nan'), 0.1, 1, True)]}
  lines = member_summary(out).splitlines()
  assert 'val/accuracy (selected)' in lines[0] and 'test/accuracy' in lines[0]
  a = lines[1].split()
  assert a[0] == 'lr=0.001' and a[1] == '2' and a[2] == '0.6' and a[3] == '3,5' and a[4] == '0.5'
  b = lines[2].split()  # the diverged member is counted but not averaged
  assert b[0] == 'lr=0.01' and b[2] == '0.9' and b[4] == '0.8' and '1 diverged' in lines[2]
  assert lines[3].startswith('train time 12.0 s')
