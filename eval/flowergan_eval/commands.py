"""What each flowergan-eval command computes, as functions that return one result dict.

A result holds `metrics` (name -> number), `provenance` (N, checkpoint, reference set, extractor, resize),
`notes` (what a number means) and `messages`; cli.py prints it as a table or as one JSON object.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from flowergan import catalogue
from flowergan.errors import UserError
from flowergan.outputs import write_atomic
from flowergan.progress import progress_bar
from flowergan_eval import features as FT
from flowergan_eval import latent as L
from flowergan_eval import metrics as M
from flowergan_eval import oracle as O
from flowergan_eval.api import Evaluation, Options
from flowergan_eval.plan import report_metrics  # noqa: F401 - the report's metric choice, re-exported
from flowergan_eval.timing import warn_if_long


def run_metric(base: str, ckpt: str, opts: Options) -> dict[str, Any]:
    """One registered feature metric (fid, kid, is, prdc, synth_fd) of n generated images."""
    metric = M.REGISTRY[base]
    with progress_bar(opts.progress, stderr=True) as bar:
        ev = Evaluation(ckpt, opts, bar=bar)  # --data defaults to the shards the run recorded
        if ev.real is None and metric.needs_real:
            raise UserError(ev.data_problem or f"{base} compares with real images: pass --data SHARDS")
        if ev.real is None and (opts.features or metric.features) == "synth":
            raise UserError(ev.data_problem or f"{base} with SynthNet features: pass --data SYNTH_SHARDS "
                                               "(SynthNet is trained on them)")
        warn_if_long(ev, [opts.features or metric.features])
        values = ev.metrics([base])
        prov = ev.provenance(with_reference=metric.needs_real)
    return {"command": base, "metrics": values, "provenance": prov, "notes": notes_for(values),
            "extractor_of": dict(ev.extractor_of)}


NOTES = catalogue.notes()  # what each number means, from the metric catalogue


def notes_for(names) -> dict[str, str]:
    """What each reported number means ('kid1k/std' -> the note of 'kid/std')."""
    out = {}
    for name in names:
        key = re.sub(r"^([a-z_]+?)\d+k?(?=/|$)", r"\1", name)
        if key in NOTES:
            out[name] = NOTES[key]
    return out


def run_diversity(ckpt: str, opts: Options, pairs: int = 1000) -> dict[str, Any]:
    """The mode-collapse measures."""
    with progress_bar(opts.progress, stderr=True) as bar:
        ev = Evaluation(ckpt, opts, bar=bar)
        if ev.real is None:
            raise UserError(ev.data_problem or "diversity compares with real images: pass --data SHARDS")
        warn_if_long(ev, [ev.default_features])
        out = ev.diversity(n_pairs=pairs)
        prov = ev.provenance()
    notes = notes_for(out["metrics"])
    d = out["details"]
    closest = [{"generated": g, "train": t, "distance": dist} for g, t, dist in d["closest"]]
    return {"command": "diversity", "metrics": out["metrics"], "provenance": prov, "notes": notes,
            "details": {**{k: v for k, v in d.items() if k != "closest"}, "closest": closest}}


def mode_counts(ev: Evaluation, oracle_dir: str | None, min_count: int, train: bool = False) -> dict[str, Any]:
    """Oracle-read modes of the n generated images (shared by `modes` and `report`; `train`: train the oracle of
    --data first when none is cached)."""
    gen, info = ev.mode_predictions(oracle_dir, train=train)
    k = int(gen["num_modes"])
    stats = M.mode_stats(gen["modes"], k, min_count or M.default_min_count(ev.opts.n, k))
    stats.update(oracle=info["path"], oracle_accuracy=info["accuracy"], classes=info.get("classes"))
    return stats


def run_modes(ckpt: str, opts: Options, oracle_dir: str | None = None, min_count: int = 0) -> dict[str, Any]:
    """Modes covered and KL to uniform (the registry's `modes`), for a G trained on SynthFlowers."""
    with progress_bar(opts.progress, stderr=True) as bar:
        ev = Evaluation(ckpt, opts, bar=bar)
        metrics = ev.metrics(["modes"], oracle_dir=oracle_dir, min_count=min_count)
        s = mode_counts(ev, oracle_dir, min_count)
    n_suffix = M.count_suffix(opts.n)
    prov = {**ev.provenance(with_reference=False, with_extractor=False), "oracle": s["oracle"],
            "oracle_accuracy": s["oracle_accuracy"], "min_count": s["min_count"],
            "extractor": ev.extractor_of[f"modes{n_suffix}/covered"]}
    notes = {f"modes{n_suffix}/covered": f"modes with >= {s['min_count']} of the samples (oracle accuracy "
                                         f"{s['oracle_accuracy']:.2%})",
             f"modes{n_suffix}/kl_uniform": "KL(generated mode distribution || uniform) in nats; 0 = all modes "
                                            "equally often"}
    return {"command": "modes", "metrics": {k: int(v) if k.endswith(("/covered", "/of")) else v
                                            for k, v in metrics.items()},
            "provenance": prov, "notes": notes, "extractor_of": dict(ev.extractor_of),
            "counts": dict(zip(s["classes"] or [str(i) for i in range(s["num_modes"])], s["counts"]))}


# ---------------------------------------------------------------- pictures
def latent_pictures(ev: Evaluation, *, thumbs: int = 120, pairs: int = 6, steps: int = 10,
                    with_gif: bool = False, with_z_pca: bool = True) -> dict[str, bytes]:
    """PNG (and GIF) bytes of the latent PCA, D-feature PCA, and lerp/slerp interpolation grids."""
    G = ev.generator()
    pics: dict[str, bytes] = {}
    m = min(ev.opts.n, 500)
    if with_z_pca:
        pics["latent_pca.png"] = L.latent_pca_png(ev.z[:m].numpy(), ev.fake_images[:m], max_thumbs=thumbs)
    if ev.real is not None:
        from flowergan.artifacts.checkpoint import read_discriminator

        D, _ = read_discriminator(ev.require_checkpoint("the D-feature PCA (with --data)"), device=ev.device)
        real_x, real_y = ev.real_images if ev.computed("real_images") else _first_real(ev, m)
        fake_y = ev.fake_labels[:m] if ev.fake_labels is not None else None  # a conditional D reads the classes
        pics["d_features_pca.png"] = L.d_features_pca_png(
            FT.d_features(D, real_x[:m], device=ev.device, labels=real_y[:m]),
            FT.d_features(D, ev.fake_images[:m], device=ev.device, labels=fake_y))
    for mode in ("lerp", "slerp"):
        z = L.interpolation_latents(ev.nz, pairs, steps, ev.opts.seed, mode)
        images = torch.cat([x.cpu() for x in FT.generate(G, z, batch=ev.opts.batch, device=ev.device)])
        pics[f"interp_{mode}.png"] = L.grid_png(images, nrow=steps)
        if with_gif and mode == "slerp":
            frames = [L.grid_tensor(images[t::steps], nrow=pairs) for t in range(steps)]
            pics["interp_slerp.gif"] = L.gif_bytes(frames)
    return pics


def _first_real(ev: Evaluation, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    from flowergan_eval.real import load_real

    return load_real(ev.require_real(), m)


def run_latent(ckpt: str, opts: Options, out: Path, gif: bool = False) -> dict[str, Any]:
    """Write the latent pictures into `out`."""
    with progress_bar(opts.progress, stderr=True) as bar:
        ev = Evaluation(ckpt, opts, bar=bar)
        pics = latent_pictures(ev, with_gif=gif)
    for name, data in pics.items():
        write_atomic(out / name, data)
    messages = [f"wrote {out / name}" for name in pics]
    if ev.real is None:
        messages.append("no --data: the PCA of D's features (real vs generated) needs real images")
    return {"command": "latent", "metrics": {}, "provenance": ev.provenance(with_reference=False,
                                                                             with_extractor=False),
            "files": [str(out / name) for name in pics], "messages": messages}


def run_stats(opts: Options, recompute: bool = False) -> dict[str, Any]:
    """Compute (or find) the cached reference statistics of --data."""
    from flowergan_eval import stats as S

    with progress_bar(opts.progress, stderr=True) as bar:
        ev = Evaluation(None, opts, bar=bar)
        real = ev.require_real()
        if recompute or not S.is_cached(real, ev.extractor, opts.ref_n):
            warn_if_long(ev, [ev.default_features])
        ref = S.reference(real, ev.extractor, n=opts.ref_n, batch=opts.batch, progress=bar, recompute=recompute)
    prov = {"n": ref.n, "reference": {**real.describe(), "n": ref.n, "cached": ref.cached,
                                      "skipped": ref.meta.get("skipped", 0)},
            "extractor": ev.extractor.name, "resize": ref.meta.get("resize")}
    where = str(ref.path) if ref.path else "(not cached: the manifest has no pixel or shard fingerprint)"
    return {"command": "stats", "metrics": {"real_images": ref.n, "feature_dim": int(ref.pool.shape[1])},
            "provenance": prov, "path": str(ref.path) if ref.path else None, "key": ref.meta.get("key"),
            "messages": [f"statistics {'reused from' if ref.cached else 'written to'} {where}"]}


def run_oracle_train(data: str, *, out: Path | None, epochs: int, seed: int, show_progress: bool = True,
                     cnn_epochs: int = 5) -> dict[str, Any]:
    """Train and save the SynthFlowers mode oracle and SynthNet (synth_fd's features) into one directory; `ok`
    says whether the oracle reached 99 % held-out accuracy."""
    from flowergan_eval import synthnet as SN
    from flowergan_eval.real import open_real

    if epochs < 1:
        raise UserError(f"--epochs {epochs}: must be >= 1")
    if cnn_epochs < 0:
        raise UserError(f"--cnn-epochs {cnn_epochs}: must be >= 0 (0 = the mode oracle only)")
    real = open_real(data)
    weights: dict[str, dict[str, torch.Tensor]] = {}
    infos: dict[str, dict[str, Any]] = {}
    with progress_bar(show_progress, stderr=True) as bar:
        model, info = O.train(real, epochs=epochs, seed=seed, progress=bar)
        weights["oracle.safetensors"] = {k: v.contiguous() for k, v in model.state_dict().items()}
        infos["oracle.json"] = info
        if cnn_epochs:
            net, net_info = SN.train(real, epochs=cnn_epochs, seed=seed, progress=bar)
            weights[SN.WEIGHTS], infos[SN.INFO] = SN.tensors(net), net_info
    path = O.save_files(out or O.default_dir(real), weights, infos)
    net_info = infos.get(SN.INFO, {})
    ok = info["accuracy"] >= O.MIN_ACCURACY
    verdict = ("fit for `flowergan-eval modes`" if ok else "BELOW 99 %: mode counts would be unreliable; train on "
               "more images (`flowergan data synth --n 8192`) or more --epochs")
    return {"command": "oracle train", "ok": ok,
            "metrics": {"accuracy": info["accuracy"], "worst_mode_accuracy": info["worst_mode_accuracy"],
                        **({"synthnet_accuracy": net_info["accuracy"]} if net_info else {})},
            "provenance": {"n": info["n_test"], "trained_on": f"{real.path}: {info['n_train']} images for training, "
                           f"the last {info['n_test']} (manifest order) held out for the accuracy; "
                           f"{info['num_modes']} modes, pixel fingerprint {real.pixel_fingerprint or '-'}"},
            "notes": {"accuracy": f"held-out images classified correctly ({verdict})",
                      "worst_mode_accuracy": "the same, for the hardest mode",
                      "synthnet_accuracy": "SynthNet's held-out accuracy (its features define synth_fd; it reads "
                                           "hue well and petal count partly, which is all FD needs)"},
            "path": str(path), "oracle": {k: v for k, v in info.items() if k != "classes"},
            "synthnet": net_info, "messages": [f"{'oracle and SynthNet' if net_info else 'oracle'} saved to {path}"]}


def class_pairs(ev: Evaluation, real_x: torch.Tensor, real_y: torch.Tensor, per_row: int = 6
                ) -> list[tuple[str, bytes, bytes]]:
    """(class name, a row of its generated samples, a row of its real images) for every class of a conditional G."""
    assert ev.fake_labels is not None
    names = ev.require_real().classes
    rows = []
    for c, name in enumerate(names):
        fake = ev.fake_images[ev.fake_labels == c][:per_row]
        real = real_x[real_y == c][:per_row]
        if len(fake) and len(real):
            rows.append((name, L.grid_png(fake, nrow=per_row), L.grid_png(real, nrow=per_row)))
    return rows
