"""The HTML report: one self-contained page (every image inline as a base64 data URI, no external files, no
network). It opens with the verdict, then the metrics grouped into fidelity, diversity and memorisation beside what
real images score, the samples (now and over training), the curves, the recipe and the provenance.

Every section has an id (summary, left-out, fidelity, diversity, memorisation, samples, progress, curves,
in-training, modes, closest, latent, recipe, provenance): a test finds them in a real browser.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from flowergan_eval import summary as S

e = html.escape


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """An inline image source: the page needs no other file."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(data: bytes, alt: str, mime: str = "image/png", cls: str = "") -> str:
    return f'<img class="{cls}" alt="{e(alt)}" src="{data_uri(data, mime)}">'


def _fmt(v: Any) -> str:
    from flowergan_eval.ui import fmt

    return e(fmt(v))


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#222;
background:#fff}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:2em}
h3{font-size:1.05em;margin:1.2em 0 .3em}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;
font-size:.9em} td.num{text-align:right;font-family:ui-monospace,monospace}
.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start} figure{margin:0} figcaption{font-size:.85em;
color:#555} img.grid{image-rendering:pixelated;width:360px} img.frame{image-rendering:pixelated;width:180px}
img.plot{max-width:100%} img.pair{width:96px;image-rendering:pixelated} .note{color:#555;font-size:.9em}
.missing{color:#a40} #summary p.verdict{font-size:1.05em;margin:.4em 0} details pre{font-size:.85em}
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

_LATENT = {"d_features_pca.png": "PCA of D's penultimate features: real vs generated",
           "interp_lerp.png": "linear interpolation between random z pairs (one pair per row)",
           "interp_slerp.png": "spherical interpolation between random z pairs",
           "interp_slerp.gif": "spherical interpolation, animated"}


def _summary(sections: dict[str, Any], state: dict[str, Any]) -> list[str]:
    cfg = state.get("config", {})
    parts = ["<section id='summary'><h2>Summary</h2>"]
    parts += [f"<p class='verdict'>{e(line)}</p>" for line in sections.get("verdict", [])]
    facts = [("step", state.get("step")), ("images seen", state.get("images_seen")),
             ("resolution", cfg.get("model", {}).get("resolution")), ("saved", state.get("saved_at"))]
    parts.append("<table>" + "".join(f"<tr><th>{e(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in facts
                                      if v is not None) + "</table>")
    left = sections.get("left_out", [])
    if left:
        parts.append("<div id='left-out'><h3>Left out, and how to add it</h3><ul>"
                     + "".join(f"<li><b>{e(what)}</b>: {e(why)}</li>" for what, why in left) + "</ul></div>")
    parts.append("</section>")
    return parts


def _metric_groups(metrics: dict[str, float], notes: dict[str, str], provenance: dict[str, Any],
                   sections: dict[str, Any]) -> list[str]:
    from flowergan_eval.ui import provenance_lines

    reference = sections.get("reference", {})
    read_by = sections.get("extractor_of", {})
    parts = ["<section id='metrics'><h2>Metrics</h2><p class='note'>"
             + "<br>".join(e(line) for line in provenance_lines(provenance)) + "</p>"]
    if sections.get("reference_note"):
        parts.append(f"<p class='note'>{e(sections['reference_note'])}</p>")
    for group, keys in S.grouped(metrics).items():
        if not keys:
            continue
        parts.append(f"<section id='{group}'><h3>{group.capitalize()}</h3><table><tr><th>metric</th><th>value</th>"
                     "<th>real vs real</th><th>aim</th><th>read by</th><th>meaning</th></tr>")
        for key in keys:
            parts.append(f"<tr><td>{e(key)}</td><td class='num'>{_fmt(metrics[key])}</td><td class='num'>"
                         f"{_fmt(reference[key]) if key in reference else ''}</td><td>{e(S.facts(key)[1])}</td>"
                         f"<td>{e(read_by.get(key, ''))}</td><td>{e(notes.get(key, ''))}</td></tr>")
        parts.append("</table></section>")
    parts.append("</section>")
    return parts


def _pictures(sections: dict[str, Any]) -> list[str]:
    parts = ["<section id='samples'><h2>Samples</h2><div class='row'>"]
    for label, png in sections.get("grids", {}).items():
        parts.append(f"<figure>{_img(png, label, cls='grid')}<figcaption>{e(label)}</figcaption></figure>")
    parts.append("</div></section>")
    frames = sections.get("frames", [])
    parts.append("<section id='progress'><h2>Samples over training</h2>")
    if frames:
        parts.append("<p class='note'>The run's fixed-noise grids (the frames of progress.gif): the same z at every "
                     "step.</p><div class='row'>")
        parts += [f"<figure>{_img(png, f'step {step}', cls='frame')}<figcaption>step {step}</figcaption></figure>"
                  for step, png in frames]
        parts.append("</div>")
    else:
        parts.append("<p class='missing'>no sample grids in the run's samples/ folder</p>")
    parts.append("</section><section id='curves'><h2>Training curves</h2>")
    if sections.get("losses"):
        parts.append(_img(sections["losses"], "loss curves", cls="plot"))
    parts.append(f"<p class='note'>source: {e(str(sections.get('scalars_source', '')))}</p></section>")
    if sections.get("eval_curve"):
        parts.append("<section id='in-training'><h2>In-training metric</h2>"
                     + _img(sections["eval_curve"], "in-training metric", cls="plot")
                     + "<p class='note'>Measured by the run itself every eval.every steps (its N and reference are "
                       "the run's [eval] settings, not this page's).</p></section>")
    return parts


def _per_class(sections: dict[str, Any]) -> list[str]:
    """A conditional G's classes: a row of samples asked for as each class beside a row of its real images."""
    per_class = sections.get("classes", [])
    if not per_class:
        return []
    parts = ["<section id='classes'><h2>Per class: samples asked for as the class, beside its real images</h2>"
             "<table><tr><th>class</th><th>generated</th><th>real</th></tr>"]
    for name, fake_png, real_png in per_class:
        parts.append(f"<tr><td>{e(name)}</td><td>{_img(fake_png, f'generated {name}', cls='grid')}</td>"
                     f"<td>{_img(real_png, f'real {name}', cls='grid')}</td></tr>")
    parts.append("</table></section>")
    return parts


def _modes_and_closest(sections: dict[str, Any]) -> list[str]:
    parts = []
    modes = sections.get("modes")
    if modes:
        parts.append("<section id='modes'><h2>Mode coverage (SynthFlowers)</h2>")
        if "missing" in modes:
            parts.append(f"<p class='missing'>{e(modes['missing'])}</p>")
        else:
            parts.append(f"<p>{modes['covered']} of {modes['of']} modes covered; KL(generated || uniform) = "
                         f"{_fmt(modes['kl'])} nats.</p>" + _img(modes["png"], "mode histogram", cls="plot"))
        parts.append("</section>")
    closest = sections.get("closest", [])
    if closest:
        parts.append("<section id='closest'><h2>Memorisation: the generated samples closest to a training image</h2>"
                     "<div class='row'>")
        for fake_png, real_png, dist in closest:
            parts.append(f"<figure>{_img(fake_png, 'generated', cls='pair')}{_img(real_png, 'training', cls='pair')}"
                         f"<figcaption>generated | nearest training image, distance {_fmt(dist)}</figcaption>"
                         "</figure>")
        parts.append("</div></section>")
    latent = sections.get("latent", {})
    if latent:
        parts.append("<section id='latent'><h2>Latent space</h2><div class='row'>")
        for name, data in latent.items():
            mime = "image/gif" if name.endswith(".gif") else "image/png"
            parts.append(f"<figure>{_img(data, name, mime=mime, cls='plot')}<figcaption>"
                         f"{e(_LATENT.get(name, name))}</figcaption></figure>")
        parts.append("</div></section>")
    return parts


def _recipe(state: dict[str, Any]) -> list[str]:
    from flowergan_eval.runfiles import recipe

    cfg = state.get("config", {})
    parts = ["<section id='recipe'><h2>Recipe and config of the run</h2>"]
    if not cfg:
        return parts + ["<p class='missing'>an export folder keeps only [model]: no training config</p></section>"]
    parts.append("<table>" + "".join(f"<tr><th>{e(label)}</th><td>{_fmt(v)}</td></tr>" for label, v in recipe(cfg))
                 + "</table>")
    lines = []
    for section, fields in cfg.items():
        if isinstance(fields, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v, default=str)}" for k, v in fields.items()]
            lines.append("")
    parts.append("<details><summary>the resolved config (TOML)</summary><pre>" + e("\n".join(lines))
                 + "</pre></details></section>")
    return parts


def render(*, title: str, metrics: dict[str, float], notes: dict[str, str], provenance: dict[str, Any],
           sections: dict[str, Any], state: dict[str, Any]) -> str:
    """The whole page as one string."""
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    parts += _summary(sections, state)
    parts += _metric_groups(metrics, notes, provenance, sections)
    parts += _pictures(sections)
    parts += _per_class(sections)
    parts += _modes_and_closest(sections)
    parts += _recipe(state)
    parts.append("<section id='provenance'><h2>Provenance</h2><pre>"
                 + e(json.dumps(provenance, indent=1, default=str)) + "</pre></section>")
    parts.append(_CHECK + "</body></html>")
    return "\n".join(parts)
