"""Training, in four rooms around the loop (loop.py, with schedule.py: what is due after a step; evaluation.py: the
in-training evaluation the CLI hands in; faults.py: the fault hooks the tests use; distributed.py: the collectives):

  gan/      the step and its losses: gan_step, EMA, R1, DiffAugment, torch.compile and memory format
  state/    what a checkpoint holds (TrainState), the RNG streams, and the one CheckpointManager
  observe/  what people see: logs (TensorBoard, JSON lines), trackers (MLflow, W&B), sample grids, meters
  launch/   how the loop is started on many processes: Ray Train (the one file that imports Ray) and the
            cross-rank consistency check (torchrun and Ray Train)

Floors, top to bottom (pyproject.toml's import contracts hold them): launch/, loop.py, observe/ | evaluation.py |
schedule.py | faults.py, state/, gan/, distributed.py.
"""
