"""The base config every experiment starts from.

Experiment files (`configs/<exp>.py`) take this, change what they need and
return it; the scripts lock it, so a mistyped key on the command line fails.
"""
from __future__ import annotations

import ml_collections

from research import optim


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = 'unnamed'
  c.seed = 0  # root seed; 'seed' in the population overrides it per member
  c.population = ''  # e.g. 'seed=0,1,2 optim.lr=1e-3,3e-3' (see research/population.py)
  c.population_mode = 'product'  # or 'zip'

  c.data = ml_collections.ConfigDict()
  c.data.name = ''
  c.data.train_fraction = 1.0  # keep this fraction of the training split (stratified)
  # stream: keep the training split in host memory and send batches to the devices a
  # chunk of stream_chunk steps at a time, the next chunk prepared while one trains
  # (research/stream.py; same numbers as the device-resident split); 0 = automatic
  c.data.stream = False
  c.data.stream_chunk = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = ''

  # tolerance: |error| counted as a hit by regression tasks' within_tol metric;
  # select: the metric for model selection / early stopping ('' = the task's own)
  c.task = ml_collections.ConfigDict(dict(kind='classify', label_smoothing=0.0, tolerance=0.04,
                                          select=''))
  c.optim = optim.default_config()

  c.train = ml_collections.ConfigDict(dict(
      batch_size=64,
      epochs=10,
      eval_every=1,  # epochs between evaluations (and checkpoints)
      eval_batch_size=1000,
      input_noise=0.0,  # std of Gaussian noise added to float training inputs (per member)
      augment='',  # e.g. 'jitter=0.03,time_warp=0.2' (research/augment.py)
      patience=0,  # evaluations without validation improvement before a member stops; 0 = never
      checkpoint_keep=2,  # latest checkpoints kept; each holds every member's best params too
      # compaction: when at most this fraction of the members on the device still trains,
      # the program continues with the live ones only (stopped members cost no compute;
      # research/train.py `_Members`); 0 = never
      compact=0.5,
      # a mixed population's member kinds (research/structure.py) at their own shapes inside
      # one program (research/groups.py): 'none' (every member padded to the widest, mixed
      # model) | 'kinds' (one group per kind) | 'cost' (the cost model groups kinds)
      groups='none',
      # pruning over the member axis after each evaluation (research/pruning.py):
      # '' | 'median[:warmup=W]' (Vizier's rule; 'median:rule=optuna' Optuna's)
      # | 'asha[:eta=E,min=M]' | 'hyperband[:eta=E,min=M,brackets=B]'
      prune='',
      # population-based training (research/pbt.py): '' | 'every=E,fraction=F,keys=optim.lr'
      # [',explore=perturb|resample,resample_p=P']
      pbt='',
      # devices each member's batch is split over (the mesh's 'data' axis,
      # research/mesh.py); 0 = automatic: the member axis first, devices left over to data
      # (on GPU/TPU; on CPU none: its forced host devices share the cores)
      data_parallel=0,
      progress=True,
      # seconds without a finished epoch or evaluation before the run dumps every thread's
      # stack to workdir/hang-<time>.txt and exits 75 (research/watchdog.py); 0 = off.
      # The first epoch (compilation) gets watchdog_s more.
      watchdog_s=900.0,
  ))
  return c
