"""Plumbing shared by the reproductions: train a config variant, write the report."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from research import cli, configlib
from research.train import train_and_evaluate


def variant_config(config_file: str, arg: str, **overrides: Any):
  """``config_file:arg`` with dotted ``overrides`` ({'data.path': ...}) applied;
  None values are skipped."""
  config = cli.load_config(config_file, arg)
  for key, value in overrides.items():
    if value is None:
      continue
    *parents, last = key.split('.')
    node = configlib.get_path(config, '.'.join(parents)) if parents else config
    node[last] = value
  return config


def train_variant(config_file: str, arg: str, workdir: Path, **overrides: Any) -> dict:
  """Trains `variant_config(config_file, arg, **overrides)` in ``workdir`` (resuming
  if a run is there)."""
  return train_and_evaluate(variant_config(config_file, arg, **overrides), workdir)


def write_report(workdir: Path, title: str, intro: str, sections: list[str],
                 images: dict[str, str], wall_s: float) -> None:
  """report.md: title, intro, markdown sections (tables), wall time, images."""
  lines = [f'# {title}', '', intro, '']
  for s in sections:
    lines += [s, '']
  lines += [f'Total wall time: {wall_s:.0f} s.', '']
  lines += [f'![{alt}]({path})' for alt, path in images.items()]
  (Path(workdir) / 'report.md').write_text('\n'.join(lines) + '\n')
