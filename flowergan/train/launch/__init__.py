"""How the loop is started on many processes: Ray Train (ray_train.py, the one file that imports Ray) and the
cross-rank consistency check used under torchrun and Ray Train (consistency.py). The collectives themselves are
flowergan/train/distributed.py."""
