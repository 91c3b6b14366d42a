"""What decides a run's future and where it is kept: `TrainState` (train_state.py), every RNG stream (rng.py) and
the one `CheckpointManager` (checkpoints.py: save, keep-N, roll back, resume point, load). The file format is
flowergan/artifacts/checkpoint.py."""
