"""Plumbing shared by the reproductions: train a config variant, write the report."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from research import cli, configlib
from research.train import train_and_evaluate


def train_variant(config_file: str, arg: str, workdir: Path, **overrides: Any) -> dict:
  """Loads ``config_file:arg``, applies dotted ``overrides`` ({'data.path': ...};
  None values are skipped) and trains it in ``workdir`` (resuming if a run is there)."""
  config = cli.load_config(config_file, arg)
  for key, value in overrides.items():
    if value is None:
      continue
    *parents, last = key.split('.')
    node = configlib.get_path(config, '.'.join(parents)) if parents else config
    node[last] = value
  return train_and_evaluate(config, workdir)


def write_report(workdir: Path, title: str, intro: str, sections: list[str],
                 images: dict[str, str], wall_s: float) -> None:
  """report.md: title, intro, markdown sections (tables), wall time, images."""
  lines = [f'# {title}', '', intro, '']
  for s in sections:
    lines += [s, '']
  lines += [f'Total wall time: {wall_s:.0f} s.', '']
  lines += [f'![{alt}]({path})' for alt, path in images.items()]
  (Path(workdir) / 'report.md').write_text('\n'.join(lines) + '\n')
