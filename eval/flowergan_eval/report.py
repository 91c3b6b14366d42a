"""The HTML report: one self-contained page (every image inline as a base64 data URI, no external files,
no network), plus reading a run's scalars back from its TensorBoard events (or metrics.jsonl)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

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
    """Losses, D's outputs, and any other logged scalar of the run, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One panel per scale: losses, D's outputs (probabilities), in-training metrics. Counters, speeds and
    # learning rates live on other scales and stay in TensorBoard.
    evals = [t for t in scalars if t.startswith("Eval/") and not t.endswith("/std")]
    groups = [("Losses", [t for t in LOSS_TAGS if t in scalars]),
              ("D(x) and D(G(z))", [t for t in D_TAGS if t in scalars]),
              ("D's score on x and G(z) (hinge)", [t for t in D_LOGIT_TAGS if t in scalars]),
              ("In-training evaluation (lower is better)", evals[:4])]
    groups = [g for g in groups if g[1]] or [("Scalars", list(scalars)[:6])]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.8), squeeze=False)
    for ax, (title, tags) in zip(axes[0], groups):
        for tag in tags:
            steps, values = scalars[tag]
            ax.plot(steps, values, label=tag, lw=1)
        ax.set(title=title, xlabel="step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------- HTML
def data_uri(data: bytes, mime: str = "image/png") -> str:
    """An inline image source: the page needs no other file."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(data: bytes, alt: str, mime: str = "image/png", cls: str = "") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="{data_uri(data, mime)}">'


def _fmt(v: Any) -> str:
    from flowergan_eval.ui import fmt

    return html.escape(fmt(v))


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#222;
background:#fff}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;
font-size:.9em} td.num{text-align:right;font-family:ui-monospace,monospace}
.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start} figure{margin:0} figcaption{font-size:.85em;
color:#555} img.grid{image-rendering:pixelated;width:360px} img.plot{max-width:100%} img.pair{width:96px;
image-rendering:pixelated} .note{color:#555;font-size:.9em} .missing{color:#a40}
"""

# Sets a marker on <body> once every image has loaded (or failed): a headless browser can read it back, a
# person never notices it.
_CHECK = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
</script>
"""


def render(*, title: str, metrics: dict[str, float], notes: dict[str, str], provenance: dict[str, Any],
           sections: dict[str, Any], state: dict[str, Any]) -> str:
    """The whole page as one string."""
    from flowergan_eval.ui import provenance_lines

    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    cfg = state.get("config", {})
    summary = [("step", state.get("step")), ("images seen", state.get("images_seen")),
               ("resolution", cfg.get("model", {}).get("resolution")), ("nz", cfg.get("model", {}).get("nz")),
               ("data", cfg.get("data", {}).get("path")), ("saved", state.get("saved_at"))]
    parts.append("<table>" + "".join(f"<tr><th>{e(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in summary
                                      if v is not None) + "</table>")

    parts.append("<h2>Metrics</h2><p class='note'>" + "<br>".join(e(line) for line in provenance_lines(provenance))
                 + "</p><table><tr><th>metric</th><th>value</th><th>N</th><th>meaning</th></tr>")
    for name, value in metrics.items():
        parts.append(f"<tr><td>{e(name)}</td><td class='num'>{_fmt(value)}</td><td class='num'>"
                     f"{_fmt(provenance.get('n', ''))}</td><td>{e(notes.get(name, ''))}</td></tr>")
    parts.append("</table>")

    parts.append("<h2>Samples</h2><div class='row'>")
    for label, png in sections.get("grids", {}).items():
        parts.append(f"<figure>{_img(png, label, cls='grid')}<figcaption>{e(label)}</figcaption></figure>")
    parts.append("</div>")

    per_class = sections.get("classes", [])
    if per_class:
        parts.append("<h2>Per class: samples asked for as the class, beside its real images</h2><table>"
                     "<tr><th>class</th><th>generated</th><th>real</th></tr>")
        for name, fake_png, real_png in per_class:
            parts.append(f"<tr><td>{e(name)}</td><td>{_img(fake_png, f'generated {name}', cls='grid')}</td>"
                         f"<td>{_img(real_png, f'real {name}', cls='grid')}</td></tr>")
        parts.append("</table>")

    parts.append("<h2>Training curves</h2>")
    if sections.get("losses"):
        parts.append(_img(sections["losses"], "loss curves", cls="plot"))
    parts.append(f"<p class='note'>source: {e(str(sections.get('scalars_source', '')))}</p>")

    latent = sections.get("latent", {})
    if latent:
        parts.append("<h2>Latent space</h2><div class='row'>")
        captions = {"latent_pca.png": "PCA of z, each sample drawn at its latent's position",
                    "d_features_pca.png": "PCA of D's penultimate features: real vs generated",
                    "interp_lerp.png": "linear interpolation between random z pairs (one pair per row)",
                    "interp_slerp.png": "spherical interpolation between random z pairs",
                    "interp_slerp.gif": "spherical interpolation, animated"}
        for name, data in latent.items():
            mime = "image/gif" if name.endswith(".gif") else "image/png"
            parts.append(f"<figure>{_img(data, name, mime=mime, cls='plot')}<figcaption>"
                         f"{e(captions.get(name, name))}</figcaption></figure>")
        parts.append("</div>")

    modes = sections.get("modes")
    if modes:
        parts.append("<h2>Mode coverage (SynthFlowers)</h2>")
        if "missing" in modes:
            parts.append(f"<p class='missing'>{e(modes['missing'])}</p>")
        else:
            parts.append(f"<p>{modes['covered']} of {modes['of']} modes covered; KL(generated || uniform) = "
                         f"{_fmt(modes['kl'])} nats.</p>" + _img(modes["png"], "mode histogram", cls="plot"))

    closest = sections.get("closest", [])
    if closest:
        parts.append("<h2>Memorisation: the generated samples closest to a training image</h2><div class='row'>")
        for fake_png, real_png, dist in closest:
            parts.append(f"<figure>{_img(fake_png, 'generated', cls='pair')}{_img(real_png, 'training', cls='pair')}"
                         f"<figcaption>generated | nearest training image, distance {_fmt(dist)}</figcaption>"
                         "</figure>")
        parts.append("</div>")

    parts.append("<h2>Provenance</h2><pre>" + e(json.dumps(provenance, indent=1, default=str)) + "</pre>")
    parts.append(_CHECK + "</body></html>")
    return "\n".join(parts)
