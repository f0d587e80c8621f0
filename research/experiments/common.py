"""Plumbing shared by the reproductions: train a config variant, write the report."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from research import cli, configlib
from research.errors import UserError
from research.train import train_and_evaluate

STUDY_FILE = 'study.json'  # {"experiment": name, "budget": budget}, written at a study's start

# Studies that run with several processes (scripts/reproduce.py --coordinator_address ...):
# those that train only through `train_variant` (no run_sweep, no load_trained or other
# JAX work of their own), so that `follow` can replay them on processes other than 0.
MULTI_PROCESS_STUDIES = ('hybrid_ablation', 'mnist1d', 'pbt', 'rnn_music', 'ucr')
_SCRATCH: tuple[Path, Path] | None = None  # (scratch, shared workdir) while `follow` runs


def variant_config(config_file: str, arg: str, **overrides: Any):
  """``config_file:arg`` with dotted ``overrides`` ({'data.path': ...}) applied;
  None values are skipped."""
  config = cli.load_config(config_file, arg)
  return configlib.with_values(config, {k: v for k, v in overrides.items() if v is not None})


def train_variant(config_file: str, arg: str, workdir: Path, **overrides: Any) -> dict:
  """Trains `variant_config(config_file, arg, **overrides)` in ``workdir`` (resuming
  if a run is there; under `follow`, in the shared workdir's run of that name)."""
  return train_and_evaluate(variant_config(config_file, arg, **overrides), _shared_run(workdir))


def follow(run: Callable[..., dict], workdir: str | Path, **kwargs: Any) -> dict:
  """A study on a process other than 0 of a multi-process run: ``run`` goes through the
  same steps as on process 0, so that every process trains each population together,
  but against a scratch directory, deleted at the end, that takes its reports, plots
  and results.json; each run it trains through `train_variant` is the shared
  ``workdir``'s (a link in the scratch directory leads there, for what the study
  reads back, such as metrics.jsonl)."""
  global _SCRATCH
  scratch = Path(tempfile.mkdtemp(prefix='study-process-')).absolute()
  _SCRATCH = (scratch, Path(workdir).absolute())
  try:
    return run(scratch, **kwargs)
  finally:
    _SCRATCH = None
    shutil.rmtree(scratch, ignore_errors=True)  # the links only, not what they lead to


def _shared_run(workdir: str | Path) -> Path:
  """``workdir`` itself, or under `follow` the shared run a scratch path stands for
  (with a link from the scratch path to it)."""
  if _SCRATCH is None:
    return Path(workdir)
  scratch, shared = _SCRATCH
  rel = Path(workdir).absolute().relative_to(scratch)
  link = scratch
  for part in rel.parts[:-1]:
    link = link / part
    if link.is_symlink():  # inside a run already linked
      return shared / rel
    link.mkdir(exist_ok=True)
  link = link / rel.name
  if link.is_dir() and not link.is_symlink():
    link.rmdir()  # made by the study (empty); OSError if it wrote there
  if not link.is_symlink():
    link.symlink_to(shared / rel, target_is_directory=True)
  return shared / rel


def write_report(workdir: Path, title: str, intro: str, sections: list[str],
                 images: dict[str, str], wall_s: float) -> None:
  """report.md: title, intro, markdown sections (tables), wall time, images."""
  lines = [f'# {title}', '', intro, '']
  for s in sections:
    lines += [s, '']
  lines += [f'Total wall time: {wall_s:.0f} s.', '']
  lines += [f'![{alt}]({path})' for alt, path in images.items()]
  (Path(workdir) / 'report.md').write_text('\n'.join(lines) + '\n')


def workdir_holds(workdir: str | Path) -> dict | None:
  """What a workdir holds, before a study writes into it: None for a new or empty one,
  else ``{'experiment', 'budget', 'source'}`` for a study (from ``study.json``, or an
  older study's ``results.json``), or ``{'other': description}`` for a run that is no
  study (a ``scripts/train.py`` run, a sweep)."""
  workdir = Path(workdir)
  if not workdir.exists():
    return None
  if not workdir.is_dir():
    raise UserError(f'--workdir={workdir} is a file, not a directory')
  study = workdir / STUDY_FILE
  if study.exists():
    try:
      saved = json.loads(study.read_text())
      return {'experiment': str(saved['experiment']), 'budget': saved.get('budget'),
              'source': STUDY_FILE}
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f'{study} is not a study record ({e}); use a new --workdir') from None
  if (workdir / 'config.json').exists():
    return {'other': 'a single training run (config.json; scripts/train.py)'}
  if any((workdir / f).exists() for f in ('optuna.journal', 'optuna.db')):
    return {'other': 'a sweep (scripts/sweep.py)'}
  res = workdir / 'results.json'
  if res.exists():
    try:
      saved = json.loads(res.read_text())
    except ValueError:
      saved = None
    if isinstance(saved, dict) and isinstance(saved.get('experiment'), str):
      return {'experiment': saved['experiment'], 'budget': saved.get('budget'),
              'source': 'results.json'}
    return {'other': 'a results.json of unknown origin'}
  return None


def claim_workdir(workdir: str | Path, experiment: str, budget: str, write: bool = True) -> None:
  """Refuses a workdir that holds another study, the same study at another budget or a
  run that is no study (`research.errors.UserError`, nothing touched); else, with
  ``write``, records ``study.json`` there so that later runs can tell (in a new or
  empty workdir, or one whose results.json names this study; not in a workdir with
  an older study's unfinished runs, whose budget it cannot know)."""
  workdir = Path(workdir)
  found = workdir_holds(workdir)
  if found is not None and 'other' in found:
    raise UserError(f'{workdir} holds {found["other"]}, not a study; use a new --workdir')
  if found is not None and found['experiment'] != experiment:
    raise UserError(
        f'{workdir} holds the {found["experiment"]!r} study ('
        + (f'--budget={found["budget"]}, ' if found.get('budget') else '')
        + f'{found["source"]}), not '
        f'{experiment!r}; use a new --workdir, or --experiment={found["experiment"]} to resume it')
  if found is not None and found.get('budget') not in (None, budget):
    raise UserError(
        f'{workdir} holds the {experiment!r} study at --budget={found["budget"]}; re-run with '
        f'--budget={found["budget"]} to resume it, or use a new --workdir for --budget={budget}')
  if not write or (found is not None and found['source'] == STUDY_FILE):
    return
  if found is None and workdir.exists() and any(workdir.iterdir()):
    return  # an older study's runs without a record: their budget is unknown, claim nothing
  workdir.mkdir(parents=True, exist_ok=True)
  tmp = workdir / f'{STUDY_FILE}.tmp'
  tmp.write_text(json.dumps({'experiment': experiment, 'budget': budget}, indent=2) + '\n')
  os.replace(tmp, workdir / STUDY_FILE)
