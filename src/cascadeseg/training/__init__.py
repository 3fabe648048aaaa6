"""Training: from a recipe and a data folder to a run directory.

Rooms, low to high (a module imports only those above it):

- :mod:`.distributed`: torchrun ranks, DDP wrapping, all-reduce, barriers.
- :mod:`.checkpoint`: checkpoint dicts and atomic saves.
- :mod:`.schedules`: pure functions of the (fractional) epoch: learning rate (``lr_at``), CU-Net's
  auxiliary weight (``aux_weight_at``), where a run stands in its schedule with or without a time
  budget (``schedule_epoch``, ``budget_fraction``).
- :mod:`.build`: what a run trains: the registered model with the recipe's training options, its
  ``spatial_dims`` from the registry, the optimiser.
- :mod:`.run_state`: what a run carries across steps and sessions (``RunState``), seeds and RNG
  states, resume checks, early stopping, ``summary.json``.
- :mod:`.data`: cases, split, cache, the training dataset (3D crops or 2D slices after the
  network's ``spatial_dims``), the resumable ``TrainingSampler``, the loader.
- :mod:`.logs`: ``steps.csv``, ``metrics.csv``, TensorBoard, ``curves.png``, printed lines.
- :mod:`.monitor`: the training objective on the validation cases, LWS coverage checks.
- :mod:`.session`: one session's objects and the step loop of an epoch; checkpoint writing.
- :mod:`.trainer`: :func:`~cascadeseg.training.trainer.train`: epochs, validation, stopping.
- :mod:`.bench`: speed and memory of one training iteration.

The losses receive their epoch-dependent weights from here (``aux_weight``); they import nothing
from this package.
"""
