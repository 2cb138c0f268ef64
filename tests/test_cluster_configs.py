"""The cluster configs in cluster/ are deployable as written: each file validates against the schema the tool that
reads it uses (ray-schema.json for the cluster launcher, ServeDeploySchema for Serve, KubeRay's v1 field names,
the job's own JobConfig), and the files agree with each other and with the dev venv: one image tag, the installed
Ray and torch versions, GPU and CPU counts that fit the deployments and actors scheduled on them.

Fast (no network, no Docker, no cluster): a few seconds of parsing and schema checks."""

from __future__ import annotations

import copy
import json
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

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
IMAGE_DIR = CLUSTER / "image"
DOCKERFILE = IMAGE_DIR / "Dockerfile"
REQUIREMENTS = IMAGE_DIR / "requirements.txt"
SERVE_CONFIG = CLUSTER / "serve.yaml"
LAUNCHERS = sorted((CLUSTER / "launcher").glob("*.yaml"))
KUBERAY = {
    "RayCluster": CLUSTER / "kuberay" / "raycluster.yaml",
    "RayJob": CLUSTER / "kuberay" / "rayjob.yaml",
    "RayService": CLUSTER / "kuberay" / "rayservice.yaml",
}
GPU = "nvidia.com/gpu"

# Field names of the ray.io/v1 CRDs in KubeRay v1.7.0 (ray-operator/config/crd/bases/ray.io_*.yaml). The API server
# silently drops unknown fields of a custom resource, so a misspelt field (shutdownAfterJobFinished) would deploy
# and do nothing: these sets catch it here. Pod templates are plain Kubernetes PodTemplateSpecs and not checked.
CLUSTER_SPEC_FIELDS = {
    "authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec",
    "headServiceAnnotations", "historyServerOptions", "managedBy", "networkPolicy", "rayVersion", "suspend",
    "tlsOptions", "upgradeStrategy", "workerGroupSpecs",
}  # fmt: skip
HEAD_GROUP_FIELDS = {
    "enableIngress", "headService", "ingressOptions", "labels", "rayStartParams", "resources", "serviceType",
    "template",
}  # fmt: skip
WORKER_GROUP_FIELDS = {
    "groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas", "numOfHosts", "priority",
    "rayStartParams", "replicas", "resources", "scaleStrategy", "suspend", "template",
}  # fmt: skip
AUTOSCALER_FIELDS = {
    "args", "command", "env", "envFrom", "idleTimeoutSeconds", "image", "imagePullPolicy", "resources",
    "securityContext", "upscalingMode", "version", "volumeMounts",
}  # fmt: skip
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint", "entrypointNumCpus",
    "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata", "preRunningDeadlineSeconds",
    "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes", "submissionMode", "submitterConfig",
    "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished",
}  # fmt: skip
RAYSERVICE_SPEC_FIELDS = {
    "deploymentUnhealthySecondThreshold", "excludeHeadPodFromServeSvc", "managedBy", "rayClusterConfig",
    "rayClusterDeletionDelaySeconds", "serveConfigV2", "serveService", "serviceUnhealthySecondThreshold", "suspend",
    "upgradeStrategy",
}  # fmt: skip


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


def _pins() -> dict[str, tuple[str, str]]:
    """requirements.txt as {normalised name: (extras, version)}; every line must be an exact pin."""
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)", line)
        assert match, f"{REQUIREMENTS}: {line!r} is not an exact pin NAME[extras]==VERSION"
        pins[_normalise(match.group(1))] = (match.group(2) or "", match.group(3))
    return pins


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


@pytest.fixture(scope="module")
def image_tag() -> str:
    """The tag build.sh gives the GPU image: every config must run exactly this image."""
    (tag,) = _option(_build_command(), "-t")
    return tag


def _same_image(image: str, tag: str) -> bool:
    # Allowed: the local tag, or the same tag under a registry after `build.sh --push REGISTRY`.
    return image == tag or image.endswith("/" + tag)


# --------------------------------------------------------------------------------------------------------------
# the image


def test_image_pins_the_versions_of_the_dev_lock():
    """The image runs what the tests ran: each pin in cluster/image/requirements.txt is requirements-dev.lock's.
    Both files are the repo's, so what PyPI releases cannot turn this red (the venv is installed from the lock)."""
    from tools.check_lock import lock_pins

    locked = {_normalise(name): version for name, version in lock_pins().items()}
    pins = _pins()
    wrong = {name: (pinned, locked.get(name)) for name, (_, pinned) in pins.items() if locked.get(name) != pinned}
    assert not wrong, f"{REQUIREMENTS}: pinned != requirements-dev.lock (image, lock): {wrong}"
    constraint = re.search(r"^torch==(\S+)$", (REPO / "constraints.txt").read_text(), re.MULTILINE)
    assert constraint and constraint.group(1) == pins["torch"][1], "constraints.txt and requirements.txt pin torch"


def test_dev_lock_is_what_the_venv_has_and_misses_nothing():
    """requirements-dev.lock is complete (raytts[test] and every extra it asks for, walked through the installed
    metadata) and the venv holds exactly its versions: tools/check_lock.py, as `make venv` runs it."""
    from tools.check_lock import problems

    assert problems() == []
    assert ray.__version__ == _pins()["ray"][1]


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


def test_requirements_pin_every_pyproject_dependency_with_its_extras():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _pins()
    for requirement in project["dependencies"]:
        match = re.match(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?", requirement)
        assert match, requirement
        name, extras = _normalise(match.group(1)), match.group(2) or ""
        assert name in pins, f"pyproject dependency {requirement!r} has no pin in {REQUIREMENTS}"
        assert pins[name][0] == extras, f"{REQUIREMENTS}: {name} extras {pins[name][0]!r}, pyproject has {extras!r}"


def test_dockerfile_base_image_is_the_installed_ray_on_the_venv_python():
    base = _dockerfile_arg("BASE_IMAGE")
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(gpu|cu\d+)(@sha256:[0-9a-f]{64})?", base)
    assert match, f"{DOCKERFILE}: BASE_IMAGE {base!r} is not a rayproject/ray CUDA image tag"
    assert match.group(1) == ray.__version__
    assert (int(match.group(2)), int(match.group(3))) == sys.version_info[:2], "image Python != venv Python"
    # torch comes from PyTorch's CUDA index, pinned with the build's local label.
    torch_cuda = _dockerfile_arg("TORCH_CUDA")
    assert re.fullmatch(r"cu\d{3}", torch_cuda), f"GPU image default TORCH_CUDA is {torch_cuda!r}"
    text = DOCKERFILE.read_text()
    assert '--extra-index-url "https://download.pytorch.org/whl/${TORCH_CUDA}"' in text
    assert "+${TORCH_CUDA}" in text, "torch must be pinned with its build label (torch==X+cuNNN)"
    assert "-c constraints.txt -r cluster/image/requirements.txt ." in text, "the project installs with its pins"


def test_build_script_builds_both_variants_from_the_repo_root(image_tag: str):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    gpu = _build_command()
    assert image_tag == f"raytts:{version}"
    assert _option(gpu, "-f") == ["cluster/image/Dockerfile"] and gpu[-1] == "."
    assert f"BASE_IMAGE={_dockerfile_arg('BASE_IMAGE')}" in _option(gpu, "--build-arg")
    assert f"TORCH_CUDA={_dockerfile_arg('TORCH_CUDA')}" in _option(gpu, "--build-arg")
    cpu = _build_command("--cpu")
    assert _option(cpu, "-t") == [f"raytts:{version}-cpu"]
    assert "TORCH_CUDA=cpu" in _option(cpu, "--build-arg")
    cpu_base = re.sub(r"-(gpu|cu\d+)$", "-cpu", _dockerfile_arg("BASE_IMAGE"))
    assert f"BASE_IMAGE={cpu_base}" in _option(cpu, "--build-arg")


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
def test_launcher_config_passes_ray_schema_and_ray_up_validation(path: Path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load(path)
    jsonschema.validate(config, _launcher_schema())
    # What `ray up` does before it talks to the cloud: merge the provider defaults, check docker, validate.
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    # Omitted command lists are filled from Ray's provider defaults (pip installs on every node): keep them empty.
    for commands in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert prepared[commands] == [], f"{path.name}: {commands} = {prepared[commands]} (the image has everything)"


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


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_runs_the_image_with_gpu_nodes_that_fit_the_serve_deployment(path: Path, image_tag: str):
    config = _load(path)
    assert _same_image(config["docker"]["image"], image_tag), config["docker"]["image"]
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "head runs no tasks (CPU: 0)"
    assert any("--autoscaling-config=~/ray_bootstrap_config.yaml" in c for c in config["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])

    deployment = _tts_deployment(_serve())
    options, autoscaling = deployment["ray_actor_options"], deployment["autoscaling_config"]
    gpu_types = {name: t for name, t in config["available_node_types"].items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_types, f"{path.name}: no node type with GPUs"
    for name, node_type in gpu_types.items():
        assert node_type["resources"]["GPU"] >= options["num_gpus"], name
        assert node_type["resources"]["CPU"] >= options["num_cpus"], f"{name}: a replica needs {options['num_cpus']}"
    gpus = sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu_types.values())
    assert gpus >= autoscaling["max_replicas"] * options["num_gpus"], "max_replicas cannot all be placed"
    workers = sum(t.get("max_workers", 0) for name, t in config["available_node_types"].items() if t is not head)
    assert config["max_workers"] >= workers, "the global max_workers caps the per-type maxima"


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


@pytest.mark.parametrize("kind", sorted(KUBERAY))
def test_kuberay_manifest_uses_ray_io_v1_known_fields_and_the_installed_ray(kind: str, image_tag: str):
    doc = _kuberay(kind)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", doc["metadata"]["name"]), "name must be a DNS-1035 label"
    spec_fields = {
        "RayCluster": CLUSTER_SPEC_FIELDS,
        "RayJob": RAYJOB_SPEC_FIELDS,
        "RayService": RAYSERVICE_SPEC_FIELDS,
    }
    unknown = [f"spec.{k}" for k in doc["spec"] if k not in spec_fields[kind]]
    spec = _cluster_spec(kind)
    unknown += [f"cluster.{k}" for k in spec if k not in CLUSTER_SPEC_FIELDS]
    unknown += [f"headGroupSpec.{k}" for k in spec["headGroupSpec"] if k not in HEAD_GROUP_FIELDS]
    unknown += [f"{g['groupName']}.{k}" for g in spec["workerGroupSpecs"] for k in g if k not in WORKER_GROUP_FIELDS]
    unknown += [f"autoscalerOptions.{k}" for k in spec.get("autoscalerOptions", {}) if k not in AUTOSCALER_FIELDS]
    assert not unknown, f"{KUBERAY[kind]}: fields KubeRay v1 does not have: {unknown}"

    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"] == {"mode": "token"}
    images = {c["image"] for _, group in _groups(spec) for c in group["template"]["spec"]["containers"]}
    assert len(images) == 1 and all(_same_image(i, image_tag) for i in images), f"{KUBERAY[kind]}: images {images}"


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
    from ray.serve.schema import ServeDeploySchema

    doc = _kuberay("RayService")
    embedded = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    serve = _serve()
    assert embedded["applications"] == serve["applications"]
    assert embedded["http_options"] == serve["http_options"]
    assert embedded.get("proxy_location") == serve.get("proxy_location")


def test_rayservice_gpu_workers_fit_the_autoscaled_deployment():
    spec = _cluster_spec("RayService")
    deployment = _tts_deployment(yaml.safe_load(_kuberay("RayService")["spec"]["serveConfigV2"]))
    options, autoscaling = deployment["ray_actor_options"], deployment["autoscaling_config"]
    workers = [g for g in spec["workerGroupSpecs"] if _quantity(g["rayStartParams"].get("num-gpus", 0)) > 0]
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

    def submitted(config, address=None):
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
    assert config.model == "hf://2Noise/ChatTTS"

    cluster = spec["rayClusterSpec"]
    gpu_groups = [g for g in cluster["workerGroupSpecs"] if _quantity(g["rayStartParams"].get("num-gpus", 0)) > 0]
    actors = config.actors
    assert actors.size is not None, "a fixed-size cluster needs a fixed actor pool (actors.size)"
    assert actors.num_gpus >= 1 and config.engine.device == "cuda"
    gpus = sum(g["maxReplicas"] * _quantity(g["rayStartParams"]["num-gpus"]) for g in gpu_groups)
    assert actors.size * actors.num_gpus <= gpus, f"{actors.size} actors x {actors.num_gpus} GPU > {gpus} GPUs"
    for group in gpu_groups:
        assert _quantity(group["rayStartParams"]["num-cpus"]) > actors.num_cpus, "no CPU left for parse/encode"
        assert _quantity(group["rayStartParams"]["num-gpus"]) >= actors.num_gpus
