"""`flowergan-eval report`: plan what can be computed here (plan.py), say how long it will take (estimate.py),
compute it with what real images score beside it (baseline.py), and write one self-contained page (page.py).
`--dry-run` walks the same steps up to the computing, so what it prints is what the real run does."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from flowergan.errors import UserError
from flowergan.outputs import write_atomic
from flowergan.progress import progress_bar
from flowergan_eval import baseline as B
from flowergan_eval import estimate as E
from flowergan_eval import features as FT
from flowergan_eval import latent as L
from flowergan_eval import metrics as M
from flowergan_eval import summary as S
from flowergan_eval.api import Evaluation, Options
from flowergan_eval.plan import ReportPlan, plan_report

WHY_CHECKPOINT = "the report (D's features, the other G, the run's curves)"


def _plan(ev: Evaluation, oracle_dir: str | None) -> ReportPlan:
    """The plan for this evaluation; real images are required (a report compares with them)."""
    if ev.real is None:
        raise UserError(ev.data_problem or "report compares with real images: pass --data SHARDS")
    plan = plan_report(ev.real, features=ev.opts.features, inception_weights=ev.opts.inception_weights,
                       oracle_dir=oracle_dir)
    ev.diversity_features = plan.diversity
    return plan


def measure(ev: Evaluation, plan: ReportPlan, oracle_dir: str | None) -> E.Estimate:
    """Time one small batch through G and through every network the plan reads images with."""
    from flowergan_eval.timing import measure as measure_specs

    return measure_specs(ev, [*plan.features.values(), plan.diversity], modes="modes" in plan.metrics,
                         oracle_dir=oracle_dir)


def dry_run_report(ckpt: str, opts: Options, out: Path, oracle_dir: str | None = None) -> dict[str, Any]:
    """What `report` would do, checked without computing: the checkpoint, the device, the data (--data or the
    run's), the Inception weights, the oracle and SynthNet, the metrics, the estimate. A problem the real run would
    stop at is listed, not raised: the cluster's eval Job is checked this way where its volume does not exist."""
    from flowergan.devices import pick_device

    if opts.n < 2 or opts.batch < 1:
        raise UserError(f"--n {opts.n} / --batch {opts.batch}: need n >= 2 and batch >= 1")
    result: dict[str, Any] = {"command": "report --dry-run", "out": str(out), "plan": None, "estimate_s": None,
                              "problems": [], "messages": []}
    say, problems = result["messages"], result["problems"]

    def stop(e: UserError) -> None:  # the real run stops at the first problem; the rest are checked anyway
        say.append(f"{'also' if problems else 'the real run would stop'}: {e}")
        problems.append(str(e))

    try:
        pick_device(opts.device)
    except UserError as e:
        stop(e)
        opts = Options(**{**opts.__dict__, "device": "cpu"})  # check the rest where this machine can
    try:
        ev = Evaluation(ckpt, opts)
        ev.require_checkpoint(WHY_CHECKPOINT)
        plan = _plan(ev, oracle_dir)
    except UserError as e:
        stop(e)
        return result
    result["plan"] = plan.describe()
    say.append(f"would write {out}: {ev.generator_name} of {ev.ckpt} (step {ev.state.get('step')}) against "
               f"{ev.real.path if ev.real else '-'}, n={opts.n}, device={ev.device}, seed={opts.seed}")
    say.append(f"metrics: {', '.join(plan.metrics) or 'none'}; diversity features: {plan.diversity or 'none'}")
    say += [f"left out: {what}: {why}" for what, why in plan.left_out]
    say += plan.prepare
    try:  # loads every extractor: the weights are checked (and fetched when --features inception asks for them)
        est = measure(ev, plan, oracle_dir)
    except UserError as e:
        stop(e)
        return result
    result["estimate_s"] = round(est.seconds, 1)
    say.append(E.warning(est, opts.n, str(ev.device)) or f"estimate: about {E.clock(est.seconds)} on {ev.device}")
    return result


def run_report(ckpt: str, opts: Options, out: Path, oracle_dir: str | None = None) -> dict[str, Any]:
    """Compute what the plan allows and write one self-contained HTML page."""
    from flowergan_eval import page as P
    from flowergan_eval import report as R
    from flowergan_eval import runfiles

    sections: dict[str, Any] = {}
    with progress_bar(opts.progress, stderr=True) as bar:
        ev = Evaluation(ckpt, opts, bar=bar)
        ckpt_dir = ev.require_checkpoint(WHY_CHECKPOINT)  # before any work
        plan = _plan(ev, oracle_dir)
        warning = E.warning(measure(ev, plan, oracle_dir), opts.n, str(ev.device))
        if warning:
            print(warning, file=sys.stderr)
        metrics = ev.metrics([b for b in plan.metrics if b != "modes"])
        if ev.fake_labels is not None:  # a class-conditional G: scored and shown class by class too
            metrics.update(_per_class_metrics(ev, plan))
        reference: dict[str, float] = {}
        for base in plan.metrics:
            if base != "modes":
                reference.update(B.feature_baseline(base, opts.n, ev.reference_for(plan.features[base]).pool,
                                                    device=ev.device))
        real_x = _diversity(ev, plan, metrics, reference, sections)
        if "modes" in plan.metrics:
            _modes(ev, oracle_dir, real_x, metrics, reference, sections)
        sections["grids"] = _grids(ev, ckpt_dir, real_x)
        if ev.fake_labels is not None:
            from flowergan_eval.commands import class_pairs

            sections["classes"] = class_pairs(ev, real_x, ev.real_images[1])
        sections["latent"] = latent_pictures(ev)
        prov = ev.provenance(with_extractor=bool(ev.__dict__.get("_extractors")))
    metrics = S.drop_misleading(metrics, opts.n)
    run_dir = runfiles.run_dir_of(ckpt_dir)
    scalars = R.read_scalars(run_dir)
    sections.update(losses=R.loss_curves_png(scalars) if scalars else None, scalars_source=R.scalars_source(run_dir),
                    eval_curve=R.eval_curve_png(scalars), frames=runfiles.progress_frames(run_dir),
                    verdict=S.verdict(metrics, reference, opts.n), reference=reference, left_out=plan.left_out,
                    extractor_of=dict(ev.extractor_of), reference_note=_reference_note(opts.n, ev))
    from flowergan_eval.commands import notes_for

    notes = notes_for(metrics)
    prov["plan"] = plan.describe()
    html = P.render(title=f"flowergan report: {ev.ckpt}", metrics=metrics, notes=notes, provenance=prov,
                    sections=sections, state=ev.state)
    write_atomic(out, html.encode())
    return {"command": "report", "metrics": metrics, "reference": reference, "provenance": prov, "notes": notes,
            "plan": plan.describe(), "path": str(out), "extractor_of": dict(ev.extractor_of),
            "messages": [f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, self-contained)"]
            + [f"left out: {what}: {why}" for what, why in plan.left_out]}


def _per_class_metrics(ev: Evaluation, plan: ReportPlan) -> dict[str, float]:
    """intra-class FD and KID in the features of the plan's first distance (so they need nothing the plan does not
    have); none when the plan has no feature metric."""
    specs = [plan.features[b] for b in plan.metrics if plan.features.get(b, "oracle") != "oracle"]
    if not specs:
        return {}
    saved, ev.opts.features = ev.opts.features, specs[0]
    try:
        return ev.metrics(["intra_fd", "intra_kid"])
    finally:
        ev.opts.features = saved


def _diversity(ev: Evaluation, plan: ReportPlan, metrics: dict[str, float], reference: dict[str, float],
               sections: dict[str, Any]) -> torch.Tensor:
    """The diversity and memorisation measures (in the plan's features; MS-SSIM alone, on pixels, without any),
    their real-vs-real values and the closest pairs; returns the real images they read."""
    opts = ev.opts
    if plan.diversity:
        div = ev.diversity(n_pairs=500)
        metrics.update(div["metrics"])
        label = ev.extractor_for(plan.diversity).name
        ev.extractor_of.update({k: label for k in div["metrics"] if not k.startswith("ms_ssim")})
        reference.update(B.diversity_baseline(opts.n, ev.reference.pool, seed=opts.seed))
        real_x = ev.real_images[0]
        sections["closest"] = [(L.grid_png(ev.fake_images[g:g + 1], nrow=1), L.grid_png(real_x[t:t + 1], nrow=1),
                                dist) for g, t, dist in div["details"]["closest"]]
    else:
        from flowergan_eval import diversity as DV
        from flowergan_eval.real import load_real

        real_x = load_real(ev.require_real(), min(opts.n, ev.require_real().num_samples))[0]
        c = M.count_suffix(opts.n)
        metrics[f"ms_ssim{c}/generated"] = DV.mean_ms_ssim(ev.fake_images, n_pairs=500, seed=opts.seed)[0]
        metrics[f"ms_ssim{c}/real"] = DV.mean_ms_ssim(real_x, n_pairs=500, seed=opts.seed)[0]
    for key in [k for k in metrics if k.startswith("ms_ssim") and k.endswith("/generated")]:
        reference[key] = metrics[key.replace("/generated", "/real")]  # the real images' own MS-SSIM
    return real_x


def _modes(ev: Evaluation, oracle_dir: str | None, real_x: torch.Tensor, metrics: dict[str, float],
           reference: dict[str, float], sections: dict[str, Any]) -> None:
    """Modes covered and KL read by the oracle (trained on the shards first when none is cached), the histogram,
    and the same reading of real images."""
    from flowergan_eval.commands import mode_counts

    n = ev.opts.n
    s = mode_counts(ev, oracle_dir, 0, train=True)
    names = s["classes"] or [str(i) for i in range(s["num_modes"])]
    title = f"Generated samples per mode (N={n}, oracle accuracy {s['oracle_accuracy']:.2%})"
    sections["modes"] = {"png": L.histogram_png(s["counts"], names, title, s["min_count"]),
                         "covered": s["covered"], "of": s["num_modes"], "kl": s["kl_uniform"]}
    c = M.count_suffix(n)
    metrics.update({f"modes{c}/covered": s["covered"], f"modes{c}/of": s["num_modes"],
                    f"modes{c}/kl_uniform": s["kl_uniform"]})
    ev.extractor_of.update({f"modes{c}/{k}": "mode oracle" for k in ("covered", "of", "kl_uniform")})
    reference.update(B.modes_baseline(n, real_x, s["oracle"]))


def _reference_note(n: int, ev: Evaluation) -> str:
    refs = ev.__dict__.get("_references", {})
    n_ref = max((r.n for r in refs.values()), default=0)
    m = min(n, n_ref // 2)
    note = (f"real vs real: the first {m} real images against the other {n_ref - m}, through the same measures "
            "(modes: the oracle's reading of real images).")
    if 0 < m < n:
        note += f" Fewer than N = {n} real images are held out, which raises real-vs-real FD and KL somewhat."
    return note


def _grids(ev: Evaluation, ckpt_dir: Path, real_x: torch.Tensor) -> dict[str, bytes]:
    """The evaluated G and the checkpoint's other one (EMA / raw) on the same z, next to real images."""
    from flowergan.artifacts import open_generator
    from flowergan.artifacts.checkpoint import has_ema

    grid_n = min(64, ev.opts.n)
    grids = {"G_ema" if ev.generator_name == "G_ema" else "G (raw)": L.grid_png(ev.fake_images[:grid_n], nrow=8)}
    if has_ema(ckpt_dir):
        other_is_ema = ev.generator_name != "G_ema"
        other = open_generator(ckpt_dir, ema=other_is_ema, device=ev.device)
        images = torch.cat([x.cpu() for x in FT.generate(other, ev.z[:grid_n], batch=ev.opts.batch,
                                                         device=ev.device)])
        grids["G_ema" if other_is_ema else "G (raw)"] = L.grid_png(images, nrow=8)
    grids["real"] = L.grid_png(real_x[:grid_n], nrow=8)
    return grids


def latent_pictures(ev: Evaluation) -> dict[str, bytes]:
    """The latent pictures that say something about G: not the PCA of z, whose isotropic Gaussian has no direction
    to find (its axes are noise), only the D-feature PCA and the interpolations."""
    from flowergan_eval.commands import latent_pictures as pictures

    return pictures(ev, with_gif=True, with_z_pca=False)
