"""A JSB-like polyphonic-music set rebuilt from music21's Bach chorales.

``data.source='music21'`` of the ``music`` dataset (research/data/music.py), for
machines without ``JSB_Chorales.mat``. NOT the JSB Chorales benchmark: its
numbers are not comparable to published JSB results (Boulanger-Lewandowski et al.
2012; Bai et al. 2018), since the chorale set, frames and split differ.

Chorales: the Riemenschneider chorales of ``music21.corpus.chorales.Iterator``,
one per corpus file (the 371 numbers name 350 distinct files in music21 10.x),
as notated (no transposition, repeats not expanded). Each becomes a (T, 88) 0/1
roll of MIDI 21..108 with one frame per quarter note from offset 0: frame t is
on for every pitch sounding at quarterLength t (onset <= t < onset + duration),
T = ceil(highest time). Chorales that fail to parse or give < 2 frames are
skipped. Split: sorted by corpus name, one fixed permutation, about the JSB
proportions 229 / 76 / 77.

music21 ships its corpus inside the pip package (``pip install -e '.[music21]'``);
nothing is downloaded. Parsing takes ~40 s (music21 10.5.1), so the rolls are cached in
an ``.npz`` (``data.cache``, default ``~/.cache/research/``): a cache that cannot
be read or is inconsistent is an error naming the file; one written by another
format or music21 version is rebuilt.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

NUM_KEYS = 88
LOWEST_MIDI = 21
CACHE_FORMAT = 1  # bump when the rolls change (stream_roll, corpus_names): old caches rebuild
SPLIT_SEED = 0
JSB_SIZES = {'train': 229, 'val': 76, 'test': 77}
NOT_COMPARABLE = ('data.source=music21: Bach chorales rebuilt from the music21 corpus '
                  '(quarter-note frames, own split) -- NOT the JSB Chorales benchmark; '
                  'numbers are not comparable to published JSB results')


def require_music21():
  try:
    import music21
  except ImportError as e:
    raise ImportError(
        "data.source='music21' needs the `music21` package (it ships the Bach chorales "
        "corpus): pip install -e '.[music21]'") from e
  return music21


def stream_roll(score: Any) -> np.ndarray:
  """(T, 88) uint8 roll of a music21 stream, one frame per quarter note from offset 0.

  Frame t holds the pitches sounding at quarterLength t: notes and chord tones
  with onset <= t < onset + duration (grace notes never sound); T is the
  highest time rounded up. Pitches outside MIDI 21..108 are dropped.
  """
  flat = score.flatten()
  T = math.ceil(flat.highestTime)
  roll = np.zeros((T, NUM_KEYS), np.uint8)
  for n in flat.notes:
    start, end = n.offset, n.offset + n.quarterLength  # exact (float or Fraction)
    lo, hi = math.ceil(start), math.ceil(end)
    if hi <= lo:
      continue
    for p in n.pitches:
      k = p.midi - LOWEST_MIDI
      if 0 <= k < NUM_KEYS:
        roll[lo:hi, k] = 1
  return roll


def corpus_names() -> list[str]:
  """Corpus names of music21's Riemenschneider chorales, sorted, one per distinct file."""
  music21 = require_music21()
  names, seen = [], set()
  for name in sorted(set(music21.corpus.chorales.Iterator(returnType='filename'))):
    path = chorale_path(name)
    if path not in seen:
      seen.add(path)
      names.append(name)
  return names


def chorale_path(name: str) -> Path:
  """The corpus file of a name: getWork matches prefixes ('bach/bwv244.3' also finds
  bwv244.32), so keep the exact stem, MusicXML before Humdrum (or the one match:
  'bach/bwv18.5-l' is bwv18.5-lz.mxl)."""
  music21 = require_music21()
  found = music21.corpus.getWork(name)
  found = [Path(p) for p in (found if isinstance(found, list) else [found])]
  exact = [p for p in found if p.stem == Path(name).name]
  order = {'.mxl': 0, '.xml': 1, '.musicxml': 1, '.krn': 2}
  exact.sort(key=lambda p: order.get(p.suffix, 3))
  if not exact and len(found) == 1:
    return found[0]
  if not exact:
    raise FileNotFoundError(f'No corpus file named {name!r} (getWork found {found})')
  return exact[0]


def parse_chorale(name: str) -> Any:
  """The score of a corpus name, parsed from source (writes no music21 pickle)."""
  music21 = require_music21()
  return music21.converter.parse(chorale_path(name), forceSource=True, storePickle=False)


def build_rolls(names: Iterable[str], parse: Callable[[str], Any]
                ) -> tuple[dict[str, np.ndarray], list[str]]:
  """({name: roll}, skipped names): chorales that fail to parse or give < 2 frames are skipped."""
  rolls, skipped = {}, []
  names = list(names)
  t0 = time.time()
  for i, name in enumerate(names):
    try:
      roll = stream_roll(parse(name))
    except Exception as e:  # music21 raises many types on odd files
      logging.warning('Skipping chorale %s: %s: %s', name, type(e).__name__, e)
      skipped.append(name)
      continue
    if len(roll) < 2:
      logging.warning('Skipping chorale %s: %d frame(s)', name, len(roll))
      skipped.append(name)
      continue
    rolls[name] = roll
    if (i + 1) % 50 == 0:
      logging.info('Parsed %d/%d chorales (%.0f s)', i + 1, len(names), time.time() - t0)
  return rolls, skipped


def default_cache() -> Path:
  return Path(os.environ.get('XDG_CACHE_HOME') or '~/.cache').expanduser() / 'research' / (
      f'music21_chorales_v{CACHE_FORMAT}.npz')


def save_cache(path: Path, rolls: dict[str, np.ndarray], skipped: list[str],
               version: str) -> None:
  """Writes the rolls atomically (a temporary file, then a rename)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  names = sorted(rolls)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez_compressed(
          f, format=np.int64(CACHE_FORMAT), music21_version=np.str_(version),
          names=np.array(names, dtype=str), skipped=np.array(skipped, dtype=str),
          lengths=np.array([len(rolls[n]) for n in names], np.int64),
          rolls=np.concatenate([rolls[n] for n in names]).astype(np.uint8))
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def read_cache(path: Path, version: str
               ) -> tuple[dict[str, np.ndarray], list[str]] | None:
  """The cached ({name: roll}, skipped), or None when written by another format or
  music21 version. A damaged or inconsistent file is a ValueError naming it."""
  def corrupt(why):
    return ValueError(f'Chorale cache {str(path)!r} is corrupt ({why}); delete it to '
                      'rebuild it from the music21 corpus, or set --config.data.cache')
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except Exception as e:  # BadZipFile, zlib.error, OSError, ValueError, ...
    raise corrupt(f'{type(e).__name__}: {e}') from e
  need = {'format', 'music21_version', 'names', 'skipped', 'lengths', 'rolls'}
  if not need <= set(arrays):
    raise corrupt(f'missing {sorted(need - set(arrays))}')
  if int(arrays['format']) != CACHE_FORMAT or str(arrays['music21_version']) != version:
    return None
  names, lengths, flat = arrays['names'], arrays['lengths'], arrays['rolls']
  if (names.ndim != 1 or lengths.shape != names.shape or flat.ndim != 2
      or flat.shape[1] != NUM_KEYS or flat.dtype != np.uint8):
    raise corrupt(f'names {names.shape}, lengths {lengths.shape}, rolls {flat.shape} {flat.dtype}')
  if len(set(names.tolist())) != len(names) or (lengths < 2).any() or lengths.sum() != len(flat):
    raise corrupt('duplicate names, rolls under 2 frames, or lengths not summing to the frames')
  if flat.max(initial=0) > 1:
    raise corrupt('values other than 0 and 1')
  parts = np.split(flat, np.cumsum(lengths)[:-1])
  return dict(zip(names.tolist(), parts)), arrays['skipped'].tolist()


def load_rolls(cache: str | Path = '', names: Callable[[], list[str]] | None = None,
               parse: Callable[[str], Any] | None = None
               ) -> tuple[dict[str, np.ndarray], list[str], Path]:
  """({name: roll}, skipped, cache path): from the cache, else parsed and cached
  (``names`` / ``parse`` default to corpus_names / parse_chorale)."""
  version = require_music21().__version__
  path = Path(cache).expanduser() if cache else default_cache()
  if path.is_file():
    got = read_cache(path, version)
    if got is not None:
      return (*got, path)
    logging.warning('Chorale cache %s is from another format or music21 version; rebuilding', path)
  logging.info('Parsing the music21 Bach chorales into %s (once; about a minute)', path)
  t0 = time.time()
  rolls, skipped = build_rolls((names or corpus_names)(), parse or parse_chorale)
  if not rolls:
    raise ValueError('No chorale of the music21 corpus could be parsed')
  logging.info('Parsed %d chorales (%d skipped) in %.0f s', len(rolls), len(skipped),
               time.time() - t0)
  save_cache(path, rolls, skipped, version)
  return rolls, skipped, path


def split_names(names: Iterable[str], seed: int = SPLIT_SEED) -> dict[str, list[str]]:
  """Deterministic train/val/test split in the JSB proportions (229 / 76 / 77 of 382):
  sorted names, one seeded permutation, each split sorted again."""
  names = sorted(names)
  n, total = len(names), sum(JSB_SIZES.values())
  n_val, n_test = round(n * JSB_SIZES['val'] / total), round(n * JSB_SIZES['test'] / total)
  if min(n_val, n_test, n - n_val - n_test) < 1:
    raise ValueError(f'{n} chorales are too few for three splits')
  perm = np.random.default_rng(seed).permutation(n)
  idx = {'val': perm[:n_val], 'test': perm[n_val:n_val + n_test], 'train': perm[n_val + n_test:]}
  return {k: [names[i] for i in sorted(idx[k])] for k in ('train', 'val', 'test')}


def read_music21(cache: str | Path = '', **kwargs) -> tuple[dict[str, list[np.ndarray]], dict]:
  """({'train'|'val'|'test': [roll (T, 88) float32, ...]}, info) from the corpus or cache."""
  logging.warning(NOT_COMPARABLE)
  rolls, skipped, path = load_rolls(cache, **kwargs)
  split = split_names(rolls)
  out = {k: [rolls[n].astype(np.float32) for n in v] for k, v in split.items()}
  info = {'source': f'music21 {require_music21().__version__} Bach chorales (cache {path})',
          'comparable_to_jsb': False, 'chorales': {k: len(v) for k, v in split.items()},
          'skipped': skipped}
  return out, info
