"""The validators of tests/infra_schemas.py can fail: each one, fed a small synthetic manifest
with one known defect, reports that defect at its path, and passes the same manifest without
it. (tests/test_infra.py applies them to the real manifests in infra/.)"""

from __future__ import annotations

import copy

import pytest

from infra_schemas import (
    K8S_VERSION,
    KUBERAY_VERSIONS,
    compose_problems,
    core_problems,
    crd_problems,
    name_problems,
)

CONTAINER = {
    "name": "ray-head",
    "image": "rayproject/ray:2.60.0",
    "ports": [{"containerPort": 8265, "name": "dashboard"}],
    "env": [{"name": "HF_HUB_CACHE", "value": "/data/hf/hub"}],
    "resources": {"requests": {"cpu": "4", "memory": "16Gi"}},
    "volumeMounts": [{"name": "shared", "mountPath": "/data"}],
}
POD_SPEC = {
    "containers": [CONTAINER],
    "volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": "ckptlab-shared"}}],
}
RAY_CLUSTER = {
    "apiVersion": "ray.io/v1",
    "kind": "RayCluster",
    "metadata": {"name": "ckptlab", "labels": {"app.kubernetes.io/name": "ckptlab"}},
    "spec": {
        "rayVersion": "2.60.0",
        "enableInTreeAutoscaling": True,
        "authOptions": {"mode": "token"},
        "headGroupSpec": {
            "rayStartParams": {"num-gpus": "0"},
            "template": {"metadata": {"labels": {"team": "a"}}, "spec": POD_SPEC},
        },
        "workerGroupSpecs": [
            {
                "groupName": "gpu",
                "replicas": 1,
                "minReplicas": 0,
                "maxReplicas": 8,
                "rayStartParams": {},
                "template": {"spec": {**POD_SPEC, "containers": [{**CONTAINER, "name": "w"}]}},
            }
        ],
    },
}
PVC = {
    "apiVersion": "v1",
    "kind": "PersistentVolumeClaim",
    "metadata": {"name": "ckptlab-shared"},
    "spec": {
        "accessModes": ["ReadWriteMany"],
        "storageClassName": "efs-sc",
        "resources": {"requests": {"storage": "2Ti"}},
    },
}


def cluster(**changes) -> dict:
    """A deep copy of RAY_CLUSTER; `changes` maps a path (parts joined by `__`, list indices as
    numbers) to a new value, or to `...` to delete the key."""
    manifest = copy.deepcopy(RAY_CLUSTER)
    for dotted, value in changes.items():
        *parents, last = [int(p) if p.isdigit() else p for p in dotted.split("__")]
        node = manifest
        for part in parents:
            node = node[part]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return manifest


@pytest.mark.parametrize("version", KUBERAY_VERSIONS)
def test_a_minimal_ray_cluster_passes(version):
    assert crd_problems(RAY_CLUSTER, version) == []
    assert core_problems(RAY_CLUSTER) == []
    assert name_problems(RAY_CLUSTER) == []


@pytest.mark.parametrize("version", KUBERAY_VERSIONS)
def test_a_misspelt_container_field_is_reported_as_pruned(version):
    manifest = cluster(
        spec__headGroupSpec__template__spec__containers__0__imagePullPolicyy="IfNotPresent"
    )
    path = "spec.headGroupSpec.template.spec.containers[0].imagePullPolicyy"
    assert crd_problems(manifest, version) == [
        f"{path}: would be pruned (not in the KubeRay CRD schema)"
    ]
    # Kubernetes' strict schema, on the embedded pod template, says the same.
    (problem,) = core_problems(manifest)
    assert problem.startswith("spec.headGroupSpec.template.spec.containers[0]: ")
    assert "'imagePullPolicyy' was unexpected" in problem


def test_a_field_newer_than_the_installed_kuberay_is_pruned_there_only():
    # authOptions itself is in KubeRay 1.5.1 (mode only); secretName came later.
    assert KUBERAY_VERSIONS[0] == "v1.5.1"
    manifest = cluster(spec__authOptions={"mode": "token", "secretName": "my-token"})
    assert crd_problems(manifest, "v1.5.1") == [
        "spec.authOptions.secretName: would be pruned (not in the KubeRay CRD schema)"
    ]
    assert crd_problems(manifest, KUBERAY_VERSIONS[-1]) == []


def test_pruning_follows_the_structural_rules():
    # Map values (labels with dots), root metadata, and template metadata's known keys stay;
    # a key template metadata does not list goes, as does any key under a schema-less object.
    manifest = cluster(
        metadata__annotations={"example.com/x": "y"},
        spec__headGroupSpec__template__metadata={"labels": {"a.b/c": "d"}, "generateName": "x-"},
        spec__workerGroupSpecs__0__rayStartParams={"num-gpus": "1"},
    )
    assert crd_problems(manifest, "v1.5.1") == [
        "spec.headGroupSpec.template.metadata.generateName: would be pruned (not in the KubeRay "
        "CRD schema)"
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"spec__workerGroupSpecs__0__replicas": "two"},
            "replicas: 'two' is not of type 'integer'",
        ),
        ({"spec__workerGroupSpecs__0__replicas": 2**31}, "is not a 'int32'"),
        ({"spec__authOptions": {"mode": "tokens"}}, "'tokens' is not one of ['disabled', 'token']"),
        ({"spec__headGroupSpec__template": ...}, "'template' is a required property"),
        (
            {
                "spec__headGroupSpec__template__spec__containers__0__resources": {
                    "limits": {"cpu": "4 cores"}
                }
            },
            "limits.cpu: '4 cores' does not match '^",
        ),
        (
            {"spec__headGroupSpec__template__spec__containers": [CONTAINER, CONTAINER]},
            "containers[1]: duplicate entry ('ray-head',) in a list-type map",
        ),
    ],
)
@pytest.mark.parametrize("version", KUBERAY_VERSIONS)
def test_schema_violations_are_reported(version, change, expected):
    problems = crd_problems(cluster(**change), version)
    assert len(problems) == 1 and expected in problems[0], problems


def test_a_rayjob_is_checked_through_its_cluster_spec():
    job = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "ckptlab-pythia-sweep"},
        "spec": {"entrypoint": "python -m ckptlab run", "rayClusterSpec": RAY_CLUSTER["spec"]},
    }
    for version in KUBERAY_VERSIONS:
        assert crd_problems(job, version) == []
    assert core_problems(job) == [] and name_problems(job) == []
    bad = copy.deepcopy(job)
    worker = bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    worker["template"]["spec"]["containers"][0]["env"] = [{"name": "1BAD", "value": "x"}]
    worker["template"]["spec"]["containers"][0]["securityContext"] = {"runAsUserr": 1000}
    at = "spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[0]"
    assert crd_problems(bad, "v1.7.0") == [
        f"{at}.securityContext.runAsUserr: would be pruned (not in the KubeRay CRD schema)"
    ]
    assert [p.split(":")[0] for p in core_problems(bad)] == [f"{at}.securityContext"]
    assert name_problems(bad) == [
        f"{at}.env[0].name: '1BAD' must be an env var name ([-._a-zA-Z][-._a-zA-Z0-9]*)"
    ]


def test_a_placeholder_storage_class_passes_the_schema_but_not_the_name_rules():
    pvc = copy.deepcopy(PVC)
    pvc["spec"]["storageClassName"] = "YOUR_RWX_STORAGE_CLASS"
    assert core_problems(pvc) == []
    assert name_problems(pvc) == [
        "spec.storageClassName: 'YOUR_RWX_STORAGE_CLASS' must be a DNS-1123 subdomain "
        "(at most 253 of a-z 0-9 - ., alphanumeric ends)"
    ]
    assert core_problems(PVC) == [] and name_problems(PVC) == []


def test_an_unknown_pvc_field_fails_the_strict_kubernetes_schema():
    pvc = copy.deepcopy(PVC)
    pvc["spec"]["storageClass"] = "efs-sc"
    (problem,) = core_problems(pvc)
    assert problem.startswith("spec: ") and "'storageClass' was unexpected" in problem
    major, minor = (int(part) for part in K8S_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 37)  # the newest kubernetes-validate ships (1.37.0 and up)


def test_a_kind_without_a_schema_is_a_problem_not_a_pass():
    assert core_problems({"apiVersion": "example.com/v1", "kind": "Widget"}) != []


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("dashboard", True),
        ("a" * 15, True),
        ("a" * 16, False),
        ("gcs_server", False),
        ("8265", False),
        ("-web", False),
        ("web--ui", False),
    ],
)
def test_container_port_names_are_iana_service_names(name, ok):
    manifest = cluster(
        spec__headGroupSpec__template__spec__containers__0__ports=[
            {"containerPort": 1, "name": name}
        ]
    )
    problems = name_problems(manifest)
    assert (problems == []) is ok, problems
    if not ok:
        assert problems[0].startswith(
            "spec.headGroupSpec.template.spec.containers[0].ports[0].name"
        )


@pytest.mark.parametrize(
    ("kind", "name", "ok"),
    [
        ("RayCluster", "a" * 53, True),
        ("RayCluster", "a" * 54, False),
        ("RayCluster", "1ckptlab", False),  # a DNS-1123 label, but not DNS-1035
        ("RayCluster", "ckpt.lab", False),
        ("RayJob", "a" * 47, True),
        ("RayJob", "a" * 48, False),
    ],
)
def test_kuberay_names(kind, name, ok):
    manifest = cluster(kind=kind, metadata__name=name)
    assert (name_problems(manifest) == []) is ok


def test_names_in_a_deployment_template_are_checked():
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "mlflow"},
        "spec": {
            "selector": {"matchLabels": {"app": "mlflow"}},
            "template": {
                "metadata": {"labels": {"app": "mlflow"}},
                "spec": {
                    "initContainers": [{"name": "Init", "image": "busybox"}],
                    "containers": [{"name": "mlflow", "image": "mlflow"}],
                    "volumes": [{"name": "cfg", "configMap": {"name": "My_Config"}}],
                },
            },
        },
    }
    assert core_problems(deployment) == []
    assert [p.split(":")[0] for p in name_problems(deployment)] == [
        "spec.template.spec.initContainers[0].name",
        "spec.template.spec.volumes[0].configMap.name",
    ]


def test_compose_files_are_checked_against_the_compose_spec():
    compose = {"services": {"mlflow": {"image": "mlflow", "ports": ["127.0.0.1:5000:5000"]}}}
    assert compose_problems(compose) == []
    assert compose_problems({**compose, "x-anchors": {}}) == []  # extensions are allowed
    (problem,) = compose_problems({**compose, "service": {}})
    assert problem == "(root): 'service' does not match any of the regexes: '^x-'"
    (problem,) = compose_problems({"services": {"mlflow": {"image": "mlflow", "restrat": "no"}}})
    assert problem.startswith("services.mlflow: ") and "'restrat' was unexpected" in problem
