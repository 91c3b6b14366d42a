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
SAMPLES_CAPTION = "64 samples of this generator, z drawn with seed 0 (flowergan.generate)"
EXTRACTORS = {name: catalogue.extractor_label(name) for name, m in METRICS.items() if m.features != "inception"}
LICENSE = "apache-2.0"  # flowergan's own licence (pyproject.toml), as a Hugging Face Hub licence id
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


SYNTH_ABOUT = ("SynthFlowers, a procedural toy set drawn by code (`flowergan data synth`): 48 modes, 6 petal "
               "counts x 8 hues, on plain backgrounds. Not photographs: this generator draws those synthetic "
               "flowers, not real ones; it is a test bed whose modes an oracle can count")


def _dataset(cfg: Config) -> dict[str, Any]:
    """What the training data was, from its manifest if it can still be read at export time: name, kind, size and
    its two fingerprints (of the shard files and of the decoded pixels; they differ by design)."""
    from flowergan.data.format import fingerprints, read_manifest
    from flowergan.errors import UserError

    info: dict[str, Any] = {"path": cfg.data.path}
    try:
        manifest = read_manifest(cfg.data.path)
    except (UserError, OSError, ValueError):
        info["about"] = "not recorded (the data's manifest.json was not readable at export time)"
        return info
    kind = manifest.get("kind")
    info.update(name=manifest.get("name"), kind=kind, images=manifest.get("num_samples"),
                classes=manifest.get("num_classes"), resolution=manifest.get("resolution"), **fingerprints(manifest))
    info["about"] = SYNTH_ABOUT if kind == "synthflowers" else \
        f"images from {(manifest.get('source') or {}).get('path') or cfg.data.path}, sharded by `flowergan data`"
    return info


def _budget(state: dict[str, Any], cfg: Config, dataset: dict[str, Any]) -> dict[str, Any]:
    """What the run was set to train for, and how far this checkpoint got."""
    tc = cfg.train
    budget: dict[str, Any] = {"steps": state.get("step"), "planned": f"{tc.epochs:g} epochs" if tc.epochs > 0 else
                              f"{tc.steps} steps", "batch_size": tc.batch_size, "images_seen": state.get("images_seen")}
    if isinstance(dataset.get("images"), int) and dataset["images"] and isinstance(state.get("images_seen"), int):
        budget["epochs"] = round(state["images_seen"] / dataset["images"], 2)
    return budget


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


def front_matter(meta: dict[str, Any], state: dict[str, Any], cfg: Config, license: str = LICENSE) -> dict[str, Any]:
    """The model card's metadata as the Hub reads it, with flowergan's own keys under `flowergan`."""
    metrics = {k: v for k, v in (state.get("metrics") or {}).items() if isinstance(v, (int, float))}
    dataset = _dataset(cfg)
    scores = [{"type": m.group(1), "name": k, "value": v} for k, v in metrics.items()
              if (m := SCORE.match(k)) and m.group(4) != "/std" and not _one_class(m)]
    card: dict[str, Any] = {
        "license": license,
        "library_name": "flowergan",
        "pipeline_tag": "unconditional-image-generation",
        "tags": ["flowergan", "dcgan", "gan", "unconditional-image-generation", "pytorch", "safetensors"],
        "flowergan": {
            "dataset": dataset, "training_steps": state.get("step"), "images_seen": state.get("images_seen"),
            "budget": _budget(state, cfg, dataset),
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


def _quality(info: dict[str, Any], cfg: Config) -> str:
    """The scores the checkpoint holds with their provenance, or the commands that compute them."""
    scores = [m for m in info["metrics"] if "n_generated" in m]
    if scores:
        rows = "\n".join(f"| {m['name']} | {m['value']:.6g} | {m['statistic']}; N={m['n_generated']}, "
                         f"{m['extractor']}, reference {m['reference']} |" for m in scores)
        return f"| score | value | what it is |\n| --- | --- | --- |\n{rows}\n"
    data = info["dataset"]["path"]
    if info["dataset"].get("kind") == "synthflowers":
        commands = (f"flowergan-eval synth-fd --ckpt . --data {data} --n 10000   # Fréchet distance, SynthNet "
                    f"features\nflowergan-eval modes --ckpt . --data {data} --n 10000      # modes covered of 48, "
                    "KL to uniform")
    else:
        commands = (f"flowergan-eval fid --ckpt . --data {data} --n 10000   # needs the Inception weights\n"
                    f"flowergan-eval effnet-fd --ckpt . --data {data} --n 10000   # offline: pip install "
                    "'flowergan[photo]'")
    when = "its run had no in-training evaluation" if not cfg.eval.every else \
        f"it was saved before the first in-training evaluation, every {cfg.eval.every} steps"
    return (f"No quality score was recorded with this checkpoint ({when}). Compute them in this folder, with the "
            "training data at hand:\n\n"
            f"```\n{commands}\n```\n")


def _data_text(dataset: dict[str, Any]) -> str:
    lines = [dataset["about"] + "."]
    if "images" in dataset:
        lines.append(f"{dataset['images']} images of {dataset.get('resolution')} px in {dataset.get('classes')} "
                     f"classes (`{dataset['path']}`, data set `{dataset.get('name')}`); shard fingerprint "
                     f"`{dataset.get('shard_fingerprint') or '-'}` (the shard files), pixel fingerprint "
                     f"`{dataset.get('pixel_fingerprint') or '-'}` (the decoded images, what evaluation caches key "
                     "on).")
    if dataset.get("kind") != "synthflowers":
        lines.append("The data's own terms of use apply to what is made with these weights as well as the licence "
                     "above.")
    return " ".join(lines)


def _classes_text(meta: dict[str, Any]) -> str:
    """The card's section on a conditional G's classes ("" for an unconditional G)."""
    names = meta.get("classes") or []
    if not names:
        return ""
    return (f"## Classes\n\nClass-conditional ({meta['model'].get('conditional')}): G takes (z, y), y the class "
            f"index in [batch] int64. Classes, in label order: {', '.join(names)}. "
            f"`flowergan.generate(G, 16, classes=\"{names[0]}\")` or `flowergan sample --class {names[0]}`.\n\n")


def model_card(meta: dict[str, Any], state: dict[str, Any], cfg: Config, license: str = LICENSE,
               samples: str | None = None) -> str:
    """README.md of an export folder: front matter, samples, training data and budget, quality, how to use it.
    `samples` is the sample grid's file name in the folder, if it holds one."""
    from flowergan.export.usage import use_section

    fm = front_matter(meta, state, cfg, license)
    info = fm["flowergan"]
    res, budget = meta["resolution"], info["budget"]
    rows = "\n".join(f"| {m['name']} | {m['value']:.6g} | {m['source']} |"
                     for m in info["metrics"] if "n_generated" not in m) or "| (none recorded) | | |"
    files = ", ".join(f"`{f}`" for f in meta["files"].values())
    grid = f"\n![{SAMPLES_CAPTION}]({samples})\n\n*{SAMPLES_CAPTION}.*\n" if samples else ""
    epochs = f", {budget['epochs']:g} passes over the data" if "epochs" in budget else ""
    return f"""---
{chr(10).join(_yaml(fm))}
---

# flowergan DCGAN generator ({res}x{res})

A DCGAN generator (Radford et al. 2016) trained with flowergan. These are the weights of **{meta['weights']}**.
{grid}
Files: {files}, `config.json` (the model section and the conventions below){', `' + samples + '`' if samples else ''}.
G only: no discriminator and no optimizer state; `model.safetensors` loads without unpickling anything.
Licence: `{license}`.

## Training data

{_data_text(info['dataset'])}

## Training budget

{budget['steps']} steps of G at batch {budget['batch_size']} ({budget['images_seen']} images seen{epochs}); the run
was set to train for {budget['planned']}.

{_classes_text(meta)}## Quality

{_quality(info, cfg)}
{use_section(meta)}
## Training metrics at this checkpoint

| metric | value | provenance |
| --- | --- | --- |
{rows}
"""
