"""The 2-D (member, data) mesh: each member's batch split over devices computes what
one device computes (research/mesh.py).

The equality runs use a model with batch norm and dropout (FCN on GunPoint), so
the whole-batch statistics and the random bits are checked too, on 4 forced CPU
devices in a subprocess: a 2 x 2 mesh (K=2, data 2) against a member-only mesh,
and a single member on a 1 x 4 mesh against that member of the population.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from research import mesh
from tests.helpers import REPO


@pytest.mark.parametrize('K, devices, batch, dp, want', [
    # the automatic rule (on GPU and TPU; on CPU make_layout asks for no data axis)
    (1, 2, 8, 0, (1, 2)),    # one member: every device on the data axis
    (2, 2, 8, 0, (2, 1)),    # the member axis first
    (2, 4, 8, 0, (2, 2)),    # devices left over go to data
    (3, 2, 8, 0, (1, 2)),    # 3 members do not split over 2 devices
    (3, 2, 7, 0, (1, 1)),    # ... and an odd batch does not either
    (4, 8, 6, 0, (4, 2)),
    (4, 8, 6, 2, (4, 2)),
    (4, 4, 8, 2, (2, 2)),    # asked for 2 data devices: the member axis takes the rest
    (1, 4, 8, 1, (1, 1)),    # data_parallel=1: no data axis
])
def test_mesh_shape_rule(K, devices, batch, dp, want):
  assert mesh.mesh_shape(K, devices, batch, dp) == want


@pytest.mark.parametrize('devices, batch, dp, words', [
    (4, 8, 3, 'does not divide the 4 device'),
    (4, 6, 4, 'does not divide train.batch_size=6'),
    (4, 8, -1, 'must be 0 (automatic)'),
])
def test_bad_data_parallel_names_what_is_allowed(devices, batch, dp, words):
  with pytest.raises(ValueError, match=r'train\.data_parallel') as e:
    mesh.mesh_shape(2, devices, batch, dp)
  assert words in str(e.value)


_SCRIPT = textwrap.dedent('''
    import json, sys
    from research import cli, configlib
    from research.train import train_and_evaluate

    def config(population, dp):
      c = cli.load_config('configs/ucr.py', 'model=fcn,dataset=GunPoint')
      c.model.channels = (8, 8, 8)
      c.model.dropout = 0.2
      c.train.batch_size = 16
      c.train.epochs = 2
      c.train.progress = False
      c.train.data_parallel = dp
      c.population = population
      return c

    out = {}
    for name, pop, dp in [('members', 'seed=0,1', 1), ('mesh2x2', 'seed=0,1', 2),
                          ('solo1x4', 'seed=1', 4)]:
      r = train_and_evaluate(config(pop, dp), sys.argv[1] + '/' + name)
      curve = [json.loads(l) for l in open(sys.argv[1] + '/' + name + '/metrics.jsonl')]
      out[name] = {'mesh': r['mesh'], 'members': r['members'],
                   'curve': [[c['member'], c['epoch'], c['train/loss']] for c in curve]}
    from research import mesh
    auto = mesh.make_layout(1, 16)  # automatic on CPU: the host devices share the cores
    out['auto_cpu'] = {'mesh': {'member': auto.members, 'data': auto.data}}
    print('RESULT ' + json.dumps(out))
''')


def test_batch_split_over_data_devices_equals_one_device(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, '-c', _SCRIPT, str(tmp_path)], capture_output=True,
                        text=True, cwd=REPO, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split('RESULT ', 1)[1])
  shapes = {k: (v['mesh']['member'], v['mesh']['data']) for k, v in out.items()}
  assert shapes == {'members': (2, 1), 'mesh2x2': (2, 2), 'solo1x4': (1, 4),
                    'auto_cpu': (1, 1)}
  assert len(out['mesh2x2']['mesh']['devices']) == 4
  del out['auto_cpu']

  def close(a, b):
    assert [r[:2] for r in a['curve']] == [r[:2] for r in b['curve']]
    np.testing.assert_allclose([r[2] for r in a['curve']], [r[2] for r in b['curve']],
                               rtol=1e-5, err_msg='train/loss per epoch')
    for ma, mb in zip(a['members'], b['members']):
      for k in ('test/loss', 'test/accuracy', 'best_epoch', 'steps'):
        np.testing.assert_allclose(ma[k], mb[k], rtol=1e-5, err_msg=k)

  close(out['mesh2x2'], out['members'])  # K=2: data axis of 2 against none
  # one member, its batch split in 4, against member 1 of the population on a
  # member-only mesh (where it computes what one device computes: test_train.py)
  member1 = {'members': out['members']['members'][1:],
             'curve': [[0, e, l] for m, e, l in out['members']['curve'] if m == 1]}
  close(out['solo1x4'], member1)
