"""The report's curves: a run's scalars read back from its TensorBoard events (or metrics.jsonl), and their plots
(losses, D's outputs, the in-training metric). The page itself is page.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

LOSS_TAGS = ("Loss/D", "Loss/G")
D_TAGS = ("D/real", "D/fake_before", "D/fake_after")
D_LOGIT_TAGS = ("D/real_logit", "D/fake_before_logit", "D/fake_after_logit")  # train.loss = "hinge": D's raw score


# ---------------------------------------------------------------- scalars of a run
def _tb_dir(run_dir: Path) -> Path | None:
    tb = run_dir / "tb"
    return tb if tb.is_dir() and any(tb.rglob("events.out.tfevents.*")) else None


def scalars_source(run_dir: Path) -> str:
    """Where the loss curves come from (said in the report)."""
    if _tb_dir(run_dir):
        return f"TensorBoard events in {run_dir / 'tb'}"
    if (run_dir / "metrics.jsonl").is_file():
        return f"{run_dir / 'metrics.jsonl'}"
    return f"nothing found in {run_dir} (no tb/ events, no metrics.jsonl)"


def read_scalars(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """tag -> (steps, values) from the run's TensorBoard events, else from metrics.jsonl; {} if neither."""
    tb = _tb_dir(run_dir)
    out: dict[str, tuple[list[int], list[float]]] = {}
    if tb is not None:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        # Every event file of the run (a resumed run writes a new one); steps merged and sorted per tag.
        for events_dir in sorted({p.parent for p in tb.rglob("events.out.tfevents.*")}):
            acc = EventAccumulator(str(events_dir), size_guidance={"scalars": 0})
            acc.Reload()
            for tag in acc.Tags().get("scalars", []):
                steps, values = out.setdefault(tag, ([], []))
                for e in acc.Scalars(tag):
                    steps.append(int(e.step))
                    values.append(float(e.value))
        for tag, (steps, values) in out.items():
            order = sorted(range(len(steps)), key=steps.__getitem__)
            out[tag] = ([steps[i] for i in order], [values[i] for i in order])
        return out
    jsonl = run_dir / "metrics.jsonl"
    if jsonl.is_file():
        for line in jsonl.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            step = rec.get("step")
            for tag, v in rec.items():
                if tag not in ("step", "time") and isinstance(v, (int, float)) and step is not None:
                    steps, values = out.setdefault(tag, ([], []))
                    steps.append(int(step))
                    values.append(float(v))
    return out


def loss_curves_png(scalars: dict[str, tuple[list[int], list[float]]]) -> bytes:
    """Losses and D's outputs of the run (probabilities under bce, raw scores under hinge), a panel each (other
    scalars where it logged neither)."""
    # One panel per scale: losses, D's outputs (probabilities). Counters, speeds and learning rates live on other
    # scales and stay in TensorBoard; the in-training metric has its own figure (eval_curve_png).
    groups = [("Losses", [t for t in LOSS_TAGS if t in scalars]),
              ("D(x) and D(G(z))", [t for t in D_TAGS if t in scalars]),
              ("D's score on x and G(z) (hinge)", [t for t in D_LOGIT_TAGS if t in scalars])]
    groups = [g for g in groups if g[1]] or [("Scalars", [t for t in scalars if not t.startswith("Eval/")][:6])]
    return _panels(groups, scalars)


def eval_tags(scalars: dict[str, tuple[list[int], list[float]]]) -> list[str]:
    """The in-training metric's tags (Eval/...), without their std (a band, not a curve)."""
    return [t for t in scalars if t.startswith("Eval/") and not t.endswith("/std")]


def eval_curve_png(scalars: dict[str, tuple[list[int], list[float]]]) -> bytes | None:
    """The in-training metric over steps, one panel per tag (their scales differ: FD, modes, KL); None if the run
    logged none."""
    tags = eval_tags(scalars)[:4]
    return _panels([(t.removeprefix("Eval/"), [t]) for t in tags], scalars) if tags else None


def _panels(groups: list[tuple[str, list[str]]], scalars: dict[str, tuple[list[int], list[float]]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.8), squeeze=False)
    for ax, (title, tags) in zip(axes[0], groups):
        for tag in tags:
            steps, values = scalars[tag]
            ax.plot(steps, values, label=tag, lw=1, marker="o" if len(steps) < 30 else None, ms=3)
        ax.set(title=title, xlabel="step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
