"""Training: the GAN step, the loop, checkpoints and logging. Only ray_train.py imports Ray."""
