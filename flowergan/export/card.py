"""The export's README.md: a model card with the YAML front matter the Hugging Face Hub reads
(library_name, tags, pipeline_tag, model-index for the scores) and every metric the checkpoint holds, each with
where it came from."""

from __future__ import annotations

import json
import re
from typing import Any

from flowergan import catalogue
from flowergan.catalogue import METRICS
from flowergan.config import Config

# Names of in-training scores as the eval package writes them: fid1k, kid10k, kid1k/std, synth_fd1k,
# modes1k/covered, modes_kl1k, prdc1k/coverage; the metric names come from the catalogue (longest first, so
# modes_kl is not read as modes).
SCORE = re.compile(rf"^({'|'.join(sorted(METRICS, key=len, reverse=True))})(\d+)(k?)(/\w+)?$")
INCEPTION = catalogue.EXTRACTORS["inception"]
EXTRACTORS = {name: catalogue.extractor_label(name) for name, m in METRICS.items() if m.features != "inception"}
STATISTICS = {"/std": "standard deviation over subsets or splits", "/covered": "modes covered",
              "/kl_uniform": "KL(modes || uniform), nats"}


def _extractor(metric: str, cfg: Config) -> dict[str, str]:
    if METRICS[metric].features == "oracle":
        return {"extractor": EXTRACTORS[metric]}
    if metric == "effnet_fd" or cfg.eval.features == "effnet-lite2":
        return {"extractor": EXTRACTORS["effnet_fd"]}
    if cfg.eval.features and cfg.eval.features not in ("inception", "synth"):
        return {"extractor": f"user features {cfg.eval.features}"}
    if metric == "synth_fd" or cfg.eval.features == "synth":
        return {"extractor": EXTRACTORS["synth_fd"]}
    return {"extractor": INCEPTION,
            "extractor_weights": cfg.eval.inception_weights or "$FLOWERGAN_INCEPTION_WEIGHTS or the cache"}


def _dataset(cfg: Config) -> dict[str, Any]:
    """The training data's name and fingerprint from its manifest, if it can still be read at export time."""
    from flowergan.data.format import read_manifest
    from flowergan.errors import UserError

    info: dict[str, Any] = {"path": cfg.data.path}
    try:
        manifest = read_manifest(cfg.data.path)
    except (UserError, OSError, ValueError):
        info["fingerprint"] = "not recorded (the data's manifest.json was not readable at export time)"
        return info
    info.update(name=manifest.get("name"), fingerprint=manifest.get("fingerprint"),
                images=manifest.get("num_samples"), resolution=manifest.get("resolution"))
    return info


def provenance(name: str, cfg: Config) -> dict[str, Any]:
    """Where one metric of the checkpoint's state came from."""
    m = SCORE.match(name)
    if m:
        n = int(m.group(2)) * (1000 if m.group(3) else 1)
        stat = m.group(4) or ""
        return {"source": "in-training evaluation (flowergan_eval)", "metric": m.group(1).upper(),
                "statistic": STATISTICS.get(stat, stat.lstrip("/") or "value"),
                "n_generated": n, **_extractor(m.group(1), cfg),
                "reference": cfg.eval.data or cfg.data.path, "z_seed": cfg.train.seed,
                "weights": "G_ema" if cfg.train.ema else "G"}
    return {"source": f"training loop: mean over the last {cfg.log.every} steps before this checkpoint"
            if name.startswith(("Loss/", "D/")) else "training loop, at the last log interval before this checkpoint"}


def _yaml(value: Any, indent: int = 0) -> list[str]:
    """A small YAML writer: mappings and lists in block style, scalars as JSON (which YAML reads as is)."""
    pad = " " * indent
    lines: list[str] = []
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, v in items:
        head = f"{pad}- " if isinstance(value, list) else f"{pad}{json.dumps(key) if ':' in str(key) else key}:"
        if isinstance(v, (dict, list)) and v:
            if isinstance(value, list) and isinstance(v, dict):
                sub = _yaml(v, indent + 2)
                lines.append(head + sub[0].lstrip())
                lines += sub[1:]
            else:
                lines.append(head)
                lines += _yaml(v, indent + 2)
        else:
            lines.append(f"{head}{'' if isinstance(value, list) else ' '}{json.dumps(v)}")
    return lines


def _one_class(m: re.Match) -> bool:
    """A per-class metric's value for one class (intra_fd1k/rose): listed with the metrics, left out of the Hub's
    model-index, which takes the mean and the coverage."""
    facts = METRICS[m.group(1)]
    return facts.per_class and bool(m.group(4)) and m.group(4) not in facts.notes


def front_matter(meta: dict[str, Any], state: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """The model card's metadata as the Hub reads it, with flowergan's own keys under `flowergan`."""
    metrics = {k: v for k, v in (state.get("metrics") or {}).items() if isinstance(v, (int, float))}
    dataset = _dataset(cfg)
    scores = [{"type": m.group(1), "name": k, "value": v} for k, v in metrics.items()
              if (m := SCORE.match(k)) and m.group(4) != "/std" and not _one_class(m)]
    card: dict[str, Any] = {
        "library_name": "flowergan",
        "pipeline_tag": "unconditional-image-generation",
        "tags": ["flowergan", "dcgan", "gan", "unconditional-image-generation", "pytorch", "safetensors"],
        "flowergan": {
            "dataset": dataset, "training_steps": state.get("step"), "images_seen": state.get("images_seen"),
            "weights": meta["weights"], "resolution": meta["resolution"], "nz": meta["nz"],
            "metrics": [{"name": k, "value": v, **provenance(k, cfg)} for k, v in metrics.items()],
        },
    }
    best = state.get("best")
    if isinstance(best, (int, float)):  # the run's best headline score up to this checkpoint, if it kept one
        card["flowergan"]["best_score"] = {"value": best, "metric": cfg.eval.metric, "n_generated": cfg.eval.n,
                                           "source": "best in-training score up to this checkpoint (lower is "
                                                     "better)"}
    if meta.get("classes"):  # a class-conditional G: the classes it draws, in label order
        card["tags"].append("class-conditional")
        card["flowergan"]["classes"] = meta["classes"]
    if scores:
        card["model-index"] = [{"name": f"flowergan-dcgan-{meta['resolution']}", "results": [{
            "task": {"type": "unconditional-image-generation"},
            "dataset": {"name": str(dataset.get("name") or dataset["path"]), "type": "image-folder"},
            "metrics": scores}]}]
    return card


def _classes_text(meta: dict[str, Any]) -> str:
    """The use section's lines on a conditional G's classes ("" for an unconditional G)."""
    names = meta.get("classes") or []
    if not names:
        return ""
    return (f"Class-conditional ({meta['model'].get('conditional')}): G takes (z, y), y the class index in "
            f"[batch] int64. Classes, in label order: {', '.join(names)}. "
            f"`flowergan.generate(G, 16, classes=\"{names[0]}\")` or `flowergan sample --class {names[0]}`.\n\n")


def model_card(meta: dict[str, Any], state: dict[str, Any], cfg: Config) -> str:
    """README.md of an export folder: front matter, then how to use the model and what it was trained on."""
    fm = front_matter(meta, state, cfg)
    info = fm["flowergan"]
    res, nz = meta["resolution"], meta["nz"]
    bn = meta.get("batchnorm") or "eval mode: running statistics saved with the weights"
    rows = "\n".join(f"| {m['name']} | {m['value']:.6g} | {m['source']}"
                     + (f"; N={m['n_generated']}, reference {m['reference']}" if "n_generated" in m else "") + " |"
                     for m in info["metrics"]) or "| (none recorded) | | |"
    files = ", ".join(f"`{f}`" for f in meta["files"].values())
    return f"""---
{chr(10).join(_yaml(fm))}
---

# flowergan DCGAN generator ({res}x{res})

A DCGAN generator (Radford et al. 2016) trained with flowergan on
`{info['dataset']['path']}` (fingerprint `{info['dataset']['fingerprint']}`) for {info['training_steps']} steps,
{info['images_seen']} images seen. These are the weights of **{meta['weights']}**.

Files: {files}, `config.json` (the model section and the conventions below). G only: no discriminator and no
optimizer state; `model.safetensors` loads without unpickling anything.

## Use

```python
import flowergan

G = flowergan.load_generator("path/to/this/folder")
images = flowergan.generate(G, 16, seed=0)  # uint8 [16, 3, {res}, {res}], RGB
```

{_classes_text(meta)}\
Input: z of shape [batch, {nz}], standard normal. Output: RGB images [batch, 3, {res}, {res}] in [-1, 1];
uint8 = round((x + 1) * 127.5), clamped to [0, 255]. BatchNorm: {bn}.

## Metrics at this checkpoint

| metric | value | provenance |
| --- | --- | --- |
{rows}
"""
