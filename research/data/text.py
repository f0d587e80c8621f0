"""Character-level text: Python's own documentation, for char language models.

The corpus is the text of ``pydoc_data.topics.topics`` (the help topics that
``help()`` prints: language reference sections on statements, operators,
types...), which ships with every CPython install. Its topics are joined in
sorted key order, separated by blank lines: about 465K characters on Python
3.11 (the text differs slightly between Python versions, so ``info`` records
the version and a hash of the corpus and numbers are comparable only at equal
hashes).

Splits are contiguous (first ``split[0]`` of the characters for training,
then validation, then test), as for enwik8/text8. The vocabulary is the
training split's characters plus id 0 for any character it lacks. Each split
is cut into non-overlapping chunks of ``seq_len + 1`` characters: x = the
first ``seq_len`` ids, y = the next-character targets (x shifted by one);
every chunk starts with an empty context.

``info['unigram_bits']``: the test split's cross-entropy in bits per character
under the training split's character frequencies (add-one smoothed): the
baseline a model must beat by using context.
"""
from __future__ import annotations

import hashlib
import sys

import ml_collections
import numpy as np

from research import data

UNK = '\x00'


def corpus() -> str:
  try:
    from pydoc_data import topics
  except ImportError as e:  # pragma: no cover - every CPython has it
    raise ImportError("Dataset 'pydoc_text' needs the standard library's pydoc_data "
                      'package, which this Python lacks') from e
  return '\n\n'.join(topics.topics[k].strip() for k in sorted(topics.topics))


def encode(text: str, vocab: list[str]) -> np.ndarray:
  index = {c: i for i, c in enumerate(vocab)}
  return np.fromiter((index.get(c, 0) for c in text), np.int32, len(text))


def decode(ids, vocab: list[str]) -> str:
  return ''.join(vocab[int(i)] for i in ids)


def chunks(ids: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
  n = (len(ids) - 1) // seq_len
  idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
  block = ids[idx]
  return {'x': block[:, :-1], 'y': block[:, 1:]}


@data.register('pydoc_text')
def load(config: ml_collections.ConfigDict) -> data.Dataset:
  seq_len = int(config.get('seq_len', 100))
  fractions = tuple(float(f) for f in config.get('split', (0.9, 0.05, 0.05)))
  if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
    raise ValueError(f'pydoc_text: split must be three positive fractions summing to 1, '
                     f'got {fractions}')
  text = corpus()
  max_chars = int(config.get('max_chars', 0))  # 0 = all (a prefix, for smoke runs)
  if max_chars:
    text = text[:max_chars]
  a = int(fractions[0] * len(text))
  b = a + int(fractions[1] * len(text))
  parts = {'train': text[:a], 'val': text[a:b], 'test': text[b:]}
  vocab = [UNK] + sorted(set(parts['train']) - {UNK})
  ids = {k: encode(v, vocab) for k, v in parts.items()}
  for k, v in ids.items():
    if len(v) <= seq_len:
      raise ValueError(f'pydoc_text: the {k} split has {len(v)} characters, fewer than '
                       f'seq_len + 1 = {seq_len + 1}')
  counts = np.bincount(ids['train'], minlength=len(vocab)) + 1.0
  test_targets = chunks(ids['test'], seq_len)['y'].ravel()
  unigram_bits = float(-np.mean(np.log2(counts[test_targets] / counts.sum())))
  info = {'task': 'sequence_classify', 'num_classes': len(vocab), 'vocab': vocab,
          'seq_len': seq_len, 'unigram_bits': unigram_bits,
          'chars': {k: len(v) for k, v in parts.items()},
          'python_version': sys.version.split()[0],
          'corpus_sha1': hashlib.sha1(text.encode()).hexdigest()[:12]}
  return data.Dataset(name='pydoc_text', train=chunks(ids['train'], seq_len),
                      val=chunks(ids['val'], seq_len), test=chunks(ids['test'], seq_len),
                      info=info)
