"""The GAN step and its losses: `gan_step` (D then G, logits, label smoothing, R1, AMP), EMA of G, DiffAugment,
and how the nets are compiled and laid out (compiling.py)."""
