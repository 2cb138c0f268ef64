"""The cluster configs in cluster/ are deployable as written and as rendered: each file validates against the schema
the tool that reads it uses (ray-schema.json and Ray's prepare_config/validate_config for the cluster launcher,
ServeDeploySchema for Serve, KubeRay 1.7.0's CRD schemas, the job's own JobConfig), and the files agree with each
other and with the repo's locks: one image set by cluster/render.py, hash-locked image packages at the dev lock's
versions, the installed Ray, GPU and CPU counts that fit the deployments and actors scheduled on them, sizing from
the engine's memory plan for the GPU requested, distinct KubeRay names.

Fast (no network, no Docker, no cluster): ~20 s of parsing, schema checks and small shell runs. The cloud CLIs,
docker and nvidia-smi are replaced by shell stand-ins where a command runs (said at each test)."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
IMAGE_DIR = CLUSTER / "image"
DOCKERFILE = IMAGE_DIR / "Dockerfile"
SERVE_CONFIG = CLUSTER / "serve.yaml"
LAUNCHERS = sorted((CLUSTER / "launcher").glob("*.yaml"))
KUBERAY = {
    "RayCluster": CLUSTER / "kuberay" / "raycluster.yaml",
    "RayJob": CLUSTER / "kuberay" / "rayjob.yaml",
    "RayService": CLUSTER / "kuberay" / "rayservice.yaml",
}
GPU = "nvidia.com/gpu"

CRDS = REPO / "tests" / "fixtures" / "kuberay-crds"  # tools/refresh_kuberay_crds.py writes them
CRD_FILES = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}
LOCKS = {variant: IMAGE_DIR / f"requirements-{variant}.lock" for variant in ("gpu", "cpu")}
PLACEHOLDER = "RAYTTS_IMAGE"
SAMPLE_IMAGE = "123456789012.dkr.ecr.us-west-2.amazonaws.com/raytts:0.1.0@sha256:" + "ab" * 32
# torch's CUDA build pulls these in (the GPU lock only)
CUDA_ONLY = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")


# --------------------------------------------------------------------------------------------------------------
# helpers


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _kuberay(kind: str) -> dict[str, Any]:
    return _load(KUBERAY[kind])


def _cluster_spec(kind: str) -> dict[str, Any]:
    """The RayCluster spec of a manifest: the spec itself, or the one a RayJob/RayService creates."""
    spec = _kuberay(kind)["spec"]
    return {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"), "RayService": spec.get("rayClusterConfig")}[kind]


def _groups(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def _ray_container(group: dict[str, Any]) -> dict[str, Any]:
    containers = group["template"]["spec"]["containers"]
    return containers[0]  # KubeRay runs Ray in the first container


_QUANTITY = re.compile(r"^([0-9.]+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_UNITS = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def _quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity ("7", "500m", "26Gi") as a number (cores, bytes, devices)."""
    match = _QUANTITY.match(str(value))
    assert match, f"{value!r} is not a Kubernetes quantity this test understands"
    return float(match.group(1)) * _UNITS[match.group(2)]


def _serve() -> dict[str, Any]:
    return _load(SERVE_CONFIG)


def _tts_deployment(config: dict[str, Any]) -> dict[str, Any]:
    (app,) = [a for a in config["applications"] if a["name"] == "raytts"]
    (deployment,) = [d for d in app["deployments"] if d["name"] == "TTSServer"]
    return deployment


def _lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """A `uv pip compile --generate-hashes` lock as {normalised name: (version, [sha256 hashes])}; every requirement
    must be an exact pin followed by its hashes."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})*)", line)
        assert match, f"{path.name}: {line[:80]!r} is not NAME==VERSION --hash=sha256:..."
        hashes = re.findall(r"sha256:([0-9a-f]{64})", match.group(3))
        entries[_normalise(match.group(1))] = (match.group(2), hashes)
    return entries


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, f"{DOCKERFILE}: no `ARG {name}=...` default"
    return match.group(1)


def _build_command(*args: str) -> list[str]:
    """The docker build command build.sh would run (its --dry-run output)."""
    result = subprocess.run(
        ["bash", str(IMAGE_DIR / "build.sh"), "--dry-run", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    build = [shlex.split(line) for line in result.stdout.splitlines() if line.startswith("docker build ")]
    assert len(build) == 1, result.stdout
    return build[0]


def _option(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == flag]


def _images(node: Any) -> list[str]:
    """Every `image:` value in a parsed config (any depth)."""
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k == "image" and isinstance(v, str)]
        return found + [i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cluster/render.py's output for SAMPLE_IMAGE (an ECR reference by digest)."""
    out = tmp_path_factory.mktemp("rendered")
    result = subprocess.run([sys.executable, str(CLUSTER / "render.py"), "--image", SAMPLE_IMAGE, "--output", str(out)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


# --------------------------------------------------------------------------------------------------------------
# the image


def test_image_locks_pin_every_dependency_raytts_declares_with_hashes():
    """Each image lock pins, with at least one sha256 each, every dependency pyproject.toml declares for the image
    (the base list and the `onnx` extra, extras of dependencies included) at a version its specifier admits. The
    check reads only files of the repo, so a PyPI release cannot turn it red."""
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["onnx"]]
    for path in LOCKS.values():
        lock = _lock(path)
        assert lock, path
        unhashed = [name for name, (_, hashes) in lock.items() if not hashes]
        assert not unhashed, f"{path.name}: no hash for {unhashed}"
        for requirement in declared:
            name = _normalise(requirement.name)
            assert name in lock, f"{path.name} does not pin {requirement} (pyproject.toml); run make lock"
            assert requirement.specifier.contains(lock[name][0], prereleases=True), (
                f"{path.name}: {name}=={lock[name][0]} does not satisfy {requirement}; run make lock"
            )
        assert "raytts" not in lock, f"{path.name} pins raytts itself (it is installed from /app)"
        assert "setuptools" in lock, f"{path.name}: raytts is built with --no-build-isolation: pin setuptools"


def test_image_locks_hold_the_versions_of_the_dev_lock():
    """The image runs what the tests ran: every package both the dev lock and an image lock pin has one version
    (torch's +cpu label aside), and constraints.txt's torch is the image's."""
    from tools.check_lock import lock_pins

    dev = {_normalise(name): version for name, version in lock_pins().items()}
    torch = re.search(r"^torch==(\S+)$", (REPO / "constraints.txt").read_text(), re.MULTILINE)
    for path in LOCKS.values():
        lock = _lock(path)
        wrong = {
            name: (version, dev[name])
            for name, (version, _) in lock.items()
            if name in dev and version.split("+", 1)[0] != dev[name]
        }
        assert not wrong, f"{path.name} != requirements-dev.lock (image, dev): {wrong}; run make lock"
        assert torch and lock["torch"][0].split("+", 1)[0] == torch.group(1), f"{path.name}: torch != constraints.txt"


def test_image_locks_differ_only_in_torchs_build():
    """gpu: PyPI's torch (the CUDA build) and its CUDA wheels; cpu: torch+cpu and nothing CUDA. Everything else is
    the same package at the same version."""
    gpu, cpu = _lock(LOCKS["gpu"]), _lock(LOCKS["cpu"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", gpu["torch"][0]), f"gpu lock torch {gpu['torch'][0]}: expected PyPI's build"
    assert cpu["torch"][0].endswith("+cpu"), f"cpu lock torch {cpu['torch'][0]}: expected the +cpu build"
    cuda = set(gpu) - set(cpu)
    assert cuda and all(CUDA_ONLY.match(name) for name in cuda), f"only in the gpu lock: {sorted(cuda)}"
    assert "nvidia-cuda-runtime" in cuda, "the gpu lock names the CUDA runtime check_pins compares torch with"
    assert set(cpu) <= set(gpu), f"only in the cpu lock: {sorted(set(cpu) - set(gpu))}"
    assert {n: v for n, (v, _) in cpu.items() if n != "torch"} == {
        n: v for n, (v, _) in gpu.items() if n in cpu and n != "torch"
    }


def test_image_locks_are_closed_under_raytts_requirements():
    """Nothing the image needs is left for pip to pick: walking raytts[onnx]'s requirements (and their extras)
    through the dev venv's installed metadata, with markers evaluated for the image (Linux x86-64, CPython 3.11),
    reaches only packages both locks pin. (pip's --require-hashes also refuses an unpinned one at build time.)"""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement

    env = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "python_version": "3.11", "python_full_version": "3.11.7", "implementation_name": "cpython",
           "platform_python_implementation": "CPython"}  # fmt: skip
    locks = {variant: _lock(path) for variant, path in LOCKS.items()}
    todo, seen, missing = [("raytts", ""), ("raytts", "onnx")], set(), []
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        if name == "torch":
            continue  # the dev venv holds the CPU build, whose requirements are not the CUDA build's
        for text in distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({**env, "extra": extra}):
                continue
            if requirement.marker is None and extra:
                continue
            dep = _normalise(requirement.name)
            missing += [f"{variant}: {name} needs {requirement}" for variant, lock in locks.items() if dep not in lock]
            todo += [(dep, e) for e in ("", *sorted(requirement.extras))]
    assert len(seen) > 50, "the walk reached too little to mean anything"
    assert not missing, missing


def test_check_pins_names_each_package_that_differs_from_the_lock(tmp_path):
    """cluster/image/check_pins.py (run inside the image build) passes on the packages installed here and fails
    naming a changed version and a torch of the wrong build."""
    dev = (REPO / "requirements-dev.lock").read_text()
    lock = _lock(LOCKS["cpu"])
    installed = {name: version for name, (version, _) in lock.items() if f"\n{name}==" in "\n" + dev.lower()}
    good = tmp_path / "good.lock"
    good.write_text(
        "".join(f"{name}=={version} \\\n    --hash=sha256:{'0' * 64}\n" for name, version in installed.items())
    )
    script = [sys.executable, str(IMAGE_DIR / "check_pins.py")]
    ok = subprocess.run([*script, str(good), "cpu"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert f"{len(installed)} locked packages" in ok.stdout
    bad = tmp_path / "bad.lock"
    bad.write_text(good.read_text().replace(f"pyyaml=={installed['pyyaml']}", "pyyaml==1.0"))
    for lock_file, variant, expected in ((bad, "cpu", "pyyaml: locked 1.0, installed"),
                                         (good, "gpu", "the gpu lock pins no nvidia-cuda-runtime")):  # fmt: skip
        failed = subprocess.run([*script, str(lock_file), variant], capture_output=True, text=True, timeout=120)
        assert failed.returncode == 1 and expected in failed.stderr, failed.stderr


def test_dev_lock_is_what_the_venv_has_and_misses_nothing():
    """requirements-dev.lock is complete (raytts[test] and every extra it asks for, walked through the installed
    metadata) and the venv holds exactly its versions: tools/check_lock.py, as `make venv` runs it."""
    from tools.check_lock import lock_pins, problems

    assert problems() == []
    assert ray.__version__ == lock_pins()["ray"]


def test_dev_lock_check_names_a_moved_version_and_a_missing_dependency(tmp_path):
    """What keeps CI independent of PyPI's releases: a venv whose versions moved away from the lock, or a lock
    that misses a dependency pulled in through an extra (ray[serve] -> fastapi), is named, so `make venv` fails."""
    from tools.check_lock import LOCK, problems

    lines = LOCK.read_text().splitlines()
    moved = [re.sub(r"^pydantic==.*", "pydantic==2.0.0", line) for line in lines]
    (tmp_path / "moved.lock").write_text("\n".join(moved) + "\n")
    found = problems(tmp_path / "moved.lock")
    assert [p for p in found if p.startswith("pydantic: pinned 2.0.0, installed ")] and len(found) == 1, found
    missing = [line for line in lines if not line.startswith("fastapi==")]
    (tmp_path / "missing.lock").write_text("\n".join(missing) + "\n")
    found = problems(tmp_path / "missing.lock")
    assert any(p.startswith("fastapi ") and "not pinned in missing.lock" in p for p in found), found


def test_make_lock_regenerates_both_the_dev_and_the_image_locks():
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^lock:\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe and "tools/lock.sh" in recipe.group(1) and "tools/image_lock.sh" in recipe.group(1), recipe
    script = (REPO / "tools" / "image_lock.sh").read_text()
    assert "--generate-hashes" in script and "-c requirements-dev.lock" in script
    for variant, path in LOCKS.items():
        assert path.read_text().startswith(f"# Generated by tools/image_lock.sh (make lock) for the {variant} image")


def test_dockerfile_installs_the_variants_lock_with_hashes_on_the_installed_ray():
    base = _dockerfile_arg("BASE_IMAGE")
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(gpu|cu\d+)", base)
    assert match, f"{DOCKERFILE}: BASE_IMAGE {base!r} is not a rayproject/ray CUDA image tag"
    assert match.group(1) == ray.__version__
    assert (int(match.group(2)), int(match.group(3))) == sys.version_info[:2], "image Python != venv Python"
    assert _dockerfile_arg("VARIANT") == "gpu"
    text = DOCKERFILE.read_text()
    assert "FROM ${BASE_IMAGE}" in text
    assert "COPY --chown=1000:100 cluster/image/requirements-${VARIANT}.lock /tmp/raytts-pins/requirements.lock" in text
    install = re.search(r"RUN pip install --require-hashes [^\n]*\\\n(?:[^\n]*\\\n)*[^\n]*", text)
    assert install and "-r /tmp/raytts-pins/requirements.lock" in install.group(0), "locked deps, hash-checked"
    assert "pip install --no-deps --no-build-isolation ." in text, "raytts itself adds no unlocked package"
    assert 'check_pins.py /tmp/raytts-pins/requirements.lock "${VARIANT}"' in text


def test_base_images_lock_entries_are_tags_with_digests():
    for line in (IMAGE_DIR / "base-images.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"rayproject/ray:\S+ sha256:[0-9a-f]{64}", line), line


def test_build_script_builds_from_the_base_digest_and_both_variants(tmp_path, monkeypatch: pytest.MonkeyPatch):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    base = _dockerfile_arg("BASE_IMAGE")
    digest = "sha256:" + "cd" * 32
    lock = tmp_path / "base-images.lock"
    lock.write_text(f"# comment\n{base} {digest}\n{base.replace('-gpu', '-cpu')} sha256:{'ef' * 32}\n")
    monkeypatch.setenv("BASE_IMAGES_LOCK", str(lock))
    gpu = _build_command()
    assert _option(gpu, "-t") == [f"raytts:{version}"]
    assert _option(gpu, "-f") == ["cluster/image/Dockerfile"] and gpu[-1] == "."
    assert f"BASE_IMAGE={base}@{digest}" in _option(gpu, "--build-arg")
    assert "VARIANT=gpu" in _option(gpu, "--build-arg")
    cpu = _build_command("--cpu")
    assert _option(cpu, "-t") == [f"raytts:{version}-cpu"]
    assert f"BASE_IMAGE={base.replace('-gpu', '-cpu')}@sha256:{'ef' * 32}" in _option(cpu, "--build-arg")
    assert "VARIANT=cpu" in _option(cpu, "--build-arg")
    # a tag without a recorded digest: the real build pulls it and records the digest (dry run: says so)
    lock.write_text("")
    result = subprocess.run(["bash", str(IMAGE_DIR / "build.sh"), "--dry-run"], capture_output=True, text=True,
                            timeout=30)  # fmt: skip
    assert result.returncode == 0 and f"{base} has no digest in {lock}" in result.stdout, result.stdout


def test_build_push_renders_every_config_with_the_pushed_digest():
    registry = "123456789012.dkr.ecr.us-west-2.amazonaws.com"
    result = subprocess.run(["bash", str(IMAGE_DIR / "build.sh"), "--dry-run", "--push", registry],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [shlex.split(line) for line in result.stdout.splitlines() if not line.startswith("#")]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert ["docker", "push", f"{registry}/raytts:{version}"] in lines
    (render,) = [line for line in lines if line[:2] == ["python3", "cluster/render.py"]]
    assert render[2:] == ["--image", f"{registry}/raytts:{version}@sha256:<digest-of-the-push>"]


def _copies() -> dict[str, list[str]]:
    """The Dockerfile's COPY instructions as {destination: sources}."""
    copies: dict[str, list[str]] = {}
    for line in re.findall(r"^COPY (.+)$", DOCKERFILE.read_text(), re.MULTILINE):
        *sources, dest = [arg for arg in line.split() if not arg.startswith("--")]
        copies.setdefault(dest, []).extend(sources)
    return copies


def test_image_copies_what_pip_needs_to_install_the_project():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    copies = _copies()
    needed = {"pyproject.toml", "constraints.txt", project["project"]["readme"]}
    assert needed <= set(copies.get("/app/", [])), f"{DOCKERFILE}: /app/ gets {copies.get('/app/')}, needs {needed}"
    for package in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        name = package.rstrip("*")
        assert copies.get(f"/app/{name}") == [name], f"{DOCKERFILE}: package {name} is not copied to /app/{name}"


def test_image_contains_the_job_config_the_rayjob_runs():
    config = shlex.split(_kuberay("RayJob")["spec"]["entrypoint"])[2]
    relative = config.removeprefix("/app/")
    assert config != relative, f"RayJob entrypoint config {config} is not under the image's /app"
    assert (REPO / relative).is_file(), f"RayJob entrypoint reads {config}, but {relative} is not in the repo"
    top = Path(relative).parts[0]
    assert _copies().get(f"/app/{top}") == [top], f"{DOCKERFILE}: {top}/ is not copied to /app/{top}"
    ignored = [p.strip() for p in (IMAGE_DIR / "Dockerfile.dockerignore").read_text().splitlines()]
    ignored = [p for p in ignored if p and not p.startswith("#")]
    parts = Path(relative).parts
    hits = [p for p in ignored for i in range(1, len(parts) + 1) if fnmatch("/".join(parts[:i]), p)]
    assert not hits, f"Dockerfile.dockerignore excludes {relative} ({hits})"


# --------------------------------------------------------------------------------------------------------------
# the Ray cluster launcher


def _launcher_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_config_passes_ray_schema_and_ray_up_validation(path: Path, rendered: Path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    for config in (_load(path), _load(rendered / "launcher" / path.name)):
        jsonschema.validate(config, _launcher_schema())
        # What `ray up` does before it talks to the cloud: merge the provider defaults, check docker, validate.
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
        # Omitted command lists are filled from Ray's provider defaults (pip installs on every node): keep them empty.
        for commands in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
            assert prepared[commands] == [], (
                f"{path.name}: {commands} = {prepared[commands]} (the image has everything)"
            )


def test_launcher_configs_cover_aws_and_gcp():
    assert {_load(path)["provider"]["type"] for path in LAUNCHERS} == {"aws", "gcp"}


def test_launcher_schema_check_rejects_a_broken_config():
    (path, *_) = LAUNCHERS
    config = _load(path)
    node_type = next(iter(config["available_node_types"]))
    broken_type = copy.deepcopy(config)
    broken_type["available_node_types"][node_type]["resources"]["GPU"] = 0.5  # must be an integer
    misspelt = copy.deepcopy(config)
    misspelt["worker_start_ray_command"] = misspelt.pop("worker_start_ray_commands")
    for broken in (broken_type, misspelt):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, _launcher_schema())


def _initialization(config: dict[str, Any], node_type: str) -> list[str]:
    """The initialization commands Ray runs on a node of `node_type` (a node type's own list replaces the global)."""
    return config["available_node_types"][node_type].get("initialization_commands", config["initialization_commands"])


def _gpu_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in config["available_node_types"].items() if t["resources"].get("GPU", 0) > 0}


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_runs_the_image_with_gpu_nodes_that_fit_the_serve_deployment(path: Path):
    config = _load(path)
    assert config["docker"]["image"] == PLACEHOLDER, "the image comes from cluster/render.py"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "head runs no tasks (CPU: 0)"
    assert any("--autoscaling-config=~/ray_bootstrap_config.yaml" in c for c in config["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])

    deployment = _tts_deployment(_serve())
    options, autoscaling = deployment["ray_actor_options"], deployment["autoscaling_config"]
    gpu_types = _gpu_types(config)
    assert gpu_types, f"{path.name}: no node type with GPUs"
    for name, node_type in gpu_types.items():
        assert node_type["resources"]["GPU"] >= options["num_gpus"], name
        assert node_type["resources"]["CPU"] >= options["num_cpus"], f"{name}: a replica needs {options['num_cpus']}"
    gpus = sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu_types.values())
    assert gpus >= autoscaling["max_replicas"] * options["num_gpus"], "max_replicas cannot all be placed"
    workers = sum(t.get("max_workers", 0) for name, t in config["available_node_types"].items() if t is not head)
    assert config["max_workers"] >= workers, "the global max_workers caps the per-type maxima"


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_every_node_logs_in_to_the_registry_before_the_pull(path: Path, rendered: Path):
    """Rendered for an ECR / Artifact Registry image, every node type's initialization commands (run on the host
    before docker pulls) log docker in to that registry; each command is valid shell."""
    config = _load(path)
    host = {"aws": "123456789012.dkr.ecr.us-west-2.amazonaws.com", "gcp": "us-docker.pkg.dev"}[
        config["provider"]["type"]
    ]
    image = f"{host}/p/raytts:0.1.0" if host.endswith("pkg.dev") else f"{host}/raytts:0.1.0"
    text = subprocess.run([sys.executable, str(CLUSTER / "render.py"), "--image", image, "--output", str(rendered / "x")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert text.returncode == 0, text.stderr
    config = _load(rendered / "x" / "launcher" / path.name)
    login = {
        "aws": f"docker login --username AWS --password-stdin {host}",
        "gcp": f"gcloud auth configure-docker {host}",
    }
    for node_type in config["available_node_types"]:
        commands = _initialization(config, node_type)
        assert any(login[config["provider"]["type"]] in c for c in commands), f"{node_type}: no login in {commands}"
        for command in commands:
            check = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True, timeout=30)
            assert check.returncode == 0, f"{node_type}: {command!r}: {check.stderr}"
    # run with stand-ins for the cloud CLIs and docker (shell functions that print their arguments): the login
    # runs for the registry it was rendered for, and not for a public registry
    stand_ins = (
        'aws() { echo "aws $*"; }; gcloud() { echo "gcloud $*"; }; docker() { cat > /dev/null; echo "docker $*"; }; '
    )
    expect = {
        "aws": f"docker login --username AWS --password-stdin {host}",
        "gcp": f"gcloud auth configure-docker {host}",
    }
    for command in _initialization(config, config["head_node_type"]):
        result = subprocess.run(["bash", "-c", stand_ins + command], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and expect[config["provider"]["type"]] in result.stdout, (command, result)
        public = command.replace(host, "ghcr.io")
        result = subprocess.run(["bash", "-c", stand_ins + public], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and not result.stdout.strip(), (public, result)


def _gpu_lock_cuda() -> str:
    runtime = _lock(LOCKS["gpu"])["nvidia-cuda-runtime"][0]
    return ".".join(runtime.split(".")[:2])


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_gpu_nodes_refuse_a_driver_older_than_the_images_cuda_needs(path: Path, tmp_path: Path):
    """Each GPU node type first checks the host's NVIDIA driver against the minimum for the GPU lock's CUDA
    (actors.placement.MIN_DRIVER, what the engine's own error names). Run here against a stand-in nvidia-smi that
    prints a driver version (no GPU on this machine): an older driver fails naming both versions, a new enough
    one passes."""
    from actors.placement import MIN_DRIVER

    need = MIN_DRIVER[int(_gpu_lock_cuda().split(".")[0])]
    config = _load(path)
    for node_type in _gpu_types(config):
        check = _initialization(config, node_type)[0]
        assert "nvidia-smi" in check and need in check, f"{node_type}: first command is not the driver check"
        fake = tmp_path / "bin"
        fake.mkdir(exist_ok=True)
        for driver, ok in (("570.124.06", False), (need, True), ("590.44.01", True), ("", False)):
            (fake / "nvidia-smi").write_text(f"#!/bin/sh\n[ -n '{driver}' ] && echo '{driver}'\n")
            (fake / "nvidia-smi").chmod(0o755)
            env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
            result = subprocess.run(["bash", "-c", check], capture_output=True, text=True, env=env, timeout=30)
            assert (result.returncode == 0) == ok, (node_type, driver, result.stderr)
            if not ok:
                assert f">= {need}" in result.stderr and (driver or "no driver") in result.stderr, result.stderr


# Ray's AWS node provider (ray/autoscaler/_private/aws/node_provider.py) calls these boto3 methods from the head's
# autoscaler; each needs the IAM action beside it. A call this table does not know fails the test below, so a Ray
# upgrade that needs a new permission is noticed here, not when workers never start.
AWS_PROVIDER_ACTIONS = {
    "create_instances": ["ec2:RunInstances", "ec2:CreateTags"],
    "create_tags": ["ec2:CreateTags"],
    "describe_images": ["ec2:DescribeImages"],
    "describe_instance_types": ["ec2:DescribeInstanceTypes"],
    "describe_instances": ["ec2:DescribeInstances"],
    "filter": ["ec2:DescribeInstances"],
    "terminate": ["ec2:TerminateInstances"],
    "terminate_instances": ["ec2:TerminateInstances"],
    "stop": ["ec2:StopInstances"],
    "stop_instances": ["ec2:StopInstances"],
    "start_instances": ["ec2:StartInstances"],
}


def _policy_actions(path: Path) -> dict[str, list[str]]:
    """{action: resources} of an IAM policy document."""
    actions: dict[str, list[str]] = {}
    for statement in json.loads(path.read_text())["Statement"]:
        assert statement["Effect"] == "Allow"
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for action in statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]:
            actions.setdefault(action, []).extend(resources)
    return actions


def test_aws_instance_profiles_grant_what_the_launcher_config_needs():
    import ray.autoscaler._private.aws.node_provider as provider

    (path,) = [p for p in LAUNCHERS if _load(p)["provider"]["type"] == "aws"]
    config = _load(path)
    iam = CLUSTER / "launcher" / "aws-iam"
    head, worker = _policy_actions(iam / "head-policy.json"), _policy_actions(iam / "worker-policy.json")
    calls = set(re.findall(r"\.(create_instances|create_tags|describe_\w+|filter|terminate\w*|stop\w*|start_instances)\(",
                           Path(provider.__file__).read_text()))  # fmt: skip
    assert calls, "found no EC2 calls in Ray's AWS node provider"
    unknown = calls - set(AWS_PROVIDER_ACTIONS)
    assert not unknown, f"Ray's AWS node provider now calls {unknown}: add their IAM actions to head-policy.json"
    missing = {a for call in calls for a in AWS_PROVIDER_ACTIONS[call] if a not in head}
    assert not missing, f"head-policy.json lacks {missing}"

    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["node_config"]["IamInstanceProfile"] == {"Name": "raytts-head"}
    profiles = {
        t["node_config"]["IamInstanceProfile"]["Name"] for n, t in nodes.items() if n != config["head_node_type"]
    }
    assert profiles == {"raytts-worker"}
    assert [r for r in head["iam:PassRole"] if r.endswith(":role/raytts-worker")], "the head passes the workers' role"
    if any(t["node_config"]["ImageId"].startswith("resolve:ssm:") for t in nodes.values()):
        parameter = "arn:aws:ssm:*::parameter/aws/service/deeplearning/*"
        assert all(
            t["node_config"]["ImageId"].startswith("resolve:ssm:/aws/service/deeplearning/") for t in nodes.values()
        )
        assert parameter in head["ssm:GetParameters"], "RunInstances resolves resolve:ssm: ImageIds as the head"
    pull = {"ecr:GetAuthorizationToken", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"}
    assert pull <= set(head) and pull <= set(worker), "every node pulls the image from ECR"
    dry = subprocess.run(["bash", str(CLUSTER / "launcher" / "aws-iam.sh"), "--bucket", "b1", "--dry-run"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    for role in ("raytts-head", "raytts-worker"):
        assert f"aws iam create-instance-profile --instance-profile-name {role}" in dry.stdout


def test_gcp_nodes_use_the_service_accounts_the_script_creates_and_gpus_on_demand_and_spot():
    (path,) = [p for p in LAUNCHERS if _load(p)["provider"]["type"] == "gcp"]
    config = _load(path)
    project = config["provider"]["project_id"]
    nodes = config["available_node_types"]
    emails = {n: [a["email"] for a in t["node_config"]["serviceAccounts"]] for n, t in nodes.items()}
    head = config["head_node_type"]
    assert emails[head] == [f"raytts-head@{project}.iam.gserviceaccount.com"]
    assert all(e == [f"raytts-worker@{project}.iam.gserviceaccount.com"] for n, e in emails.items() if n != head)
    gpu = _gpu_types(config)
    models = {n: t["node_config"]["scheduling"].get("provisioningModel", "STANDARD") for n, t in gpu.items()}
    assert sorted(models.values()) == ["SPOT", "STANDARD"], models
    for name, node_type in gpu.items():
        scheduling = node_type["node_config"]["scheduling"]
        assert scheduling["onHostMaintenance"] == "TERMINATE", f"{name}: GPU VMs cannot live-migrate"
        assert node_type["node_config"]["machineType"].startswith("g2-"), f"{name}: L4 machine type"
    dry = subprocess.run(["bash", str(CLUSTER / "launcher" / "gcp-iam.sh"), "--project", "p1", "--bucket", "b1",
                          "--dry-run"], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    for role in ("raytts-head", "raytts-worker"):
        assert f"gcloud iam service-accounts create {role} --project p1" in dry.stdout
    assert "--role roles/iam.serviceAccountUser" in dry.stdout and "roles/compute.instanceAdmin.v1" in dry.stdout


# --------------------------------------------------------------------------------------------------------------
# Ray Serve


def _unknown_keys(mapping: dict[str, Any], model: Any, where: str) -> list[str]:
    return [f"{where}.{key}" for key in mapping if key not in model.model_fields]


def test_serve_config_is_a_valid_deploy_config_without_unknown_fields():
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema, ServeApplicationSchema, ServeDeploySchema

    config = _serve()
    schema = ServeDeploySchema.model_validate(config)
    assert [app.name for app in schema.applications] == ["raytts"]
    # These schemas ignore unknown keys (a misspelt option would deploy and do nothing): check names too.
    unknown = _unknown_keys(config, ServeDeploySchema, "config")
    for app in config["applications"]:
        unknown += _unknown_keys(app, ServeApplicationSchema, app["name"])
        for deployment in app.get("deployments", []):
            unknown += _unknown_keys(deployment, DeploymentSchema, deployment["name"])
            unknown += _unknown_keys(
                deployment.get("ray_actor_options", {}), RayActorOptionsSchema, "ray_actor_options"
            )
            unknown += _unknown_keys(deployment.get("autoscaling_config", {}), AutoscalingConfig, "autoscaling_config")
    assert not unknown, f"{SERVE_CONFIG}: unknown fields {unknown}"

    (app,) = config["applications"]
    assert app["route_prefix"] == "/" and app["import_path"] == "actors.serving.app:build_app"
    deployment = _tts_deployment(config)
    autoscaling = AutoscalingConfig.model_validate(deployment["autoscaling_config"])
    assert 1 <= autoscaling.min_replicas <= autoscaling.max_replicas
    # Serve hands each replica at most max_ongoing_requests; autoscaling targets fewer so replicas are added first.
    assert autoscaling.target_ongoing_requests < deployment["max_ongoing_requests"]
    assert deployment["ray_actor_options"]["num_gpus"] == 1, "one engine replica per GPU"
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}


def test_serve_args_build_the_app_and_the_overrides_name_its_deployment():
    if not (REPO / "actors" / "serving" / "config.py").exists():
        pytest.skip("actors/serving/config.py (ServeConfig) is not written yet: cannot validate the Serve app args")
    from ray import serve

    from actors.serving.app import TTSServer, build_app
    from actors.serving.config import ServeConfig

    (app,) = _serve()["applications"]
    module, _, builder = app["import_path"].partition(":")
    assert (module, builder) == ("actors.serving.app", "build_app")
    config = ServeConfig.model_validate(app["args"])
    assert config.model_name(None) == "chattts" and config.models["chattts"].source == "hf://2Noise/ChatTTS"
    assert sorted(config.voices) == ["alloy", "echo", "nova"]
    assert isinstance(build_app(app["args"]), serve.Application)
    # Serve applies a `deployments:` entry only to a deployment of that name: a wrong name is an error at deploy.
    assert [d["name"] for d in app["deployments"]] == [TTSServer.name]


# --------------------------------------------------------------------------------------------------------------
# KubeRay


def _strict(schema: Any) -> Any:
    """A Kubernetes structural schema as the API server prunes with it: every object schema that lists its
    `properties` (and neither keeps unknown fields nor has `additionalProperties`) refuses other keys. The API server
    silently drops unknown fields of a custom resource, so a misspelt field (shutdownAfterJobFinished) would deploy
    and do nothing; strict validation names it here."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


def _crd_validator(kind: str) -> jsonschema.Draft7Validator:
    import gzip

    data = json.loads(gzip.decompress((CRDS / f"{CRD_FILES[kind]}.json.gz").read_bytes()))
    assert data["kind"] == kind
    schema = _strict(data["schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: not in the CRD, checked below
    return jsonschema.Draft7Validator(schema)


def _crd_errors(kind: str, doc: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in _crd_validator(kind).iter_errors(doc)]


def test_vendored_crds_are_the_kuberay_release_the_docs_name():
    version = (CRDS / "VERSION").read_text().strip()
    assert f"KubeRay operator {version}" in (CLUSTER / "README.md").read_text()
    for kind in KUBERAY:
        assert f"operator {version}, CRD ray.io/v1" in KUBERAY[kind].read_text(), KUBERAY[kind]


@pytest.mark.parametrize("kind", sorted(KUBERAY))
def test_kuberay_manifest_validates_against_the_crd_schema_and_runs_the_installed_ray(kind: str, rendered: Path):
    for path in (KUBERAY[kind], rendered / "kuberay" / KUBERAY[kind].name):
        doc = _load(path)
        assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
        errors = _crd_errors(kind, doc)
        assert not errors, f"{path}: not valid for KubeRay's {kind} CRD: {errors}"
    doc = _kuberay(kind)
    spec = _cluster_spec(kind)
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"] == {"mode": "token"}
    images = _images(doc)
    assert images and set(images) == {PLACEHOLDER}, f"{KUBERAY[kind]}: images {images} (render sets them)"
    assert set(_images(_load(rendered / "kuberay" / KUBERAY[kind].name))) == {SAMPLE_IMAGE}


def test_crd_validation_names_misspelt_and_out_of_range_fields():
    doc = _kuberay("RayJob")
    misspelt = copy.deepcopy(doc)
    misspelt["spec"]["shutdownAfterJobFinished"] = misspelt["spec"].pop("shutdownAfterJobFinishes")
    deep = copy.deepcopy(doc)
    deep["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resource"] = {}
    deadline = copy.deepcopy(doc)
    deadline["spec"]["preRunningDeadlineSeconds"] = 0
    for broken, where in ((misspelt, "spec: Additional properties"), (deep, "containers.0: Additional properties"),
                          (deadline, "spec.preRunningDeadlineSeconds: 0 is less than the minimum")):  # fmt: skip
        errors = _crd_errors("RayJob", broken)
        assert any(e.startswith(where) or where in e for e in errors), errors


def _claimed_names(kind: str, name: str) -> tuple[set[str], list[str]]:
    """(Service and Secret names a manifest makes KubeRay create, patterns of the generated ones) by KubeRay 1.7's
    naming (utils.GenerateHeadServiceName, GenerateServeServiceName, GenerateRayClusterName: NAME-<5 random>; the
    token Secret is named after its RayCluster)."""
    generated = rf"^{re.escape(name)}-[a-z0-9]{{5}}(-head-svc)?$"
    if kind == "RayCluster":
        return {f"{name}-head-svc", name}, []
    if kind == "RayService":
        return {f"{name}-head-svc", f"{name}-serve-svc"}, [generated]
    return set(), [generated]  # RayJob: its cluster NAME-xxxxx, that cluster's head Service and token Secret


def test_manifests_the_readme_applies_together_claim_distinct_names():
    """RayCluster, RayJob and RayService applied in one namespace (as the README does) must not want the same
    Service or Secret: no fixed name equal to another's, none matching another's generated names, and each name
    within KubeRay's limits (53 characters for a RayCluster, 47 for a RayJob or RayService, which add 6)."""
    claims = {}
    for kind in KUBERAY:
        name = _kuberay(kind)["metadata"]["name"]
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), f"{kind} {name}: not a DNS-1035 label"
        assert len(name) <= (53 if kind == "RayCluster" else 47), f"{kind} {name}: too long for KubeRay"
        claims[kind] = _claimed_names(kind, name)
    for kind, (fixed, _) in claims.items():
        for other, (other_fixed, patterns) in claims.items():
            if other == kind:
                continue
            assert not fixed & other_fixed, f"{kind} and {other} both claim {fixed & other_fixed}"
            hits = [n for n in fixed for p in patterns if re.match(p, n)]
            assert not hits, f"{kind}'s {hits} could be {other}'s generated names"
    readme = (REPO / "README.md").read_text() + (CLUSTER / "README.md").read_text()
    for kind in ("RayCluster", "RayService"):
        fixed, _ = claims[kind]
        service = sorted(n for n in fixed if n.endswith("-serve-svc" if kind == "RayService" else "-head-svc"))[0]
        assert f"svc/{service}" in readme, f"the README port-forwards another Service than {kind}'s {service}"


def test_rayjob_fails_fast_when_its_cluster_cannot_start():
    spec = _kuberay("RayJob")["spec"]
    assert 0 < spec["preRunningDeadlineSeconds"] < spec["activeDeadlineSeconds"]


def _gpu_groups(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [g for g in spec["workerGroupSpecs"] if _quantity(g["rayStartParams"].get("num-gpus", 0)) > 0]


@pytest.mark.parametrize("kind", sorted(KUBERAY))
def test_gpu_pods_stage_the_checkpoint_once_and_the_workload_loads_it(kind: str):
    """Each GPU pod's init container runs the real `raytts stage-model SOURCE DEST` into a volume the Ray container
    mounts at the same path, and the workload loads DEST: the RayJob's --model, the RayService app's model
    source. The head (no engines) stages nothing."""
    parser_check = subprocess.run([sys.executable, "-m", "jobs.cli", "stage-model", "--help"], capture_output=True,
                                  text=True, timeout=60)  # fmt: skip
    assert parser_check.returncode == 0 and "stage-model" in parser_check.stdout
    spec = _cluster_spec(kind)
    assert "initContainers" not in spec["headGroupSpec"]["template"]["spec"]
    destinations = set()
    for group in _gpu_groups(spec):
        pod = group["template"]["spec"]
        (stage,) = [c for c in pod["initContainers"] if c["name"] == "stage-model"]
        assert stage["image"] == PLACEHOLDER
        command = stage["command"]
        assert command[:2] == ["raytts", "stage-model"], command
        source, dest = command[2], command[3]
        assert source.startswith(("hf://", "s3://", "gs://")), source
        mounts = {m["name"]: m["mountPath"] for m in stage["volumeMounts"]}
        ray_mounts = {m["name"]: m["mountPath"] for m in _ray_container(group)["volumeMounts"]}
        (volume,) = [name for name, path in mounts.items() if dest.startswith(path + "/")]
        assert ray_mounts.get(volume) == mounts[volume], f"{group['groupName']}: Ray does not mount {volume} there"
        assert volume in {v["name"] for v in pod["volumes"]}
        destinations.add(dest)
    assert len(destinations) == 1
    (dest,) = destinations
    if kind == "RayJob":
        argv = shlex.split(_kuberay(kind)["spec"]["entrypoint"])
        assert argv[argv.index("--model") + 1] == dest
    if kind == "RayService":
        app = yaml.safe_load(_kuberay(kind)["spec"]["serveConfigV2"])["applications"][0]
        assert {m["source"] for m in app["args"]["models"].values()} == {dest}


@pytest.mark.parametrize("kind", sorted(KUBERAY))
def test_kuberay_pod_resources_match_ray_start_params(kind: str):
    spec = _cluster_spec(kind)
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "head runs no tasks or actors"
    autoscaling = spec.get("enableInTreeAutoscaling", False)
    gpu_groups = 0
    for name, group in _groups(spec):
        params, container = group["rayStartParams"], _ray_container(group)
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert "resources" not in group, f"{name}: KubeRay refuses group resources together with rayStartParams"
        assert requests == limits, f"{name}: requests != limits (GPUs need equal values; Ray sees the limit)"
        gpus = _quantity(limits.get(GPU, 0))
        assert gpus == _quantity(params.get("num-gpus", 0)), f"{name}: {GPU} {gpus} != num-gpus"
        if name != "head":
            assert _quantity(params["num-cpus"]) == _quantity(limits["cpu"]), f"{name}: num-cpus != cpu limit"
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
            if not autoscaling:
                assert group["minReplicas"] == group["replicas"] == group["maxReplicas"], f"{name}: fixed size"
            gpu_groups += gpus > 0
        # The object store lives in /dev/shm (a memory emptyDir counted in the pod's memory).
        store = _quantity(params["object-store-memory"])
        (shm,) = [v for v in group["template"]["spec"]["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts[shm["name"]] == "/dev/shm"
        assert store <= _quantity(shm["emptyDir"]["sizeLimit"]) < _quantity(limits["memory"]), name
    assert gpu_groups >= 1, f"{KUBERAY[kind]}: no GPU worker group"


def test_rayservice_serves_the_same_applications_as_serve_yaml():
    """The RayService embeds serve.yaml's applications, except where the checkpoint comes from: its pods stage it
    (test above), serve.yaml's clusters (the VM launchers) download it on each node."""
    from ray.serve.schema import ServeDeploySchema

    doc = _kuberay("RayService")
    embedded = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    serve = _serve()
    staged = copy.deepcopy(serve["applications"])
    for app, ours in zip(staged, embedded["applications"], strict=True):
        for name, model in app["args"]["models"].items():
            model["source"] = ours["args"]["models"][name]["source"]
    assert embedded["applications"] == staged
    assert embedded["http_options"] == serve["http_options"]
    assert embedded.get("proxy_location") == serve.get("proxy_location")


def test_rayservice_gpu_workers_fit_the_autoscaled_deployment():
    spec = _cluster_spec("RayService")
    deployment = _tts_deployment(yaml.safe_load(_kuberay("RayService")["spec"]["serveConfigV2"]))
    options, autoscaling = deployment["ray_actor_options"], deployment["autoscaling_config"]
    workers = _gpu_groups(spec)
    assert spec["enableInTreeAutoscaling"] is True, "Serve autoscaling needs the cluster autoscaler to add GPU pods"
    for group in workers:
        assert _quantity(group["rayStartParams"]["num-gpus"]) >= options["num_gpus"], group["groupName"]
        assert _quantity(group["rayStartParams"]["num-cpus"]) >= options["num_cpus"], group["groupName"]
        secrets = [e["secretRef"] for e in _ray_container(group).get("envFrom", []) if "secretRef" in e]
        assert any(ref.get("optional") is False for ref in secrets), "replicas need RAYTTS_API_KEYS from a Secret"
        grace = group["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > deployment["graceful_shutdown_timeout_s"], "pods must outlive a replica's graceful shutdown"
    max_gpus = sum(g["maxReplicas"] * _quantity(g["rayStartParams"]["num-gpus"]) for g in workers)
    min_gpus = sum(g["minReplicas"] * _quantity(g["rayStartParams"]["num-gpus"]) for g in workers)
    assert max_gpus >= autoscaling["max_replicas"] * options["num_gpus"], "max_replicas cannot all be placed"
    assert min_gpus >= autoscaling["min_replicas"] * options["num_gpus"], "min_replicas have no GPU pod to start on"


class _Submitted(Exception):
    """Raised by the stand-in for run_job: carries the JobConfig the real CLI built from the entrypoint."""


def test_rayjob_entrypoint_is_a_valid_job_that_fits_its_cluster(monkeypatch: pytest.MonkeyPatch, capsys):
    import jobs.cli
    import pipeline.job

    doc = _kuberay("RayJob")
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0

    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["raytts", "run"], argv
    config_path = REPO / argv[2].removeprefix("/app/")
    argv[2] = str(config_path)  # the image's /app is this repo

    def submitted(config, address=None, quiet=True):
        raise _Submitted(config)

    # The real CLI parses the entrypoint (flags, --set values, the YAML) and validates the JobConfig; the job
    # itself is replaced at the point where it would start.
    monkeypatch.setattr(pipeline.job, "run_job", submitted)
    try:
        status = jobs.cli.main(argv[1:])
    except _Submitted as job:
        config = job.args[0]
    else:
        pytest.fail(f"`{spec['entrypoint']}` exits {status} before the job starts: {capsys.readouterr().err}")
    assert config.inputs.text == [argv[argv.index("--input") + 1]]
    assert config.output.path == argv[argv.index("--output") + 1]
    assert all(path.startswith("s3://") for path in [*config.inputs.text, config.output.path])
    assert config.model == argv[argv.index("--model") + 1], "the checkpoint the pods staged"

    cluster = spec["rayClusterSpec"]
    gpu_groups = _gpu_groups(cluster)
    actors = config.actors
    assert actors.size is not None, "a fixed-size cluster needs a fixed actor pool (actors.size)"
    assert actors.num_gpus >= 1 and config.engine.device == "cuda"
    gpus = sum(g["maxReplicas"] * _quantity(g["rayStartParams"]["num-gpus"]) for g in gpu_groups)
    assert actors.size * actors.num_gpus <= gpus, f"{actors.size} actors x {actors.num_gpus} GPU > {gpus} GPUs"
    for group in gpu_groups:
        assert _quantity(group["rayStartParams"]["num-cpus"]) > actors.num_cpus, "no CPU left for parse/encode"
        assert _quantity(group["rayStartParams"]["num-gpus"]) >= actors.num_gpus


# One NVIDIA L4 as the GPU pods and node types request it: 24 GB, of which CUDA reports 23034 MiB; about 600 MiB go
# to the CUDA context before the engine measures free memory.
L4_MIB, CUDA_CONTEXT_MIB = 23034, 600


def _l4_slots() -> int:
    """Rows in flight the full fp16 model plans on one L4 with the configs' engine settings (the replica's own
    memory plan, actors.engine.memory.plan_slots, on the free memory it would find)."""
    import torch

    from actors.engine.memory import plan_slots
    from actors.model.chattts import ChatTTSModel
    from actors.model.config import ModelConfig

    config = ModelConfig.from_name("full")
    with torch.device("meta"):
        model = ChatTTSModel(config)
    weights = sum(t.numel() * 2 for t in [*model.parameters(), *model.buffers()])
    serve_engine = _tts_app_args(_serve())["engine"]
    budget = int(((L4_MIB - CUDA_CONTEXT_MIB) * 2**20 - weights) * serve_engine["budget_fraction"])
    job = _load(CLUSTER / "jobs" / "chattts-gpu.yaml")
    return plan_slots(config, torch.float16, budget, 640, job["sampling"]["max_new_tokens"]).slots


def _tts_app_args(config: dict[str, Any]) -> dict[str, Any]:
    (app,) = [a for a in config["applications"] if a["name"] == "raytts"]
    return app["args"]


def test_sizing_is_derived_for_the_l4_the_configs_request():
    """The GPU the manifests and launchers request is an L4 (24 GB): the job feeds each actor more rows than the
    L4's slots (so a finished block never leaves the engine idle) but not several times more (memory held in
    flight); a Serve replica admits at least its slots and autoscales before they are full; the comments quote
    the slot count within 10%."""
    slots = _l4_slots()
    assert 300 < slots < 800, slots
    for kind in KUBERAY:
        for group in _gpu_groups(_cluster_spec(kind)):
            assert _quantity(_ray_container(group)["resources"]["limits"]["memory"]) <= 32 * 2**30, "an L4 node"
    job = _load(CLUSTER / "jobs" / "chattts-gpu.yaml")["actors"]
    in_flight = job["batch_size"] * job["max_concurrent_batches"]
    assert slots <= in_flight <= 2 * slots, (in_flight, slots)
    deployment = _tts_deployment(_serve())
    assert slots <= deployment["max_ongoing_requests"] <= 2 * slots
    assert deployment["autoscaling_config"]["target_ongoing_requests"] < slots
    quoted = [int(n) for path in (CLUSTER / "jobs" / "chattts-gpu.yaml", SERVE_CONFIG, KUBERAY["RayCluster"])
              for n in re.findall(r"(?:about|~)(\d+) (?:rows|slots)", path.read_text())]  # fmt: skip
    assert quoted and all(abs(n - slots) <= 0.1 * slots for n in quoted if n < 1000), (quoted, slots)


def test_rayservice_upgrades_start_at_the_replica_floor_not_one():
    """A NewCluster upgrade moves all traffic to a cluster that starts at min_replicas: the floor is above one
    replica and the GPU worker group starts with a pod for each of them."""
    spec = _kuberay("RayService")["spec"]
    autoscaling = _tts_deployment(yaml.safe_load(spec["serveConfigV2"]))["autoscaling_config"]
    assert autoscaling["min_replicas"] >= 2
    for group in _gpu_groups(spec["rayClusterConfig"]):
        assert group["replicas"] == group["minReplicas"] == autoscaling["min_replicas"]
    assert _tts_deployment(_serve())["autoscaling_config"]["min_replicas"] == autoscaling["min_replicas"]


def test_render_refuses_what_docker_would_refuse_and_renders_again_for_the_last_image(tmp_path):
    render = [sys.executable, str(CLUSTER / "render.py"), "--output", str(tmp_path)]
    first = subprocess.run(render, capture_output=True, text=True, timeout=60)
    assert first.returncode == 2 and "give --image or --registry" in first.stderr
    for bad in ("ghcr.io/ACME/raytts:0.1.0", "raytts:0.1.0@sha256:abc", "registry/raytts:"):
        refused = subprocess.run([*render, "--image", bad], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "is not an image reference" in refused.stderr, (bad, refused.stderr)
    assert not any(tmp_path.iterdir()), "a refused image wrote files"
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    by_registry = subprocess.run([*render, "--registry", "ghcr.io/acme/"], capture_output=True, text=True, timeout=60)
    assert by_registry.returncode == 0 and "has no digest" in by_registry.stderr
    again = subprocess.run(render, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    written = [Path(line) for line in again.stdout.split()]
    assert {p.name for p in written} == {p.name for p in [*LAUNCHERS, *KUBERAY.values()]}
    for path in written:
        assert set(_images(_load(path))) == {f"ghcr.io/acme/raytts:{version}"}, path
        assert PLACEHOLDER not in path.read_text() and "RAYTTS_REGISTRY_HOST" not in path.read_text()
