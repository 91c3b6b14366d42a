"""`flowergan-eval`: how good and how diverse a checkpoint's flowers are. Numbers to stdout (a table, or one
JSON object with --json), progress bars to stderr; a user error is one line and exit code 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from flowergan.console import version_option
from flowergan_eval import __version__
from flowergan_eval.metrics import REGISTRY

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Evaluate flowergan checkpoints: FID/KID/IS, precision/recall, mode collapse, latent "
                       "space, and a self-contained HTML report.")


@app.callback()
def _root(version: bool = version_option("flowergan-eval", __version__)) -> None:
    """Evaluate flowergan checkpoints: FID/KID/IS, precision/recall, mode collapse, latent space, and a
    self-contained HTML report."""


oracle_app = typer.Typer(no_args_is_help=True, help="The SynthFlowers mode classifier used by `modes` and SynthNet, "
                                                     "the CNN whose features `synth-fd` uses.")
app.add_typer(oracle_app, name="oracle")

# Options shared by the commands (Annotated aliases keep each signature one line per option).
Ckpt = Annotated[str, typer.Option("--ckpt", help="A run directory (its newest checkpoint), a checkpoint directory, "
                                                  "or an export folder (G only: enough for every metric).")]
Data = Annotated[str, typer.Option("--data", help="Real shards (folder with manifest.json, or URL) to compare "
                                                  "with. Default: the shards the checkpoint's run recorded "
                                                  "(eval.data, else data.path).")]
N = Annotated[int, typer.Option("--n", help="Generated images (the metric's name carries it: fid10k).")]
ModesN = Annotated[int, typer.Option("--n", help="Generated images the oracle reads (the metrics' names carry it: "
                                                 "modes10k/covered).")]
LatentN = Annotated[int, typer.Option("--n", help="Generated images in the PCA pictures (thumbnails of at most 120; "
                                                  "at most 500 points).")]
# 64, not `flowergan sample`'s 256: each batch also goes through the feature extractor (Inception resizes to
# 299 px), whose activations dwarf G's.
Batch = Annotated[int, typer.Option("--batch", help="Images per forward pass of G and the feature extractor (smaller "
                                                    "than `flowergan sample --batch`: the extractor runs at up to 299 "
                                                    "px).")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")]
Raw = Annotated[bool, typer.Option("--raw", help="Evaluate the raw G instead of its EMA (G_ema).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the latents z (the same z on every device).")]
StatsData = Annotated[str, typer.Option("--data", help="Real shards (folder with manifest.json, or URL) to "
                                                       "compute the statistics of.")]
TrainData = Annotated[str, typer.Option("--data", help="SynthFlowers shards (folder with manifest.json, or URL) to "
                                                       "train on.")]
TrainSeed = Annotated[int, typer.Option("--seed", help="Seed of the training: initial weights, batch order and "
                                                       "augmentation.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
Weights = Annotated[str | None, typer.Option("--inception-weights", help="FID Inception weights file (else "
                                                                         "$FLOWERGAN_INCEPTION_WEIGHTS, the cache, "
                                                                         "or a verified download).")]
RefN = Annotated[int, typer.Option("--ref-n", help="Real images in the reference set (0 = all).")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr.")]
Features = Annotated[str, typer.Option("--features", help="Feature extractor: inception (FID's, needs its weights), "
                                                          "synth (SynthNet, trained on --data on first use), "
                                                          "effnet-lite2 (ImageNet EfficientNet-Lite2, offline), or "
                                                          "PATH: a TorchScript file, NAME=STATE_DICT of a "
                                                          "torchvision architecture, or a SynthNet directory. "
                                                          "Default: the metric's own.")]


def _options(data: str, n: int, batch: int, device: str, raw: bool, seed: int, weights: str | None, ref_n: int,
             progress: bool, features: str = ""):
    from flowergan_eval.api import Options

    return Options(data=data, n=n, batch=batch, device=device, raw=raw, seed=seed, inception_weights=weights,
                   ref_n=ref_n, progress=progress, features=features)


def _emit(result: dict[str, Any], as_json: bool) -> None:
    from flowergan_eval.api import to_json
    from flowergan_eval.ui import print_result

    if as_json:
        typer.echo(to_json(result))
    else:
        print_result(result)


def _metric_command(name: str) -> Callable[..., None]:
    """The command for one registered feature metric: `flowergan-eval fid|kid|is|prdc|synth-fd|effnet-fd` all come
    from the registry (its mode metrics are the `modes` command)."""

    def command(ckpt: Ckpt, data: Data = "", n: N = 10_000, batch: Batch = 64, device: Device = "auto",
                raw: Raw = False, seed: Seed = 0, json: Json = False, inception_weights: Weights = None,
                ref_n: RefN = 0, progress: Progress = True, features: Features = "") -> None:
        from flowergan_eval.commands import run_metric

        opts = _options(data, n, batch, device, raw, seed, inception_weights, ref_n, progress, features)
        _emit(run_metric(name, ckpt, opts), json)

    command.__doc__ = REGISTRY[name].doc
    return command


for _name, _metric in REGISTRY.items():
    if _metric.features != "oracle" or _metric.facts.per_class:  # class_acc has its own command; modes share one
        # Commands are spelt with hyphens like every other flowergan command (`synth-fd`); the metric keeps its
        # name in results (synth_fd10k). The underscore spelling stays as a hidden alias for existing scripts.
        app.command(_name.replace("_", "-"))(_metric_command(_name))
        if "_" in _name:
            app.command(_name, hidden=True)(_metric_command(_name))


@app.command()
def diversity(ckpt: Ckpt, data: Data = "", n: N = 10_000, batch: Batch = 64, device: Device = "auto",
              raw: Raw = False, seed: Seed = 0, json: Json = False, inception_weights: Weights = None,
              ref_n: RefN = 0, progress: Progress = True, features: Features = "",
              pairs: Annotated[int, typer.Option("--pairs", help="Random image pairs for MS-SSIM.")] = 1000) -> None:
    """Mode collapse: MS-SSIM (generated vs real), NDB + JS over 100 k-means bins, near duplicates, memorisation."""
    from flowergan_eval.commands import run_diversity

    opts = _options(data, n, batch, device, raw, seed, inception_weights, ref_n, progress, features)
    _emit(run_diversity(ckpt, opts, pairs=pairs), json)


@app.command()
def modes(ckpt: Ckpt, data: Data = "", n: ModesN = 10_000, batch: Batch = 64, device: Device = "auto", raw: Raw = False,
          seed: Seed = 0, json: Json = False, progress: Progress = True,
          oracle: Annotated[str | None, typer.Option("--oracle", help="Oracle directory (default: the one "
                                                                      "trained on --data).")] = None,
          min_count: Annotated[int, typer.Option("--min-count", help="Samples a mode needs to count as covered "
                                                                     "(0 = 10% of its uniform share, >= 2).")] = 0
          ) -> None:
    """SynthFlowers mode coverage: modes covered and KL(generated modes || uniform), read by the oracle."""
    from flowergan_eval.commands import run_modes

    opts = _options(data, n, batch, device, raw, seed, None, 0, progress)
    _emit(run_modes(ckpt, opts, oracle_dir=oracle, min_count=min_count), json)


@app.command()
def latent(ckpt: Ckpt, data: Data = "", n: LatentN = 500, batch: Batch = 64, device: Device = "auto", raw: Raw = False,
           seed: Seed = 0, json: Json = False, progress: Progress = True,
           out: Annotated[Path, typer.Option("--out", help="Folder for the PNG (and GIF) files.")] = Path("latent"),
           gif: Annotated[bool, typer.Option("--gif", help="Also write the interpolations as a GIF.")] = False
           ) -> None:
    """Latent pictures: PCA of z with thumbnails, PCA of D's features (real vs generated), lerp/slerp grids."""
    from flowergan_eval.commands import run_latent

    opts = _options(data, n, batch, device, raw, seed, None, 0, progress)
    _emit(run_latent(ckpt, opts, out, gif=gif), json)


@app.command()
def stats(data: StatsData = "", batch: Batch = 64, device: Device = "auto", json: Json = False,
          inception_weights: Weights = None, ref_n: RefN = 0, progress: Progress = True, features: Features = "",
          recompute: Annotated[bool, typer.Option("--recompute", help="Ignore the cache and recompute.")] = False
          ) -> None:
    """Reference statistics of the real shards, cached by (the data's pixel fingerprint, resolution, extractor,
    resize)."""
    from flowergan_eval.commands import run_stats

    opts = _options(data, 2, batch, device, False, 0, inception_weights, ref_n, progress, features)
    _emit(run_stats(opts, recompute=recompute), json)


@app.command()
def report(ckpt: Ckpt, data: Data = "", n: N = 10_000, batch: Batch = 64, device: Device = "auto",
           raw: Raw = False, seed: Seed = 0, json: Json = False, inception_weights: Weights = None,
           ref_n: RefN = 0, progress: Progress = True, features: Features = "",
           out: Annotated[Path, typer.Option("--out", help="The HTML file to write.")] = Path("report.html"),
           oracle: Annotated[str | None, typer.Option("--oracle", help="Oracle directory for the mode "
                                                                       "histogram (SynthFlowers).")] = None,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="Check checkpoint, data, weights and "
                                                                   "oracle; print the plan and its time; "
                                                                   "compute nothing.")] = False) -> None:
    """One self-contained HTML page: the verdict, metrics beside real-vs-real values, samples over training,
    curves, the recipe. Computes what it can here (Inception's metrics only with its weights; synth_fd and modes
    on SynthFlowers; --features X) and says what it left out. --data defaults to the run's recorded shards."""
    from flowergan_eval.report_run import dry_run_report, run_report

    opts = _options(data, n, batch, device, raw, seed, inception_weights, ref_n, progress, features)
    # --dry-run checks the checkpoint, data, weights and oracle and prints the plan; a problem the real run would
    # stop at is listed (exit 0): the cluster's eval Job is checked this way where its volume does not exist.
    _emit(dry_run_report(ckpt, opts, out, oracle_dir=oracle) if dry_run else run_report(ckpt, opts, out,
                                                                                         oracle_dir=oracle), json)


@oracle_app.command("train")
def oracle_train(data: TrainData = "", json: Json = False, progress: Progress = True,
                 out: Annotated[Path | None, typer.Option("--out", help="Where to save it (default: the cache, "
                                                                        "keyed by the data's pixel "
                                                                        "fingerprint).")] = None,
                 epochs: Annotated[int, typer.Option("--epochs", help="Training epochs of the mode oracle.")] = 40,
                 cnn_epochs: Annotated[int, typer.Option("--cnn-epochs", help="Training epochs of SynthNet, the "
                                                                              "CNN whose features synth_fd "
                                                                              "uses (0 = skip it).")] = 5,
                 seed: TrainSeed = 0) -> None:
    """Train the mode classifier and SynthNet (synth_fd's features) on SynthFlowers shards; reports their
    held-out accuracy (the mode oracle needs >= 99 %)."""
    from flowergan_eval.commands import run_oracle_train

    result = run_oracle_train(data, out=out, epochs=epochs, seed=seed, show_progress=progress, cnn_epochs=cnn_epochs)
    _emit(result, json)
    if not result["ok"]:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point (errors as in `flowergan`: one line, exit 2)."""
    from flowergan.console import run_app

    run_app(app, "flowergan-eval")


if __name__ == "__main__":
    main()
