"""The README fits a screen or two and links one page per topic; every relative link in README and docs resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def test_readme_is_short_and_links_every_topic_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for topic in ("data", "training", "cluster", "sweeps", "metrics", "quality", "benchmarks"):
        assert f"(docs/{topic}.md)" in text, topic


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: {target} does not exist"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page.name}: no heading #{anchor} in {dest.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_source_path_a_page_names_exists(page: Path):
    """Moved modules leave no stale path behind in the docs (`flowergan/train/gan/step.py`, say)."""
    named = set(re.findall(r"(?<![\w/])((?:flowergan|eval/flowergan_eval|benchmarks|tests)/[\w/]*\w\.py)\b",
                           page.read_text()))
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"{page.name} names files that do not exist: {missing}"


def test_job_files_point_at_pages_and_sections_that_exist():
    """A comment such as `(docs/quality.md)` or `(README, Quality)` in a job file or manifest names a real page
    and, for the README, one of its headings (a section renamed once left every job file pointing nowhere)."""
    headings = set(re.findall(r"^#+ (.*)$", (ROOT / "README.md").read_text(), flags=re.M))
    files = [*sorted((ROOT / "jobs").rglob("*.toml")), *sorted((ROOT / "k8s").glob("*.yaml"))]
    pointers = 0
    for f in files:
        text = f.read_text()
        for page in re.findall(r"\b(docs/[\w-]+\.md)\b", text):
            assert (ROOT / page).is_file(), f"{f.name}: {page} does not exist"
            pointers += 1
        for section in re.findall(r"\(README, ([^)]+)\)", text):
            assert section in headings, f"{f.name}: the README has no section {section!r}"
            pointers += 1
    assert pointers  # the job files do point somewhere


def test_cluster_docs_and_flowergan_config_say_where_ray_storage_defaults_to(tmp_path):
    """Both say `<run dir>/<cluster.name>/`, and that is where the launcher looks."""
    pytest.importorskip("ray")
    from flowergan.config import describe, load_config
    from flowergan.train.launch.ray_train import resolve_paths

    where = "<run dir>/<cluster.name>/"
    assert where in (ROOT / "docs" / "cluster.md").read_text()
    assert where in next(line for line in describe().splitlines() if line.strip().startswith("storage_path ="))
    cfg = resolve_paths(load_config(ROOT / "jobs" / "smoke.toml", [f"log.run_dir={tmp_path / 'run'}"]))
    assert (cfg.cluster.storage_path, cfg.cluster.name) == (str(tmp_path / "run"), "smoke")
