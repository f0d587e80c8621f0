"""scripts/reproduce.py and scripts/sweep.py on bad input, as a user runs them: one
``error:`` line naming the bad value, exit 2, no traceback, and nothing written to a
workdir that holds something else."""
import json
from pathlib import Path

import pytest

from research import errors
from tests.helpers import run_script


def _script(name, *args, timeout=180):
  return run_script(f'{name}.py', *args, timeout=timeout)


def _one_error_line(p):
  assert p.returncode == errors.EXIT_USAGE, (p.returncode, p.stderr)
  assert 'Traceback' not in p.stderr, p.stderr
  lines = [l for l in p.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, p.stderr
  assert lines[0].startswith('error: ')
  return lines[0]


def _snapshot(workdir):
  return {str(p.relative_to(workdir)): p.read_bytes() for p in Path(workdir).rglob('*')
          if p.is_file()}


def test_an_unknown_experiment_is_named_with_the_known_ones(tmp_path):
  line = _one_error_line(_script('reproduce', '--experiment=mnist1dd',
                                 f'--workdir={tmp_path / "w"}'))
  assert "unknown experiment 'mnist1dd'" in line
  assert "did you mean 'mnist1d'?" in line
  for name in ('bptt', 'mnist1d', 'rnn_music', 'vae_tradeoff'):
    assert name in line
  assert not (tmp_path / 'w').exists()


def test_a_missing_data_file_is_named(tmp_path):
  missing = tmp_path / 'JSB_nope.mat'
  line = _one_error_line(_script('reproduce', '--experiment=rnn_music',
                                 f'--workdir={tmp_path / "w"}', f'--data_path={missing}'))
  assert line == f'error: --data_path={missing}: no such file'
  assert not (tmp_path / 'w').exists()


def test_data_path_for_a_study_that_reads_no_file(tmp_path):
  data = tmp_path / 'x.mat'
  data.write_bytes(b'')
  line = _one_error_line(_script('reproduce', '--experiment=mnist1d',
                                 f'--workdir={tmp_path / "w"}', f'--data_path={data}'))
  assert line == ('error: --data_path does not apply to --experiment=mnist1d (only to '
                  'lstm_variants, rnn_music)')


@pytest.mark.parametrize('flag, experiment, value, message', [
    ('max_programs', 'mnist1d', '2',
     'error: --max_programs does not apply to --experiment=mnist1d (only to lstm_variants)'),
    ('max_programs', 'lstm_variants', '0', 'error: --max_programs=0: must be at least 1'),
    ('population_size', 'lstm_variants', '8', 'error: --population_size does not apply to '
                                              '--experiment=lstm_variants (only to asha_compare)'),
    ('population_size', 'asha_compare', '0', 'error: --population_size=0: must be at least 1'),
])
def test_study_counts_only_where_the_study_takes_them_and_positive(tmp_path, flag, experiment,
                                                                   value, message):
  line = _one_error_line(_script('reproduce', f'--experiment={experiment}',
                                 f'--workdir={tmp_path / "w"}', f'--{flag}={value}'))
  assert line == message
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('args, words', [
    (('--experiment=asha_compare', '--population_size=abc'), ('--population_size=abc', 'int')),
    (('--experiment=mnist1d', '--budget=huge'), ('--budget=huge', 'smoke|full')),
    (('--experiment=mnist1d', '--max_programs=2.5'), ('--max_programs=2.5',)),
])
def test_a_flag_absl_cannot_parse_is_one_line(tmp_path, args, words):
  line = _one_error_line(_script('reproduce', *args, f'--workdir={tmp_path / "w"}'))
  for w in words:
    assert w in line, line
  assert not (tmp_path / 'w').exists()


def test_a_missing_workdir_flag_is_one_line():
  line = _one_error_line(_script('reproduce', '--experiment=mnist1d'))
  assert '--workdir' in line


@pytest.mark.parametrize('holds, found', [
    ({'study.json': {'experiment': 'bptt', 'budget': 'smoke'}},
     "holds the 'bptt' study (--budget=smoke, study.json), not 'mnist1d'"),
    ({'results.json': {'experiment': 'ucr', 'rows': [], 'budget': 'full'}, 'report.md': '# UCR'},
     "holds the 'ucr' study (--budget=full, results.json), not 'mnist1d'"),
    ({'config.json': {'seed': 0}, 'results.json': {'experiment': 'mnist1d', 'rows': []}},
     'holds a single training run (config.json; scripts/train.py), not a study'),
    ({'optuna.journal': ''}, 'holds a sweep (scripts/sweep.py), not a study'),
])
def test_a_workdir_of_another_study_or_run_is_refused_untouched(tmp_path, holds, found):
  workdir = tmp_path / 'other'
  workdir.mkdir()
  for name, content in holds.items():
    (workdir / name).write_text(content if isinstance(content, str) else json.dumps(content))
  before = _snapshot(workdir)
  line = _one_error_line(_script('reproduce', '--experiment=mnist1d', f'--workdir={workdir}',
                                 '--budget=smoke'))
  assert line.startswith(f'error: {workdir} {found}'), line
  assert 'use a new --workdir' in line
  assert _snapshot(workdir) == before


def test_the_same_study_at_another_budget_is_refused(tmp_path):
  workdir = tmp_path / 'forecast'
  workdir.mkdir()
  (workdir / 'study.json').write_text(json.dumps({'experiment': 'forecast', 'budget': 'smoke'}))
  before = _snapshot(workdir)
  line = _one_error_line(_script('reproduce', '--experiment=forecast', f'--workdir={workdir}',
                                 '--budget=full'))
  assert line == (f"error: {workdir} holds the 'forecast' study at --budget=smoke; re-run with "
                  '--budget=smoke to resume it, or use a new --workdir for --budget=full')
  assert _snapshot(workdir) == before


def test_a_run_with_another_config_inside_a_study_is_one_line(tmp_path):
  # An older study's workdir (no study.json) whose conv->LSTM run was trained with the
  # smoke budget, re-run with the full one: the resume check in research/train.py refuses.
  from research import cli
  workdir = tmp_path / 'forecast'
  run_dir = workdir / 'airline_conv_lstm'
  step = run_dir / 'checkpoints' / '4'  # what Orbax lists as a finished checkpoint
  step.mkdir(parents=True)
  (step / '_CHECKPOINT_METADATA').write_text(json.dumps(
      {'item_handlers': {}, 'metrics': {}, 'performance_metrics': {},
       'init_timestamp_nsecs': 1, 'commit_timestamp_nsecs': 2, 'custom_metadata': {}}))
  config = cli.load_config('configs/forecast.py', 'model=conv_lstm,series=airline,epochs=4,quick')
  config.train.progress = False
  (run_dir / 'config.json').write_text(config.to_json_best_effort())
  line = _one_error_line(_script('reproduce', '--experiment=forecast', f'--workdir={workdir}',
                                 '--budget=full'))
  assert line.startswith(f'error: {run_dir} holds a run with a different config (keys differ: ')
  assert "'train.epochs'" in line
  assert line.endswith('(was this study run with --budget=smoke?)')
  assert not (workdir / 'study.json').exists()  # its budget is unknown: nothing claimed
  # The same inside a study recorded at this budget: the difference is in other flags
  # or the device count (a cost model's plan), not the budget.
  (workdir / 'study.json').write_text(json.dumps({'experiment': 'forecast', 'budget': 'full'}))
  line = _one_error_line(_script('reproduce', '--experiment=forecast', f'--workdir={workdir}',
                                 '--budget=full'))
  assert line.startswith(f'error: {run_dir} holds a run with a different config (keys differ: ')
  assert line.endswith('(was this study run with other flags, e.g. --max_programs or '
                       '--population_size, or on another number of devices?)')


def test_study_json_records_a_new_study(tmp_path):
  from research.experiments import common
  fresh = tmp_path / 'fresh'
  common.claim_workdir(fresh, 'forecast', 'smoke', write=False)
  assert not fresh.exists()
  common.claim_workdir(fresh, 'forecast', 'smoke')
  assert json.loads((fresh / 'study.json').read_text()) == {'experiment': 'forecast',
                                                            'budget': 'smoke'}
  common.claim_workdir(fresh, 'forecast', 'smoke')  # the same study resumes
  old = tmp_path / 'old'  # an older finished study: its results.json tells the budget
  old.mkdir()
  (old / 'results.json').write_text(json.dumps({'experiment': 'ucr', 'rows': [],
                                                'budget': 'full'}))
  common.claim_workdir(old, 'ucr', 'full')
  assert json.loads((old / 'study.json').read_text())['budget'] == 'full'
  with pytest.raises(errors.UserError, match='is a file, not a directory'):
    common.claim_workdir(old / 'results.json', 'ucr', 'full')


def test_sweep_names_a_missing_config_file(tmp_path):
  line = _one_error_line(_script('sweep', '--config=configs/nope.py', f'--workdir={tmp_path}/s'))
  assert 'configs/nope.py' in line
  assert not (tmp_path / 's').exists()
