"""TensorBoard as a tiny run leaves it, read back with TensorBoard's own EventAccumulator: every tag it writes is in
docs/training.md's table and every tag there (but the conditional `Eval/*`) is written; the resolved config is in
the TEXT tab and the recipe's hyperparameters with the final metrics in the HParams tab, in the run's own files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _core import TensorStream, tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from flowergan.train.loop import train

DOCS = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def documented() -> dict[str, str]:
    """tag (or `prefix/*`) -> tab, from the table under docs/training.md's TensorBoard heading."""
    table = DOCS.read_text().split("\n### TensorBoard\n", 1)[1].split("\n\n| tag |", 1)[1].split("\n\n", 1)[0]
    tags = {}
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for tag in re.findall(r"`([^`]+)`", cells[0]):
            tags[tag] = cells[1]
    return tags


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    # 64 images, batch 8: an epoch every 8 steps, so the epoch tags are written too.
    run = tmp_path_factory.mktemp("tb") / "run"
    train(tiny_config(run, "train.steps=16", "train.checkpoint_every=16"), stream=TensorStream())
    acc = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    return run, acc


def written(acc: EventAccumulator) -> dict[str, str]:
    """tag -> tab of everything in the run's event files."""
    tags = acc.Tags()
    out = {t: "scalars" for t in tags["scalars"]} | {t: "images" for t in tags["images"]}
    for tag in tags["tensors"]:  # text summaries are tensors named <tag>/text_summary
        out[tag.removesuffix("/text_summary")] = "text"
    out |= {tag: "hparams" for tag in acc.PluginTagToContent("hparams")}
    return out


def matches(tag: str, pattern: str) -> bool:
    return tag == pattern or (pattern.endswith("/*") and tag.startswith(pattern[:-1]))


def test_every_tag_written_is_documented_and_every_documented_tag_is_written(events):
    _, acc = events
    docs, tags = documented(), written(acc)
    undocumented = {t for t in tags if not any(matches(t, p) and tags[t] == docs[p] for p in docs)}
    assert not undocumented, f"tags a run writes that docs/training.md does not list (or lists under another tab): " \
                             f"{sorted(undocumented)}"
    missing = {p for p in docs if p != "Eval/*" and not any(matches(t, p) for t in tags)}
    assert not missing, f"documented but not written: {sorted(missing)}"
    assert {"epoch", "Progress/images_seen"} <= set(tags)


def test_config_is_in_the_text_tab_and_the_recipe_in_hparams(events):
    run, acc = events
    (text,) = acc.Tensors("config/text_summary")
    shown = text.tensor_proto.string_val[0].decode()
    assert [line.removeprefix("    ") for line in shown.splitlines()] == (run / "config.toml").read_text().splitlines()

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model.ngf"].number_value == 8 and start.hparams["train.diffaugment"].string_value == ""
    assert not any(k.startswith(("log.", "eval.", "cluster.")) for k in start.hparams)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"Loss/D", "Loss/G", "D/real", "Speed/img_per_s"} <= metrics and metrics <= set(acc.Tags()["scalars"])
    # In the run's own directory: one events file, no sub-run (SummaryWriter.add_hparams would make one).
    assert [p.name for p in (run / "tb").iterdir() if p.is_dir()] == []
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1


def test_every_sample_grid_is_in_the_files_and_the_docs_say_how_to_see_them(events):
    run, acc = events
    grids = sorted(p.name for p in (run / "samples").glob("ema-*.png"))
    assert [e.step for e in acc.Images("Samples/ema")] == [int(g[4:12]) for g in grids]
    assert "--samples_per_plugin images=0" in DOCS.read_text()
