"""Checkpoints: round trip, fallback past a corrupt newest checkpoint, clear error."""
import jax.numpy as jnp
import numpy as np
import pytest

from research.checkpoint import CheckpointError, Checkpointer


def _state(v):
  return {'params': {'w': jnp.full((3, 2), v, jnp.float32)}, 'step': jnp.int32(v)}


def _corrupt(step_dir):
  files = [p for p in step_dir.rglob('*') if p.is_file()]
  assert files
  for p in files:
    p.write_bytes(b'\x00garbage')


def test_round_trip_and_newest_wins(tmp_path):
  ck = Checkpointer(tmp_path, keep=3)
  ck.save(1, _state(1.0), {'epoch': 1})
  ck.save(2, _state(2.0), {'epoch': 2})
  step, state, meta = ck.restore_latest(_state(0.0))
  ck.close()
  assert step == 2 and meta == {'epoch': 2}
  np.testing.assert_array_equal(state['params']['w'], np.full((3, 2), 2.0))


def test_corrupt_newest_falls_back_to_older(tmp_path, caplog):
  ck = Checkpointer(tmp_path, keep=3)
  ck.save(1, _state(1.0), {'epoch': 1})
  ck.save(2, _state(2.0), {'epoch': 2})
  ck.close()
  _corrupt(tmp_path / '2')
  ck = Checkpointer(tmp_path, keep=3)
  step, state, meta = ck.restore_latest(_state(0.0))
  ck.close()
  assert step == 1 and int(state['step']) == 1
  assert 'unreadable' in caplog.text
  # moved aside, not deleted, so step 2 can be written again
  assert (tmp_path / '2.corrupt').is_dir() and not (tmp_path / '2').exists()
  ck = Checkpointer(tmp_path, keep=3)
  ck.save(2, _state(5.0), {'epoch': 2})
  step, state, _ = ck.restore_latest(_state(0.0))
  ck.close()
  assert step == 2 and int(state['step']) == 5


def test_all_corrupt_is_a_clear_error(tmp_path):
  ck = Checkpointer(tmp_path)
  ck.save(1, _state(1.0), {'epoch': 1})
  ck.close()
  _corrupt(tmp_path / '1')
  ck = Checkpointer(tmp_path)
  with pytest.raises(CheckpointError, match='no readable checkpoint'):
    ck.restore_latest(_state(0.0))
  ck.close()
  assert (tmp_path / '1').is_dir() and not list(tmp_path.glob('*.corrupt'))  # nothing moved


def test_no_checkpoint_returns_none(tmp_path):
  ck = Checkpointer(tmp_path / 'empty')
  assert ck.restore_latest(_state(0.0)) is None
  ck.close()
