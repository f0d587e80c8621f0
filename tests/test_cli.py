"""Bad input to the scripts ends in one `error: ...` line, exit 2, no traceback, no workdir.

The scripts run as real subprocesses (each imports JAX, a few seconds); only the
config-mismatch test trains, one epoch of a linear model on 300 sequences.
"""
import json
from pathlib import Path

import pytest

from research import cli, configlib
from tests.helpers import run_script as _run

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (REPO / 'configs').glob('*.py'))


def _one_error_line(proc, *named, code=2):
  """Asserts exit ``code``, no traceback, one `error:` line naming every string in ``named``."""
  err = proc.stderr
  assert proc.returncode == code, (proc.returncode, err[-2000:])
  assert 'Traceback' not in err, err[-2000:]
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), err[-2000:]
  for text in named:
    assert text in lines[0], (text, lines[0])
  return lines[0]


# ---- config files ----

def test_missing_config_file_is_one_line_and_creates_no_workdir(tmp_path):
  proc = _run('train.py', '--config=configs/nope.py', f'--workdir={tmp_path / "w"}',
              '--config.train.epochs=1')
  _one_error_line(proc, "'configs/nope.py'", 'not found', 'configs/mnist1d.py')
  assert not (tmp_path / 'w').exists()


def test_relative_config_from_another_directory_and_dry_run(tmp_path):
  # configs/mnist1d.py does not exist under tmp_path: it is taken from the repository.
  proc = _run('train.py', '--config=configs/mnist1d.py:model=linear,quick', '--workdir=w',
              '--dry_run', '--config.population=seed=0,1 optim.lr=1e-3,1e-2',
              '--config.data.num_samples=300', cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = proc.stdout
  assert "experiment = 'mnist1d_linear'" in out and "model.name = 'linear'" in out
  assert '4 member(s)' in out and 'member 3: seed=1 optim.lr=0.01' in out
  assert 'member 0: seed=0 optim.lr=0.001' in out
  assert '410 parameters per member' in out  # 40 inputs x 10 classes + 10 biases
  assert not (tmp_path / 'w').exists() and not list(tmp_path.iterdir())


def test_dry_run_counts_each_member_at_its_own_width(tmp_path):
  # Residual MLP on 40 inputs, 10 classes: 40h + h + h*h + h + 10h + 10 parameters.
  proc = _run('train.py', '--config=configs/mnist1d.py:model=mlp,quick', '--dry_run',
              '--config.population=model.hidden=8,16', '--config.data.num_samples=300')
  assert proc.returncode == 0, proc.stderr[-2000:]
  n = lambda h: 40 * h + h + h * h + h + 10 * h + 10  # noqa: E731
  assert f'member 0: {n(8)} parameters' in proc.stdout
  assert f'member 1: {n(16)} parameters' in proc.stdout
  assert (f'{n(8)} to {n(16)} parameters per member (its own shapes; varied: model.hidden); '
          f'the program pads them to the widest, {n(16)} per member') in proc.stdout


@pytest.mark.parametrize('config, named', [
    ('configs/mnist1d.py:model=resnet', ["'resnet'", 'linear, mlp, cnn, gru, cnn_gru']),
    ('configs/vae_digits.py:bta=2', ["'bta'", "did you mean 'beta'", 'anneal, anneal_steps']),
])
def test_unknown_variant_is_one_line(tmp_path, config, named):
  proc = _run('train.py', f'--config={config}', f'--workdir={tmp_path / "w"}')
  _one_error_line(proc, *named)
  assert not (tmp_path / 'w').exists()


def _variants(name):
  return cli.load_config_module(f'configs/{name}').VARIANTS


def _variants_doc(name):
  import ast
  doc = ast.get_docstring(ast.parse((REPO / 'configs' / name).read_text()))
  lines = doc.splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith('Variants:'))
  end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
  return '\n'.join(lines[start:end])


@pytest.mark.parametrize('name', CONFIGS)
def test_every_config_rejects_unknown_variants_and_values(name):
  path = f'configs/{name}'
  cli.load_config(path, None)
  with pytest.raises(ValueError, match=r"unknown config variant 'nope_key'; allowed variants: "):
    cli.load_config(path, 'nope_key=1')
  choices = {k: d for k, d in _variants(name).items() if isinstance(d, configlib.OneOf)}
  assert choices, f'{name}: no variant with a fixed set of values'
  for key, choice in choices.items():
    with pytest.raises(ValueError, match=rf"unknown {key} 'bogus_value'.*allowed: .*"
                       + str(choice.allowed[-1])):
      cli.load_config(path, f'{key}=bogus_value')
    cli.load_config(path, f'{key}={choice.allowed[-1]}')  # every allowed value builds


@pytest.mark.parametrize('name', CONFIGS)
def test_every_config_documents_its_variants(name):
  doc = _variants_doc(name)
  for key in _variants(name):
    assert key in doc, f'{name}: variant {key!r} is not in the docstring\'s Variants block'


def test_parse_arg_types_and_choices():
  a = configlib.parse_arg('model=cnn,lr=1,n=3,path=a/b.mat,quick,name=1e-3',
                          model=configlib.one_of('mlp', ('mlp', 'cnn')), lr=0.1, n=1, path='',
                          quick=False, name='x')
  assert a.to_dict() == dict(model='cnn', lr=1.0, n=3, path='a/b.mat', quick=True, name='1e-3')
  assert isinstance(a.lr, float)
  for arg, msg in [('n=2.5', "n='2.5': n must be an integer"), ('lr=fast', 'must be a number'),
                   ('quick=maybe', 'is a switch'), ('n', "'n' needs a value"),
                   ('n=1,n=2', 'given twice'), ('model=rnn', "unknown model 'rnn'.*mlp, cnn")]:
    with pytest.raises(ValueError, match=msg):
      configlib.parse_arg(arg, model=configlib.one_of('mlp', ('mlp', 'cnn')), lr=0.1, n=1,
                          quick=False)
  # commas inside brackets or quotes do not split variants
  assert configlib.split_arg("a=(1, 2),b='x,y',c") == ['a=(1, 2)', "b='x,y'", 'c']


# ---- tuple-valued keys ----

def test_bare_int_for_a_tuple_key_is_refused(tmp_path):
  proc = _run('train.py', '--config=configs/vae_digits.py:quick', f'--workdir={tmp_path / "w"}',
              '--config.model.hidden=256')
  _one_error_line(proc, '--config.model.hidden=256', "'(256,)'", 'tuple')
  assert not (tmp_path / 'w').exists()


def test_tuple_key_written_as_a_tuple_is_used(tmp_path):
  proc = _run('train.py', '--config=configs/vae_digits.py:quick', '--dry_run',
              "--config.model.hidden=(128, 64)", "--config.model.channels=(16,)")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'model.hidden = (128, 64)' in proc.stdout and 'model.channels = (16,)' in proc.stdout
  # 128 -> 64 encoder, mirrored decoder: the count of an MLP VAE with these widths
  import jax
  import jax.numpy as jnp

  from research.models import vae
  m = vae.VAE(latent=16, hidden=(128, 64))
  shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))))
  n = sum(x.size for x in jax.tree.leaves(shapes['params']))
  assert f'{n} parameters per member' in proc.stdout


def test_vae_refuses_an_int_hidden():
  import jax
  import jax.numpy as jnp

  from research.models import vae
  for bad in (256, (0,), 'ab'):
    m = vae.VAE(hidden=bad)
    with pytest.raises(ValueError, match=r'VAE: hidden must be a tuple .*\(256,\)'):
      jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))))


# ---- data, workdir ----

def test_missing_data_file_is_one_line_and_creates_no_workdir(tmp_path):
  missing = tmp_path / 'nonexistent.mat'
  workdir = tmp_path / 'runs' / 'music'
  proc = _run('train.py', '--config=configs/music.py:quick', f'--workdir={workdir}',
              f'--config.data.path={missing}')
  _one_error_line(proc, str(missing), '--config.data.path')
  assert not workdir.exists() and not (tmp_path / 'runs').exists()


def test_rerun_with_another_config_is_one_line_and_keeps_the_run(tmp_path):
  args = ['--config=configs/mnist1d.py:model=linear,quick', f'--workdir={tmp_path}',
          '--config.data.num_samples=300', '--config.train.epochs=1',
          '--config.population=seed=0', '--config.train.progress=False']
  first = _run('train.py', *args)
  assert first.returncode == 0, first.stderr[-2000:]
  saved = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
  config = (tmp_path / 'config.json').read_text()
  proc = _run('train.py', *args, '--config.optim.lr=0.1')
  _one_error_line(proc, 'different config', 'optim.lr', str(tmp_path))
  assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == saved
  assert (tmp_path / 'config.json').read_text() == config
  assert json.loads((tmp_path / 'results.json').read_text())['rows']


# ---- help ----

def test_help_lists_configs_and_their_variants():
  proc = _run('train.py', '--help')
  assert proc.returncode == 0 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  out = proc.stdout
  for name in CONFIGS:
    assert f'configs/{name}:' in out, name
    assert _variants_doc(name).splitlines()[0] in out
  assert 'likelihood:' in out and 'cnn_gru' in out and '--dry_run' in out and '--workdir' in out


# ---- benchmark list flags ----

@pytest.mark.parametrize('flag, named', [
    ('--modes=trian', ["'trian'", 'train, forward']),
    ('--cells=lstm,foo', ["'foo'", 'lstm, gru, elman']),
])
def test_benchmark_list_flags_are_validated(tmp_path, flag, named):
  proc = _run('benchmark.py', f'--workdir={tmp_path / "b"}', flag, '--matmul=0',
              '--population_members=')
  _one_error_line(proc, *named)
  assert not (tmp_path / 'b').exists()


# ---- guard ----

def test_guard_prints_one_line_and_maps_exit_codes(capsys):
  from absl import app

  from research import errors
  from research.train import DivergenceError

  def raiser(e):
    def main(argv):
      raise e
    return cli.guard(main)

  cases = [(ValueError('bad value\n  spread over lines'), 2, 'error: bad value spread over lines'),
           (FileNotFoundError(2, 'No such file', '/x/y.mat'), 2,
            "error: [Errno 2] No such file: '/x/y.mat'"),
           (app.UsageError('unexpected arguments'), 2, 'error: unexpected arguments'),
           (ValueError('error: prefixed'), 2, 'error: prefixed'),
           (ValueError(''), 2, 'error: ValueError'),
           (DivergenceError('member 0 diverged'), errors.EXIT_DIVERGED, 'error: member 0 diverged'),
           (errors.Interrupted('stopped; re-run to resume', 130), 130, 'stopped; re-run to resume')]
  for exc, code, line in cases:
    with pytest.raises(SystemExit) as e:
      raiser(exc)(['prog'])
    assert e.value.code == code
    assert capsys.readouterr().err.splitlines() == [line]
  with pytest.raises(KeyError):  # a bug keeps its traceback
    raiser(KeyError('x'))(['prog'])
