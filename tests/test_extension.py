"""The extension contract (docs/ARCHITECTURE.md, "How to add a model / dataset / task /
study"): code outside ``research/`` registers a model and a dataset through the public
registries, a config file imports it, and the real ``scripts/train.py`` trains it.
Also the `research.registry.Registry` they all use: decorators, lazy discovery of a
package's modules, one-line errors naming the known names."""
import json
import os
import sys
import textwrap

import ml_collections
import pytest

from research import data, experiments, models, tasks
from research.errors import UserError
from research.registry import Registry
from tests.helpers import run_script

PLUGIN = '''
"""A toy model and a toy dataset, registered from outside research/."""
import flax.linen as nn
import numpy as np

from research import data, models


@models.register('toy_mlp')
class ToyMLP(nn.Module):
  width: int = 8
  num_outputs: int = 2  # filled from the dataset's num_classes

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.relu(nn.Dense(self.width)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_outputs)(h)


@data.register('toy_blobs')
def toy_blobs(config):
  """Two Gaussian blobs in 4-D; the last quarter is the test split."""
  rng = np.random.default_rng(int(config.seed))
  n = int(config.num_samples)
  y = rng.integers(0, 2, n).astype(np.int32)
  x = (rng.normal(size=(n, 4)) + 2.0 * y[:, None]).astype(np.float32)
  n_test = n // 4
  train, val = data.split_validation(x[n_test:], y[n_test:], 0.25, int(config.seed))
  return data.Dataset('toy_blobs', train, val, {'x': x[:n_test], 'y': y[:n_test]},
                      {'num_classes': 2})
'''

CONFIG = '''
"""Toy blobs with the toy MLP (both from the plugin beside this file).

Variants: ``toy_config.py:width=16``
  width: hidden units
"""
import toy_plugin  # noqa: F401  (registers 'toy_mlp' and 'toy_blobs')

from research import configlib
from research.defaults import base_config


def get_config(arg=None):
  a = configlib.parse_arg(arg, width=8)
  c = base_config()
  c.experiment = 'toy'
  c.population = 'seed=0,1'
  c.data.name = 'toy_blobs'
  c.data.num_samples = 400
  c.data.seed = 0
  c.model = configlib.model(dict(name='toy_mlp', width=a.width))
  c.optim.lr = 1e-2
  c.train.batch_size = 50
  c.train.epochs = 3
  c.train.progress = False
  return c
'''


def _write_plugin(tmp_path):
  (tmp_path / 'toy_plugin.py').write_text(textwrap.dedent(PLUGIN))
  (tmp_path / 'toy_config.py').write_text(textwrap.dedent(CONFIG))
  path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get('PYTHONPATH', '')) if p)
  return dict(os.environ, PYTHONPATH=path)


def test_a_model_and_dataset_from_outside_research_train_with_scripts_train(tmp_path):
  env = _write_plugin(tmp_path)
  workdir = tmp_path / 'run'
  proc = run_script('train.py', f'--config={tmp_path / "toy_config.py"}:width=4',
                    f'--workdir={workdir}', '--config.model.width=6', env=env, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / 'results.json').read_text())
  assert results['experiment'] == 'toy' and results['num_members'] == 2
  assert results['rows'] and all(m['test/accuracy'] > 0.5 for m in results['members'])
  config = json.loads((workdir / 'config.json').read_text())
  assert config['model'] == {'name': 'toy_mlp', 'width': 6}
  assert config['data']['name'] == 'toy_blobs'
  assert results['num_params'] == 4 * 6 + 6 + 6 * 2 + 2
  # A misspelt name is one line naming the closest registered name and all of them.
  proc = run_script('train.py', f'--config={tmp_path / "toy_config.py"}', '--dry_run',
                    '--config.model.name=toy_mpl', env=env, cwd=tmp_path)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: unknown model 'toy_mpl'")
  assert "did you mean 'toy_mlp'?" in lines[0] and 'lstm_fcn, mlp' in lines[0]


def test_registry_decorates_refuses_a_taken_name_and_accepts_a_reloaded_definition():
  reg = Registry('widget')

  @reg.register('a')
  def make_a():
    return 'a'

  assert reg['a'] is make_a and reg.get('b') is None and 'a' in reg and list(reg) == ['a']
  with pytest.raises(ValueError, match="widget 'a' is already registered"):
    reg.register('a', lambda: 'other')
  namespace = {'__name__': make_a.__module__}
  exec(compile('def make_a():\n  return "again"\n', make_a.__code__.co_filename, 'exec'),
       namespace)
  namespace['make_a'].__qualname__ = make_a.__qualname__
  reg.register('a', namespace['make_a'])  # the same definition, executed again
  assert reg['a']() == 'again'
  with pytest.raises(UserError) as e:
    reg['aa']
  assert str(e.value) == "unknown widget 'aa' (did you mean 'a'?); known: a"


def test_registry_discovers_its_packages_modules_lazily(tmp_path, monkeypatch):
  pkg = tmp_path / 'toy_pkg'
  pkg.mkdir()
  (pkg / '__init__.py').write_text('from research.registry import Registry\n'
                                   "THINGS = Registry('thing', __name__)\n")
  (pkg / 'alpha.py').write_text("from toy_pkg import THINGS\n\n\n@THINGS.register('alpha')\n"
                                'def alpha():\n  return 1\n')
  (pkg / 'beta_gamma.py').write_text("from toy_pkg import THINGS\n\nTHINGS.register('beta', 2)\n")
  (pkg / 'broken.py').write_text('import no_such_module_for_the_test\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  try:
    import toy_pkg
    assert 'toy_pkg.alpha' not in sys.modules  # nothing imported before a lookup
    assert toy_pkg.THINGS['alpha']() == 1
    assert 'toy_pkg.beta_gamma' not in sys.modules  # the module named like the entry first
    assert toy_pkg.THINGS['beta'] == 2  # then every module of the package
    with pytest.raises(UserError) as e:
      toy_pkg.THINGS['alpah']
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith("unknown thing 'alpah' (did you mean 'alpha'?); "
                                              'known: alpha, beta; could not import toy_pkg.broken')
    assert 'no_such_module_for_the_test' in msg
  finally:
    for name in [m for m in sys.modules if m == 'toy_pkg' or m.startswith('toy_pkg.')]:
      del sys.modules[name]


def test_models_datasets_tasks_and_studies_share_the_registry():
  for registry, known in ((models.MODELS, 'lstm_fcn'), (data.DATASETS, 'ucr'),
                          (tasks.TASKS, 'elbo'), (experiments.EXPERIMENTS, 'bptt')):
    assert isinstance(registry, Registry) and known in registry
  with pytest.raises(UserError, match=r"unknown task kind 'clasify' \(did you mean 'classify'\?\); "
                                      'known: classify, elbo, multilabel_sequence, regress, '
                                      'sequence_classify$'):
    tasks.make_task(ml_collections.ConfigDict(dict(kind='clasify')))
  with pytest.raises(UserError, match=r"unknown dataset 'mnist_1d' \(did you mean 'mnist1d'\?\)"):
    data.load_dataset(ml_collections.ConfigDict(dict(name='mnist_1d')))
  assert 'data_path' in experiments.get('rnn_music').__code__.co_varnames
