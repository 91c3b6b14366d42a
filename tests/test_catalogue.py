"""One metric catalogue (flowergan/catalogue.py): config, the model card, the eval registry and the eval CLI read
it, and none of them knows a metric it does not."""

from __future__ import annotations

from flowergan import catalogue
from flowergan.catalogue import MEASURES, METRICS


def test_config_offers_exactly_the_catalogue() -> None:
    from flowergan.config import EVAL_METRICS, EvalConfig

    assert EVAL_METRICS == tuple(METRICS)
    assert EvalConfig().metric in METRICS


def test_the_eval_registry_adds_only_compute_functions() -> None:
    from flowergan_eval import metrics as M

    assert list(M.COMPUTE) == list(METRICS), "a compute function without a catalogue entry, or the reverse"
    assert list(M.REGISTRY) == list(METRICS)
    for name, entry in M.REGISTRY.items():
        assert entry.facts is METRICS[name] and entry.compute is M.COMPUTE[name]
        assert (entry.name, entry.doc, entry.lower_is_better, entry.features, entry.headline) == (
            name, METRICS[name].doc, METRICS[name].lower_is_better, METRICS[name].features, METRICS[name].headline)


def test_the_model_card_reads_every_catalogue_metric_and_no_other() -> None:
    from flowergan.export import card

    for name, facts in METRICS.items():
        for key in (f"{name}1k", f"{name}500", f"{name}10k/std"):
            m = card.SCORE.match(key)
            assert m is not None and m.group(1) == name, key
        if facts.features != "inception":
            assert card.EXTRACTORS[name] == catalogue.EXTRACTORS[facts.features]
    assert set(card.EXTRACTORS) <= set(METRICS)
    assert card.SCORE.match("lpips1k") is None and card.SCORE.match("Loss/D") is None
    assert card.INCEPTION == catalogue.EXTRACTORS["inception"]


def test_the_eval_cli_has_a_command_and_notes_for_every_metric_and_knows_no_other() -> None:
    from flowergan_eval import cli, commands

    names = {c.name or c.callback.__name__ for c in cli.app.registered_commands if c.callback is not None}
    # One command per metric; the oracle's two (modes, modes_kl) share `modes`.
    wanted = {name for name, f in METRICS.items() if f.features != "oracle"} | {"modes"}
    assert wanted <= names, wanted - names
    for key in commands.NOTES:
        base = key.split("/")[0]
        assert base in METRICS or base in MEASURES, f"commands.NOTES knows {key!r}, which the catalogue does not"
    for name, facts in METRICS.items():
        assert commands.NOTES[name] == facts.doc
        assert all(commands.NOTES[name + sub] == text for sub, text in facts.notes.items())
    # Every metric that picks a checkpoint by a sub-result says what that sub-result means.
    assert all(f.headline in f.notes for f in METRICS.values() if f.headline)


def test_every_extractor_a_metric_names_is_described() -> None:
    assert {f.features for f in METRICS.values()} <= set(catalogue.EXTRACTORS)
