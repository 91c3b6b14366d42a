"""Sweeps: many flowergan runs as one Ray Tune job over the Ray Train path (`flowergan tune`).

space.py parses and validates the search space, trial.py is what each Tune trial runs (one Ray Train run),
results.py writes the table, results.csv and results.json, sweep.py builds and resumes the Tuner.
Only trial.py and sweep.py import ray.
"""
