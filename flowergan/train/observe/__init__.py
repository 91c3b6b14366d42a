"""What people see of a run: logs (logs.py: TensorBoard, metrics.jsonl, plots), trackers (MLflow, W&B), sample
grids, device-side meters. The progress bar is flowergan/progress.py, shared with the eval package."""
