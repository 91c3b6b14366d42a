"""k8s/: every manifest parses, validates against the real schemas (KubeRay CRDs, Kubernetes core kinds), keeps
the cluster rules (non-root, requests and limits, GPU toleration, secrets by reference), agrees with the
Dockerfile and the job files, and every flowergan command in it runs here with --dry-run."""

from __future__ import annotations

import copy
import functools
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
# The real KubeRay CRDs in ../shared beside the clone (as CI lays it out), or FLOWERGAN_SHARED.
CRDS = Path(os.environ.get("FLOWERGAN_SHARED", ROOT.parent / "shared")) / "schemas" / "kuberay"
BIN = Path(sys.executable).parent
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests promise to work on
GPU = "nvidia.com/gpu"
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 40k lines
SECRET_NAMES = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)", re.I)


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_manifests() -> dict[str, list[dict[str, Any]]]:
    return {p.name: load_docs(p) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"}


def objects(kind: str | None = None) -> list[dict[str, Any]]:
    return [d for docs in all_manifests().values() for d in docs if kind is None or d["kind"] == kind]


def rayjob(component: str = "train") -> dict[str, Any]:
    """The RayJob of one component: train (k8s/train.yaml) or tune (k8s/tune.yaml)."""
    (job,) = [j for j in objects("RayJob") if j["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    return job


def project_version() -> str:
    return pyproject()["project"]["version"]


def dockerfile_arg(name: str) -> str:
    m = re.search(rf"^ARG {name}=(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert m, f"Dockerfile has no ARG {name}=..."
    return m.group(1)


def dockerfile_uid() -> int:
    """The uid the image runs as: its last USER (an earlier one may be root for a build step)."""
    users = re.findall(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert users, "Dockerfile has no numeric USER"
    return int(users[-1])


def dockerfile_gid() -> int:
    """The gid the image runs as: the group of its last `USER uid:gid` (the base image's user ray: 1000:100)."""
    users = re.findall(r"^USER (\d+):(\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert users, "Dockerfile's last USER names no numeric uid:gid"
    return int(users[-1][1])


def dockerfile_workdir() -> str:
    m = re.search(r"^WORKDIR (\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert m
    return m.group(1)


# ---- where the pods are -------------------------------------------------------------------------------


def pod_specs(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, pod spec) for every pod an object creates."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind == "RayJob":
        rc = spec["rayClusterSpec"]
        out = [("head", rc["headGroupSpec"]["template"]["spec"])]
        out += [(f"worker group {g['groupName']}", g["template"]["spec"]) for g in rc.get("workerGroupSpecs", [])]
        if "submitterPodTemplate" in spec:
            out.append(("submitter", spec["submitterPodTemplate"]["spec"]))
        return out
    if kind == "RayCluster":
        return pod_specs({"kind": "RayJob", "spec": {"rayClusterSpec": spec}})
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return [(kind, spec["template"]["spec"])]
    if kind == "CronJob":
        return [(kind, spec["jobTemplate"]["spec"]["template"]["spec"])]
    return []


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod.get("initContainers", []) + pod["containers"]


# ---- the checks (also run against broken copies below, to show they can fail) --------------------------


def _strict(schema: Any) -> Any:
    """CRD schemas leave unknown fields to server-side pruning; reject them as `kubectl --validate=strict` does."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    crd = yaml.load((CRDS / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=FAST_LOADER)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


def check_schema(obj: dict[str, Any]) -> None:
    """RayJob/RayCluster against KubeRay's CRD; everything else with kubernetes-validate (offline schemas)."""
    if obj["apiVersion"] == "ray.io/v1":
        errors = sorted(crd_validator(obj["kind"]).iter_errors(obj), key=lambda e: list(e.path))
        assert not errors, "; ".join(f"{'.'.join(map(str, e.path))}: {e.message[:200]}" for e in errors[:5])
        # The embedded pod templates once more with Kubernetes' own PodTemplate schema.
        for _label, pod in pod_specs(obj):
            tmpl = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                    "template": {"spec": pod}}
            check_schema(tmpl)
        return
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']}: {e.message[:300]}") from None


def check_pod_rules(obj: dict[str, Any]) -> None:
    """Non-root without privilege escalation, requests and limits everywhere, secrets only by reference."""
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    for label, pod in pod_specs(obj):
        psc = pod.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, f"{name} {label}: pod securityContext.runAsNonRoot must be true"
        assert psc.get("runAsUser") == dockerfile_uid(), f"{name} {label}: runAsUser must be the image's USER"
        assert psc.get("runAsGroup") == dockerfile_gid(), f"{name} {label}: runAsGroup must be the image's group"
        if label != "submitter":  # the pods that write the shared volume
            assert psc.get("fsGroup") == dockerfile_gid(), f"{name} {label}: fsGroup must be the image's group"
        for c in containers(pod):
            where = f"{name} {label} container {c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation must be false"
            assert not sc.get("privileged"), f"{where}: privileged"
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{where}: capabilities must drop ALL"
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(res.get(part, {}))
                assert not missing, f"{where}: resources.{part} lacks {sorted(missing)}"
            for env in c.get("env", []):
                if SECRET_NAMES.search(env["name"]):
                    assert "value" not in env, f"{where}: {env['name']} is inline; use valueFrom.secretKeyRef"


def check_no_inline_secrets(obj: dict[str, Any]) -> None:
    assert obj["kind"] != "Secret", f"Secret/{obj['metadata']['name']} is committed with its data; reference it"


DELETION_ORDER = ("DeleteWorkers", "DeleteCluster", "DeleteSelf")  # KubeRay: TTLs must not decrease along it


def check_deletion_rules(spec: dict[str, Any]) -> None:
    """The operator's own rules for deletionStrategy (CEL and controller validation, which a JSON schema check
    does not run), and ours: GPU workers are deleted the moment the job ends, whether it succeeds or fails."""
    assert "shutdownAfterJobFinishes" not in spec and "ttlSecondsAfterFinished" not in spec, \
        "shutdownAfterJobFinishes/ttlSecondsAfterFinished and deletionRules are mutually exclusive"
    strategy = spec.get("deletionStrategy", {})
    assert not {"onSuccess", "onFailure"} & set(strategy), "the legacy onSuccess/onFailure policies are deprecated"
    rules = strategy.get("deletionRules", [])
    assert rules, "deletionStrategy.deletionRules must say when the cluster is deleted"
    by_condition: dict[str, dict[str, int]] = {}
    for rule in rules:
        cond = rule["condition"]
        keys = {"jobStatus", "jobDeploymentStatus"} & set(cond)
        assert len(keys) == 1, f"{rule}: a condition names exactly one of jobStatus, jobDeploymentStatus"
        (key,) = keys
        ttls = by_condition.setdefault(f"{key}={cond[key]}", {})
        assert rule["policy"] not in ttls, f"{rule}: two rules for {rule['policy']} on {key}={cond[key]}"
        ttls[rule["policy"]] = cond.get("ttlSeconds", 0)
    for condition, ttls in by_condition.items():
        order = [ttls[p] for p in DELETION_ORDER if p in ttls]
        assert order == sorted(order), f"{condition}: TTLs must not decrease along {DELETION_ORDER}: {ttls}"
    for condition in ("jobStatus=SUCCEEDED", "jobDeploymentStatus=Failed"):
        ttls = by_condition.get(condition, {})
        gone = [ttls[p] for p in ("DeleteWorkers", "DeleteCluster", "DeleteSelf") if p in ttls]
        assert gone and min(gone) == 0, f"{condition}: the GPU workers must be deleted at once (ttlSeconds 0)"


def check_rayjob(job: dict[str, Any]) -> None:
    """The RayJob's cluster rules: retries, cleanup, GPU workers that fit the entrypoint, shared memory."""
    spec = job["spec"]
    assert spec.get("backoffLimit", 0) >= 1, "backoffLimit must be >= 1 so a failed job is retried (and resumes)"
    check_deletion_rules(spec)
    rc = spec["rayClusterSpec"]
    assert rc["rayVersion"] == dockerfile_arg("RAY_VERSION"), "rayVersion differs from the Dockerfile's RAY_VERSION"
    assert rc.get("authOptions", {}).get("mode") == "token", "the head must require a token (authOptions.mode)"
    head = rc["headGroupSpec"]["template"]["spec"]
    assert all(GPU not in c.get("resources", {}).get("limits", {}) for c in containers(head)), "head has a GPU"
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] in (["flowergan", "train"], ["flowergan", "tune"]), "entrypoint: flowergan train or tune"
    assert argv[1] == "tune" or "--ray" in argv, "the train entrypoint must run on Ray (--ray)"
    opts = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--") and argv[i] != "--ray"}
    gpus_per_worker = float(opts["--gpus-per-worker"])
    assert gpus_per_worker > 0, "--gpus-per-worker must be > 0 on the GPU cluster"
    gpu_slots = 0.0
    for g in rc["workerGroupSpecs"]:
        pod = g["template"]["spec"]
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"group {g['groupName']}: replicas out of range"
        (c,) = [c for c in pod["containers"] if c["name"] == "ray-worker"] or pod["containers"][:1]
        gpus = float(c["resources"]["limits"].get(GPU, 0))
        assert gpus > 0, f"worker group {g['groupName']}: no {GPU} limit"
        assert float(c["resources"]["requests"].get(GPU, gpus)) == gpus, f"{GPU} request differs from its limit"
        assert any(t.get("key") == GPU and t.get("effect") == "NoSchedule" for t in pod.get("tolerations", [])), \
            f"worker group {g['groupName']}: no toleration for the {GPU} taint"
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        shm = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
        assert shm and vols[shm[0]["name"]].get("emptyDir", {}).get("medium") == "Memory", \
            f"worker group {g['groupName']}: /dev/shm must be a memory emptyDir"
        workers_in_pod = gpus / gpus_per_worker
        assert float(opts["--cpus-per-worker"]) * workers_in_pod <= _cpus(c["resources"]["limits"]["cpu"]), \
            f"{workers_in_pod:g} workers x --cpus-per-worker do not fit the worker pod's CPU limit"
        gpu_slots += g["replicas"] * gpus
    per_run = int(opts["--workers"]) * gpus_per_worker
    if argv[1] == "train":
        assert per_run == gpu_slots, \
            f"--workers {opts['--workers']} x --gpus-per-worker {gpus_per_worker} != {gpu_slots} GPUs of the workers"
    else:  # a sweep: --max-concurrent trials of --workers x --gpus-per-worker each fill the GPUs
        assert per_run * int(opts["--max-concurrent"]) == gpu_slots, \
            f"--max-concurrent x --workers x --gpus-per-worker != {gpu_slots} GPUs in the worker groups"
        assert "--auto-resume" in argv, "a retried sweep must resume (--auto-resume), not refuse its own sweep dir"
    check_deadlines(spec)


def check_deadlines(spec: dict[str, Any]) -> None:
    """A job that never schedules gives its GPUs back; a running one ends: both deadlines, the first shorter."""
    pre, active = spec.get("preRunningDeadlineSeconds"), spec.get("activeDeadlineSeconds")
    assert isinstance(pre, int) and pre > 0, "preRunningDeadlineSeconds: a job that never starts must not wait forever"
    assert isinstance(active, int) and active > pre, "activeDeadlineSeconds must be set and exceed the pre-running one"


def _cpus(q: str | int) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


MANIFEST_CHECKS = [check_schema, check_pod_rules, check_no_inline_secrets]


# ---- tests ----------------------------------------------------------------------------------------------


def test_every_manifest_parses_and_is_listed() -> None:
    found = all_manifests()
    assert {"train.yaml", "tune.yaml", "tensorboard.yaml", "eval.yaml", "shard.yaml", "storage.yaml"} <= set(found)
    for name, docs in found.items():
        assert docs, f"{name} is empty"
        for d in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(d), f"{name}: an object lacks apiVersion/kind/metadata"
            assert d["metadata"].get("name"), f"{name}: an object has no name"
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for res in kust["resources"]:
        assert (K8S / res).is_file(), f"kustomization.yaml lists {res}, which does not exist"


@pytest.mark.parametrize("obj", objects(), ids=lambda o: f"{o['kind']}-{o['metadata']['name']}")
@pytest.mark.parametrize("check", MANIFEST_CHECKS, ids=lambda c: c.__name__)
def test_manifest(obj: dict[str, Any], check) -> None:
    check(obj)


RAYJOBS = ["train", "tune"]


@pytest.mark.parametrize("component", RAYJOBS)
def test_rayjob_cluster_rules(component: str) -> None:
    check_rayjob(rayjob(component))


@pytest.mark.parametrize("component", RAYJOBS)
def test_kueue_label_is_offered_and_valid(component: str) -> None:
    """Both RayJobs carry the Kueue queue label as a ready comment; uncommented it is a valid RayJob label."""
    text = (K8S / f"{component}.yaml").read_text()
    m = re.search(r"^ {4}# (kueue\.x-k8s\.io/queue-name): (\S+)$", text, re.M)
    assert m, f"{component}.yaml: no commented `kueue.x-k8s.io/queue-name: QUEUE` label under metadata.labels"
    job = copy.deepcopy(rayjob(component))
    job["metadata"]["labels"][m.group(1)] = m.group(2)
    check_schema(job)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", m.group(2)), "the queue name must be a DNS label"


def _break_replicas(job):
    g = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    g["replica"] = g.pop("replicas")  # a typo the API server would silently prune


def _break_type(job):
    job["spec"]["backoffLimit"] = "two"


def _drop_limits(job):
    del job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]


def _inline_secret(job):
    c = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    c["env"] = [{"name": "AWS_SECRET_ACCESS_KEY", "value": "hunter2"}]


def _root(job):
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] = False


def _no_toleration(job):
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["tolerations"] = []


def _more_workers(job):
    job["spec"]["entrypoint"] = job["spec"]["entrypoint"].replace("--workers ", "--workers 1")


def _keep_workers(job):
    for rule in job["spec"]["deletionStrategy"]["deletionRules"]:
        rule["condition"]["ttlSeconds"] = 3600  # idle GPUs for an hour after every job


def _shutdown_too(job):
    job["spec"]["shutdownAfterJobFinishes"] = True  # the operator rejects it next to deletionRules


def _cluster_before_workers(job):
    rules = job["spec"]["deletionStrategy"]["deletionRules"]
    rules.append({"policy": "DeleteWorkers", "condition": {"jobStatus": "SUCCEEDED", "ttlSeconds": 60}})


def _cpus_per_worker(job):
    job["spec"]["entrypoint"] = job["spec"]["entrypoint"].replace("--cpus-per-worker 6", "--cpus-per-worker 10")


def _ray_version(job):
    job["spec"]["rayClusterSpec"]["rayVersion"] = "2.9.0"


def _no_auth(job):
    del job["spec"]["rayClusterSpec"]["authOptions"]


def _no_deadline(job):
    del job["spec"]["preRunningDeadlineSeconds"]


def _group_1000(job):
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["securityContext"]["fsGroup"] = 1000


@pytest.mark.parametrize("breakage, check", [
    (_break_replicas, check_schema), (_break_type, check_schema), (_drop_limits, check_pod_rules),
    (_inline_secret, check_pod_rules), (_root, check_pod_rules), (_no_toleration, check_rayjob),
    (_more_workers, check_rayjob), (_ray_version, check_rayjob), (_no_auth, check_rayjob),
    (_keep_workers, check_rayjob), (_shutdown_too, check_rayjob), (_cluster_before_workers, check_rayjob),
    (_cpus_per_worker, check_rayjob), (_no_deadline, check_rayjob), (_group_1000, check_pod_rules),
], ids=lambda x: getattr(x, "__name__", ""))
def test_checks_catch_a_broken_rayjob(breakage, check) -> None:
    job = copy.deepcopy(rayjob())
    check(job)  # the real one passes ...
    breakage(job)
    with pytest.raises(AssertionError):  # ... and the broken copy does not
        check(job)


def test_core_schema_check_catches_a_typo() -> None:
    (dep,) = objects("Deployment")
    broken = copy.deepcopy(dep)
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    broken["spec"]["replica"] = 1
    with pytest.raises(AssertionError):
        check_schema(broken)


def test_images_and_ray_versions_agree() -> None:
    """One image everywhere, tagged with the package version; the kustomization maps that same name."""
    version = project_version()
    images = {c["image"] for o in objects() for _, pod in pod_specs(o) for c in containers(pod)}
    assert len(images) == 1, f"manifests use several images: {sorted(images)}"
    (image,) = images
    repo, tag = image.rsplit(":", 1)
    assert tag == version, f"image tag {tag} != package version {version}"
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (entry,) = kust["images"]
    assert entry["name"] == repo and str(entry["newTag"]) == version
    assert re.search(rf'org\.opencontainers\.image\.version="{re.escape(version)}"',
                     (ROOT / "Dockerfile").read_text()), "Dockerfile's version label differs from pyproject"
    assert f"docker build -t {image} ." in (ROOT / "Dockerfile").read_text(), "Dockerfile's build line differs"
    ray_versions = {o["spec"].get("rayClusterSpec", o["spec"]).get("rayVersion") for o in objects()
                    if o["apiVersion"] == "ray.io/v1"}
    assert ray_versions == {dockerfile_arg("RAY_VERSION")}


def test_every_pod_mounts_the_shared_volume() -> None:
    (pvc,) = objects("PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "head, workers and TensorBoard share the volume: RWX"
    for o in objects():
        for label, pod in pod_specs(o):
            if label == "submitter":
                continue  # it only talks to the dashboard
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", [])
                      if "persistentVolumeClaim" in v}
            assert pvc["metadata"]["name"] in claims.values(), f"{o['metadata']['name']} {label}: no data volume"
            mounts = {m["mountPath"] for c in containers(pod) for m in c.get("volumeMounts", [])
                      if claims.get(m["name"]) == pvc["metadata"]["name"]}
            assert "/data" in mounts, f"{o['metadata']['name']} {label}: the volume is not at /data"


# ---- the commands in the manifests run here --------------------------------------------------------------


def manifest_commands() -> list[tuple[str, list[str]]]:
    """Every command a manifest runs: the RayJob entrypoint and each container's command + args."""
    out = []
    for o in objects():
        if o["kind"] == "RayJob":
            out.append((f"RayJob/{o['metadata']['name']}", shlex.split(o["spec"]["entrypoint"])))
        for _label, pod in pod_specs(o):
            for c in containers(pod):
                argv = list(c.get("command", [])) + list(c.get("args", []))
                if argv:
                    out.append((f"{o['kind']}/{o['metadata']['name']} {c['name']}", argv))
    return out


def _in_repo(argv: list[str]) -> list[str]:
    """The image's WORKDIR holds the repository's files (COPY jobs ./jobs): map it to this checkout."""
    app = dockerfile_workdir().rstrip("/") + "/"
    return [str(ROOT) + "/" + a[len(app):] if a.startswith(app) else a for a in argv]


FLOWERGAN_COMMANDS = [(w, a) for w, a in manifest_commands() if Path(a[0]).name in ("flowergan", "flowergan-eval")]


def test_manifests_run_flowergan_commands() -> None:
    kinds = {w.split("/")[0] for w, _ in FLOWERGAN_COMMANDS}
    assert {"RayJob", "Job"} <= kinds, f"expected the RayJob and the Jobs to run flowergan commands, got {kinds}"


def _help(exe: Path, args: list[str]) -> str:
    """--help of the (sub)command that `args` names (its leading words that are not options)."""
    words = []
    for a in args:
        if a.startswith("-") or "/" in a:
            break
        words.append(a)
    proc = subprocess.run([str(exe), *words, "--help"], capture_output=True, text=True, timeout=120)
    return proc.stdout


def _parse_only(argv: list[str]) -> None:
    """Parse `argv` with the CLI's own click command without running it: unknown options, missing arguments and
    bad values fail here exactly as they would in the pod."""
    import importlib

    import typer.main

    target = pyproject()["project"]["scripts"][Path(argv[0]).name]
    module = importlib.import_module(target.split(":")[0])
    if hasattr(module, "_register"):
        module._register()  # the sub-command modules register themselves on import
    cmd = typer.main.get_command(module.app)  # typer ships its own click: duck-type, do not import click
    args = list(argv[1:])
    while hasattr(cmd, "get_command"):  # a group: descend by name
        sub = cmd.get_command(cmd.context_class(cmd, info_name=argv[0]), args[0])
        assert sub is not None, f"{argv[0]} has no command {args[0]!r}"
        cmd, args = sub, args[1:]
    try:
        cmd.make_context(argv[0], args)
    except Exception as e:
        if not hasattr(e, "format_message"):  # not a usage error: a real failure
            raise
        raise AssertionError(f"{' '.join(argv)}: {e.format_message()}") from None


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize("where, argv", FLOWERGAN_COMMANDS, ids=[w for w, _ in FLOWERGAN_COMMANDS])
def test_command_runs_with_dry_run(where: str, argv: list[str]) -> None:
    """Parses with its own CLI and runs with --dry-run (every command in the manifests has one)."""
    exe = BIN / Path(argv[0]).name
    assert exe.exists(), f"{where}: console script {argv[0]} is not installed"
    args = _in_repo(argv[1:])
    assert "--dry-run" in _help(exe, args), f"{where}: `{' '.join(argv[:3])}` has no --dry-run"
    _parse_only([argv[0], *args])
    proc = subprocess.run([str(exe), *args, "--dry-run"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, f"{where}: {' '.join(argv)} --dry-run failed:\n{proc.stdout}\n{proc.stderr}"


def test_parse_only_catches_a_bad_option() -> None:
    with pytest.raises(AssertionError, match="no-such-option"):
        _parse_only(["flowergan", "data", "shard", "/data/images", "--out", "/x", "--no-such-option", "1"])
    with pytest.raises(AssertionError):
        _parse_only(["flowergan", "data", "shard", "/data/images", "--size", "sixty-four"])


def test_train_entrypoint_resolves_to_the_cluster_paths() -> None:
    """The RayJob's resolved config: workers and GPUs as the cluster provides, data and storage on the volume."""
    job = rayjob()
    argv = _in_repo(shlex.split(job["spec"]["entrypoint"]))
    proc = subprocess.run([str(BIN / "flowergan"), *argv[1:], "--dry-run"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    cfg = tomllib.loads(proc.stdout[proc.stdout.index("[data]"):])
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sum(g["replicas"] * float(g["template"]["spec"]["containers"][0]["resources"]["limits"][GPU])
               for g in groups)
    assert cfg["cluster"]["gpus_per_worker"] >= 1
    workers = cfg["cluster"]["workers"]
    assert workers * cfg["cluster"]["gpus_per_worker"] == gpus
    assert cfg["train"]["batch_size"] % workers == 0
    assert cfg["cluster"]["name"], "a fixed run name is what lets a relaunched job resume"
    for key in (cfg["log"]["run_dir"], cfg["data"]["path"], cfg["cluster"]["storage_path"]):
        assert key.startswith("/data/") or "://" in key, f"{key} is not on the shared volume or object storage"


def test_default_layout_is_one_pod_with_every_gpu() -> None:
    """The Ray Train workers share one pod (one container), so NCCL goes GPU to GPU instead of through the pod
    network; several GPUs in it, and at least two ranks to all-reduce between."""
    job = rayjob()
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 1
    (c,) = group["template"]["spec"]["containers"]
    gpus = int(c["resources"]["limits"][GPU])
    argv = shlex.split(job["spec"]["entrypoint"])
    workers = int(argv[argv.index("--workers") + 1])
    assert gpus >= 2 and workers == gpus and float(argv[argv.index("--gpus-per-worker") + 1]) == 1


def test_minimum_kuberay_version_is_stated_alike() -> None:
    """train.yaml's header and docs/cluster.md name the same minimum KubeRay version, the one deletionRules need."""
    m = re.search(r"^# Requires KubeRay (v\d+\.\d+\.\d+) or newer", (K8S / "train.yaml").read_text(), re.M)
    assert m, "train.yaml does not state the minimum KubeRay version"
    assert m.group(1) == "v1.6.0", "deletionRules (on by default) and the jobDeploymentStatus condition: v1.6.0"
    readme = (ROOT / "docs" / "cluster.md").read_text()
    assert f"KubeRay operator **{m.group(1)} or newer**" in readme, "docs/cluster.md states another minimum version"
    assert "kubectl delete rayjob flowergan-flowers64 --ignore-not-found && kubectl apply -f k8s/train.yaml" in readme


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensorboard_command_serves(tmp_path: Path) -> None:
    """The Deployment's exact command starts a TensorBoard that answers HTTP (with host/port made local)."""
    (argv,) = [a for w, a in manifest_commands() if a and a[0] == "tensorboard"]
    argv = list(argv)
    port = _free_port()
    argv[argv.index("--logdir") + 1] = str(tmp_path)
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = str(port)
    exe = BIN / "tensorboard" if (BIN / "tensorboard").exists() else shutil.which("tensorboard")
    proc = subprocess.Popen([str(exe), *argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"tensorboard exited: {proc.stdout.read().decode()[-2000:]}")
                if time.time() > deadline:
                    pytest.fail("tensorboard did not answer within 90 s")
                time.sleep(1)
    finally:
        proc.kill()
        proc.wait()


def test_tune_entrypoint_resolves_to_the_cluster_paths() -> None:
    """The sweep RayJob: its space parses against its config, and the sweep dir and data are on the volume."""
    argv = _in_repo(shlex.split(rayjob("tune")["spec"]["entrypoint"]))
    proc = subprocess.run([str(BIN / "flowergan"), *argv[1:], "--dry-run"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "# 4 trial(s): train.batch_size grid [64, 128]; model.d_head grid ['conv', 'dense']" in proc.stdout
    cfg = tomllib.loads(proc.stdout[proc.stdout.index("[data]"):proc.stdout.index("# 4 trial")])
    assert cfg["eval"]["every"] > 0, "ASHA needs the in-training metric"
    assert cfg["data"]["path"].startswith("/data/") and cfg["cluster"]["storage_path"].startswith("/data/")
    assert argv[argv.index("--out") + 1].startswith("/data/")
