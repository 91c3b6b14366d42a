"""Sample quality of flowergan's recipe against the PyTorch DCGAN tutorial's, at one equal budget, in one run.

Both recipes train the same Radford DCGAN (64², nz 100, ngf = ndf = 64 by default) with `flowergan.train.loop`
on the same shards, batch and number of G steps, from the same seed:

- **tutorial**: hard labels 1 / 0, no EMA, fp32, samples of G in eval mode (the tutorial's `netG.eval()`-free
  loop samples in train mode only inside training; its saved grids come from the running statistics).
- **flowergan**: the [model] / [optim] / [train] sections of `jobs/flowers64.toml` (the shipped recipe, label
  smoothing 0.9 / 0.1), with `--set section.key=value` on top; samples of G_ema as `model.g_sample_bn` says.

On SynthFlowers (the default) each G is scored by the SynthFlowers oracle (modes covered out of 48, KL of the
generated mode distribution to uniform, in nats) and by synth-FD, the Fréchet distance in the features of the
eval package's SynthFlowers CNN (`flowergan_eval.api.synth_scores`); the last line is
`quality ratio=<flowergan synth-FD / tutorial synth-FD>` (lower is better). `--data PATH` trains on real photos
(shards or the flowers5-128 tar, resized to 64 px; by default 2,000 G steps and 2,000 samples), where the oracle does
not apply: each G is scored by `effnet_fd`, the Fréchet distance in ImageNet EfficientNet-Lite2 features (texture
included; calibrated in docs/metrics.md), and by `lattice`, the share of the samples' spectral power at periods of
4 px or less divided by the real photos' share (1 = as fine-grained as photos; a checkerboard texture raises it);
the last line is `photo quality ratio=<flowergan effnet-FD / tutorial effnet-FD>`, and the grids (same z) are saved
side by side.

    python benchmarks/quality.py                              # SynthFlowers, 700 G steps per recipe
    python benchmarks/quality.py --steps 300 --ngf 32 --recipes flowergan --set train.r1_gamma=1 --tag r1
    python benchmarks/quality.py --data ../shared/data/flowers5-128.tar                   # photos, 2,000 G steps
    python benchmarks/quality.py --data ../shared/data/flowers5-128.tar --recipes tutorial \
        --tutorial-set train.fake_label=0.1 --tag tut-fake01                              # a knob on the tutorial
    python benchmarks/quality.py --ngf 32 --steps 4000 --every 500 --recipes flowergan    # the budget curve

Class-conditional recipes (`--recipes conditional`, or any of `uncond-bce` (= flowergan), `uncond-hinge`,
`concat-bce`, `concat-hinge`, `projection-bce`, `projection-hinge`): the flowergan recipe with `model.conditional`
and `train.loss` set, fake classes by the data's frequencies. On SynthFlowers each conditional G is scored on
class-balanced samples (sample i asks for mode i mod 48) and also by its class accuracy (the share of samples the
oracle reads as the mode they were asked for); its grid has one row per mode.

    python benchmarks/quality.py --ngf 32 --steps 700 --recipes conditional            # uncond vs concat vs projection

`--every K` keeps a checkpoint every K G steps and scores each of them the same way (rows `{"curve": ...}`, kept in the
run dir's curve.jsonl), so one run names the step at which the targets (48/48 modes, KL <= 0.05 nats) are first
met, or the best it got to; `--extend` continues a recipe's earlier run of the same recipe to a larger --steps
instead of training it again from step 0.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from flowergan import visuals
from flowergan.artifacts.checkpoint import list_checkpoints, step_dir_name, step_of
from flowergan.artifacts.checkpoint import read_generator as load_generator
from flowergan.config import Config, ConfigError, load_config
from flowergan.generation import for_sampling, iter_samples
from flowergan.train.loop import train

ROOT = Path(__file__).resolve().parent.parent
TARGET_MODES, TARGET_KL = 48, 0.05  # the issue's targets for flowergan's default on SynthFlowers
CONDITIONAL_RECIPES = tuple(f"{c}-{loss}" for c in ("uncond", "concat", "projection") for loss in ("bce", "hinge"))
GROUPS = {"conditional": ("flowergan", "concat-bce", "concat-hinge", "projection-bce", "projection-hinge")}
RECIPE_SECTIONS = ("model", "optim", "train")
SAMPLING_ONLY = ("model.g_sample_bn", "train.ema")  # settings that change what is sampled, not what is trained
TUTORIAL = ["train.real_label=1.0", "train.fake_label=0.0", "train.ema=false", "train.amp=off",
            "train.diffaugment=", "train.r1_gamma=0", "model.d_pack=1", "model.g_sample_bn=eval",
            "model.spectral_norm=false", "model.d_mbstd=0", "model.d_dropout=0", "model.d_input_dropout=0",
            "optim.lr_g=2e-4", "optim.lr_d=2e-4", "optim.beta1=0.5", "optim.beta2=0.999"]


def recipe_config(name: str, args: argparse.Namespace, data: str, run_dir: Path) -> Config:
    """The config of one recipe: the job file's recipe sections, the run's common settings, then the recipe's own."""
    sets: list[str] = []
    if name != "tutorial":  # the tutorial starts from the defaults: the Radford architecture, Adam 2e-4 / 0.5
        job = load_config(ROOT / "jobs" / "flowers64.toml")
        sets = [f"{s}.{k}={_text(v)}" for s in RECIPE_SECTIONS for k, v in job.to_dict()[s].items()
                if not (s == "train" and k in ("epochs", "steps", "checkpoint_every", "keep_checkpoints", "device"))]
    sets += [f"data.path={data}", "data.cache=memory", "data.workers=0", f"train.steps={args.steps}",
             "train.epochs=0", f"train.batch_size={args.batch}", f"train.seed={args.seed}",
             f"train.device={args.device}", f"train.checkpoint_every={args.every or args.steps}",
             f"train.keep_checkpoints={args.steps // args.every + 1 if args.every else 1}", f"log.run_dir={run_dir}",
             "log.every=50", f"log.sample_every={args.steps}", "log.tensorboard=false", "log.progress=false",
             "eval.every=0", f"model.ngf={args.ngf}", f"model.ndf={args.ngf}", "model.resolution=64"]
    if name in CONDITIONAL_RECIPES:  # the flowergan recipe, conditioned as the name says, with the loss it names
        conditional, loss = name.split("-")
        sets += [f"model.conditional={'none' if conditional == 'uncond' else conditional}", f"train.loss={loss}"]
    sets += TUTORIAL + list(args.tutorial_set) if name == "tutorial" else list(args.set)
    cfg = load_config(None, sets)
    cfg.cluster.name = f"quality-{name}"
    return cfg


def _text(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def real_shards(path: str, out: Path) -> str:
    """A shard directory for `path`: itself if it is one, else 64 px shards made from it once (cached in out)."""
    p = Path(path)
    if (p / "manifest.json").is_file() or p.name == "manifest.json":
        return str(p)
    shards = out / f"shards-{p.stem}-64"
    if not (shards / "manifest.json").is_file():
        import subprocess

        subprocess.run([sys.executable, "-m", "flowergan", "data", "shard", str(p), "--out", str(shards),
                        "--size", "64", "--no-progress"], check=True)
    return str(shards)


def score(G: torch.nn.Module, cfg: Config, data: str, n: int, synth: bool, device: str = "cpu"
          ) -> dict[str, float]:
    """SynthFlowers: synth-FD, modes covered and KL (`flowergan_eval.api.synth_scores`). Photos: effnet-FD, the FD
    in ImageNet EfficientNet-Lite2 features, and the lattice ratio (the oracle's modes mean nothing there)."""
    from flowergan_eval import api
    from flowergan_eval.real import open_real

    G = G.to(device)
    if synth:
        s = api.synth_scores(G, nz=cfg.model.nz, n=n, data=data, device=device, seed=0)
        out = {k: float(v) for k, v in s.items() if isinstance(v, (int, float)) and not k.endswith("k")}
        if cfg.model.conditional != "none":  # does G draw the mode it is asked for?
            labels = torch.arange(n) % cfg.model.num_classes
            acc, _ = api.registry_scores("class_acc", list(iter_samples(G, n, seed=0, classes=labels)),
                                         open_real(data), device=torch.device(device), labels=labels)
            out["class_acc"] = next(v for k, v in acc.items() if "/" not in k)
            out["classes_covered"] = next(v for k, v in acc.items() if k.endswith("/covered"))
        return out

    real = open_real(data)
    images = list(iter_samples(G, n, seed=0))
    fd, _ = api.registry_scores("effnet_fd", images, real, device=torch.device(device))
    return {**fd, "lattice": round(fine_share(torch.cat(images)) / real_fine_share(data, n), 3)}


@functools.lru_cache(maxsize=4)
def real_fine_share(data: str, n: int) -> float:
    """`fine_share` of the first n real images, decoded once per run (a curve scores every kept checkpoint)."""
    from flowergan_eval.real import load_real, open_real

    return fine_share(load_real(open_real(data), n=n)[0])


def fine_share(images: torch.Tensor, period: float = 4.0) -> float:
    """The mean share of an image's spectral power (grey, mean removed) at periods of `period` px or less in x or
    y: where a transposed convolution's checkerboard (period 2) and its coarser lattices (period 4) live."""
    x = images.float().mean(dim=1)
    x = x - x.mean(dim=(1, 2), keepdim=True)
    power = torch.fft.fft2(x).abs().square()
    fy = torch.fft.fftfreq(x.shape[1]).abs()[:, None]
    fx = torch.fft.fftfreq(x.shape[2]).abs()[None, :]
    fine = (torch.maximum(fy, fx) >= 1 / period).to(power.dtype)
    return float(((power * fine).sum(dim=(1, 2)) / power.sum(dim=(1, 2)).clamp_min(1e-12)).mean())


def _train_seconds(run_dir: Path) -> float | None:
    """The training seconds of the run in `run_dir`: from its train.json when it finished; for a run stopped
    before its end (no train.json) that kept a checkpoint, about that: the wall-clock span of its metrics rows."""
    try:
        return float(json.loads((run_dir / "train.json").read_text())["train_s"])
    except (OSError, ValueError, KeyError):
        pass
    if not list_checkpoints(run_dir / "checkpoints"):
        return None
    metrics = run_dir / "metrics.jsonl"
    times = []
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        try:
            times.append(float(json.loads(line)["time"]))
        except (ValueError, KeyError, TypeError):
            continue  # the last row of a killed run may be cut short
    return max(times) - min(times) if times else 0.0


def run_recipe(name: str, args: argparse.Namespace, data: str, out: Path, synth: bool) -> dict[str, Any]:
    """Train one recipe, save its grid, score it; returns the row."""
    run_dir = out / run_name(args.tag, name)
    cfg = recipe_config(name, args, data, run_dir)
    t0 = time.perf_counter()
    if args.score_run is not None:  # sample an earlier run differently: it must have trained what cfg trains
        run_dir = out / run_name(args.score_run, name)
        if not finished(run_dir, cfg, sampling_only=True):
            sys.exit(f"--score-run {args.score_run}: {run_dir} is not a finished run of this recipe (only "
                     f"{', '.join(SAMPLING_ONLY)} may differ)")
        last, train_s = {}, float(json.loads((run_dir / "train.json").read_text())["train_s"])
    elif args.reuse and finished(run_dir, cfg):
        last, train_s = {}, float(json.loads((run_dir / "train.json").read_text())["train_s"])
    else:
        earlier = extendable(run_dir, cfg) if args.extend else None
        if earlier is None and run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        last = train(cfg, resume=earlier is not None)
        train_s = time.perf_counter() - t0 + (earlier or 0.0)
        (run_dir / "train.json").write_text(json.dumps({"train_s": train_s, **last}))
        if args.every:  # a reused run's curve is already in its curve.jsonl
            curve(name, args, resolved(run_dir, cfg), run_dir, data, synth)
    cfg = resolved(run_dir, cfg)
    trained, _ = load_generator(run_dir, ema=cfg.train.ema)
    G = for_sampling(trained, cfg.model.g_sample_bn).eval()  # the network the loop's grids and exports use
    with torch.no_grad():
        if cfg.model.conditional == "none":
            z = torch.randn(64, cfg.model.nz, generator=torch.Generator().manual_seed(args.seed))
            grid = visuals.to_grid(G(z))
        else:  # one row per class, each row the same 8 z's
            k = cfg.model.num_classes
            z = torch.randn(8, cfg.model.nz, generator=torch.Generator().manual_seed(args.seed)).repeat(k, 1)
            y = torch.arange(k).repeat_interleave(8)
            grid = visuals.class_rows(G(z, y), [n.strip() for n in cfg.model.class_names.split(",")], 8)
    visuals.save_png(grid, out / f"quality-{args.tag + '-' if args.tag else ''}{name}.png")
    t1 = time.perf_counter()
    metrics = score(G, cfg, data, args.n, synth, args.device)
    row = {"recipe": name, "tag": args.tag, "steps": args.steps, "ngf": args.ngf, "batch": args.batch,
           "sets": list(args.tutorial_set) if name == "tutorial" else list(args.set), "train_s": round(train_s, 1),
           "eval_s": round(time.perf_counter() - t1, 1), "img_per_s": round(args.steps * args.batch / train_s, 1),
           "loss_d": last.get("Loss/D"), "loss_g": last.get("Loss/G"), **metrics}
    print(json.dumps(row), flush=True)
    return row


def run_name(tag: str, recipe: str) -> str:
    return f"run-{tag}-{recipe}" if tag else f"run-{recipe}"


def resolved(run_dir: Path, cfg: Config) -> Config:
    """A conditional recipe's config as training resolved it (num_classes and class names from the data's manifest,
    in the run dir's config.toml); an unconditional one as it is."""
    return cfg if cfg.model.conditional == "none" else load_config(run_dir / "config.toml")


def finished(run_dir: Path, cfg: Config, sampling_only: bool = False) -> bool:
    """Whether `run_dir` already holds this recipe trained to the end (then --reuse only scores it): the same
    [data] [model] [optim] [train] sections, which decide what is trained (where logs went does not); with
    `sampling_only`, the settings in SAMPLING_ONLY may differ (the run must have kept G_ema if cfg samples it)."""
    saved = _saved_config(run_dir)
    if saved is not None and sampling_only:
        if cfg.train.ema and not saved["train"]["ema"]:
            return False
        want = cfg.to_dict()
        for key in SAMPLING_ONLY:  # e.g. train.ema: G and D train the same with or without an average of G
            section, field = key.split(".")
            saved[section][field] = want[section][field]
    return (saved is not None and _same_recipe(saved, cfg) and (run_dir / "train.json").is_file()
            and (run_dir / "checkpoints" / step_dir_name(cfg.train.steps)).is_dir())


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    try:
        return load_config(run_dir / "config.toml").to_dict()
    except (OSError, ConfigError):
        return None


def _same_recipe(saved: dict[str, Any], cfg: Config, loose: tuple[str, ...] = ()) -> bool:
    """Whether a saved config trains what cfg does: the same data and recipe sections, ignoring [train] `loose`."""
    want = cfg.to_dict()
    if want["model"]["conditional"] != "none" and not want["model"]["num_classes"]:  # resolved from the data
        want["model"].update({k: saved["model"].get(k) for k in ("num_classes", "class_names")})
    return all(saved[s] == want[s] for s in ("data", "model", "optim")) and all(
        v == want["train"].get(k) for k, v in saved["train"].items() if k not in loose)


def extendable(run_dir: Path, cfg: Config) -> float | None:
    """The training seconds of an earlier run in `run_dir` of the same data and recipe (any number of steps, at
    most cfg's), which `--extend` continues from its newest checkpoint; None when there is none to continue."""
    saved = _saved_config(run_dir)
    train_s = _train_seconds(run_dir)
    if train_s is None:
        return None
    loose = ("steps", "checkpoint_every", "keep_checkpoints")  # what extending changes; the recipe may not
    if saved is None or not _same_recipe(saved, cfg, loose) or saved["train"]["steps"] > cfg.train.steps:
        return None
    return train_s


def curve(name: str, args: argparse.Namespace, cfg: Config, run_dir: Path, data: str, synth: bool) -> None:
    """Score every kept checkpoint (every --every steps) like the final one and say when the targets are met.
    Rows live in the run dir's curve.jsonl, so an --extend run scores only its new checkpoints."""
    path = run_dir / "curve.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    scored = {r["step"] for r in rows}
    with open(path, "a") as f:
        for ckpt in list_checkpoints(run_dir / "checkpoints"):
            if step_of(ckpt) in scored:
                continue
            trained, _ = load_generator(ckpt, ema=cfg.train.ema)
            row = {"recipe": name, "tag": args.tag, "step": step_of(ckpt),
                   **score(for_sampling(trained, cfg.model.g_sample_bn).eval(), cfg, data, args.n, synth,
                           args.device)}
            f.write(json.dumps(row) + "\n")
            rows.append(row)
    rows.sort(key=lambda r: r["step"])
    for row in rows:
        print(json.dumps({"curve": row}), flush=True)
    if synth and rows:
        met = next((r["step"] for r in rows if r["modes_covered"] >= TARGET_MODES and r["modes_kl"] <= TARGET_KL),
                   None)
        best = max(rows, key=lambda r: (r["modes_covered"], -r["modes_kl"]))
        print(f"{name}: targets ({TARGET_MODES}/48 modes, KL <= {TARGET_KL} nats) "
              + (f"first met at step {met}" if met is not None else
                 f"not met by step {rows[-1]['step']} (best: {best['modes_covered']:.0f}/48, KL "
                 f"{best['modes_kl']:.3f} at step {best['step']})"), flush=True)


def side_by_side(paths: list[Path], out: Path) -> None:
    """The grids next to each other, 16 px apart, in the order given (left to right)."""
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in paths]
    w = sum(i.width for i in images) + 16 * (len(images) - 1)
    canvas = Image.new("RGB", (w, max(i.height for i in images)), "white")
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width + 16
    canvas.save(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="", help="real photos (shards, tar or folder); default: SynthFlowers")
    ap.add_argument("--synth", default=str(ROOT / "data" / "synth64"), help="SynthFlowers shards (made if absent)")
    ap.add_argument("--steps", type=int, default=0, help="G steps per recipe (the equal budget; default 700 on "
                    "SynthFlowers, 2000 on photos)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ngf", type=int, default=64, help="ngf = ndf")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=0, help="generated images per score (default 4096 on SynthFlowers, 2000 "
                    "on photos)")
    ap.add_argument("--recipes", default="tutorial,flowergan", help="comma-separated: tutorial, flowergan, "
                    f"{', '.join(CONDITIONAL_RECIPES)}; 'conditional' = {','.join(GROUPS['conditional'])}")
    ap.add_argument("--set", action="append", default=[], help="section.key=value for the flowergan recipe")
    ap.add_argument("--tutorial-set", action="append", default=[], help="section.key=value on top of the tutorial "
                    "recipe (one knob from the tutorial's side)")
    ap.add_argument("--tag", default="", help="name of this run's files (ablation runs)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "quality"), help="run dirs, grids, results.jsonl")
    ap.add_argument("--reuse", action="store_true", help="score a recipe's finished run of the same config "
                    "instead of training it again")
    ap.add_argument("--score-run", default=None, metavar="TAG", help="score the finished run of --tag TAG ('' for "
                    "the untagged run) with this run's sampling settings (model.g_sample_bn, train.ema=false for raw "
                    "G) instead of training it again")
    ap.add_argument("--every", type=int, default=0, help="also keep and score a checkpoint every K G steps "
                    "(the curve; with SynthFlowers it names the step at which the targets are first met)")
    ap.add_argument("--extend", action="store_true", help="continue a recipe's earlier run of the same recipe "
                    "to --steps from its newest checkpoint instead of training again from step 0")
    ap.add_argument("--device", default="cpu", help="where both recipes train and are scored (cpu, cuda): the "
                    "full photo budget takes about 2 hours on 2 CPU cores and minutes on one GPU")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default; 1 on a busy "
                    "machine, where OpenMP spin-waits)")
    args = ap.parse_args(argv)
    args.steps = args.steps or (2000 if args.data else 700)
    args.n = args.n or (2000 if args.data else 4096)
    names = [n for r in args.recipes.split(",") if r.strip() for n in GROUPS.get(r.strip(), (r.strip(),))]
    known = {"tutorial", "flowergan", *CONDITIONAL_RECIPES}
    if not names or set(names) - known:
        ap.error(f"--recipes: {args.recipes!r}; use a comma-separated subset of: {', '.join(sorted(known))}, or "
                 "conditional")
    try:  # every recipe's config before any training: a bad --set must not wait for the tutorial's run
        for name in names:
            recipe_config(name, args, args.data or args.synth, Path(args.out))
    except ConfigError as e:
        ap.error(str(e))
    if args.every < 0 or (args.every and args.steps % args.every):
        ap.error(f"--every must divide --steps ({args.steps}); got {args.every}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    synth = not args.data
    if synth and not (Path(args.synth) / "manifest.json").is_file():
        import subprocess

        subprocess.run([sys.executable, "-m", "flowergan", "data", "synth", "--out", args.synth, "--n", "4096",
                        "--no-progress"], check=True)
    data = args.synth if synth else real_shards(args.data, out)
    rows = {name: run_recipe(name, args, data, out, synth) for name in names}
    with open(out / "results.jsonl", "a") as f:
        for row in rows.values():
            f.write(json.dumps(row) + "\n")
    print(f"data {data}, {args.steps} G steps of batch {args.batch}, ngf = ndf = {args.ngf}, n = {args.n} samples")
    for name, row in rows.items():
        key, value = _fd(row)
        fd = f"{key} {value:.1f}" if key else "FD not available"
        modes = (f"modes {row['modes_covered']:.0f}/{row.get('modes_of', 48):.0f}, KL {row['modes_kl']:.3f} nats, "
                 if "modes_covered" in row else f"lattice {row['lattice']:.2f}, " if "lattice" in row else "")
        acc = f", class accuracy {row['class_acc']:.3f}" if "class_acc" in row else ""
        print(f"{name:16s} {modes}{fd}{acc}  ({row['train_s']:.0f} s training, {row['img_per_s']:.0f} img/s)")
    if len(rows) == 2:
        tag = args.tag + "-" if args.tag else ""
        side_by_side([out / f"quality-{tag}{n}.png" for n in names], out / f"quality-{tag}side-by-side.png")
        print(f"grids: {out}/quality-{tag}{{{','.join(names)},side-by-side}}.png (left to right: {', '.join(names)})")
        if {"tutorial", "flowergan"} <= set(rows) and _fd(rows["tutorial"])[0]:
            label = "quality ratio" if synth else "photo quality ratio"
            print(f"{label}={_fd(rows['flowergan'])[1] / _fd(rows['tutorial'])[1]:.3f}")


def _fd(row: dict[str, Any]) -> tuple[str, float]:
    """The row's Fréchet distance (synth-FD, or the photos' FD) as (name, value); ("", nan) without one."""
    return next(((k, float(v)) for k, v in row.items() if k.startswith(("synth_fd", "effnet_fd"))),
                ("", float("nan")))


if __name__ == "__main__":
    main()
