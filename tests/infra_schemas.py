"""Validate the manifests in infra/ against the schemas their systems enforce, offline.

A manifest that merely parses can still be refused, or worse, silently changed: the API
server drops (prunes) a custom-resource field its CRD does not know, so a typo such as
`imagePullPolicyy` or a field newer than the installed KubeRay vanishes without an error.
Four checks, each returning one string per problem (``[]`` when all is well):

- `crd_problems`: RayCluster / RayJob against KubeRay's own CRD schema (vendored under
  tests/data/kuberay/, see SOURCE.md there), once per supported KubeRay version, plus every
  field the API server would prune.
- `core_problems`: built-in kinds against Kubernetes' OpenAPI schema in strict mode
  (`kubernetes-validate`: an unknown field is an error).
- `name_problems`: the name rules no schema carries (DNS-1123 names, port names, env var
  names, KubeRay's limits on RayCluster / RayJob names).
- `compose_problems`: a docker-compose file against the official compose-spec schema (the
  copy check-jsonschema vendors and keeps current).
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

DATA = Path(__file__).resolve().parent / "data"

# The oldest KubeRay infra/ supports (authOptions appeared in 1.5) and the newest release.
KUBERAY_VERSIONS = ("v1.5.1", "v1.7.0")

# The file each CRD kind's schema was extracted to (tests/data/kuberay/<version>/...).
CRD_FILES = {"RayCluster": "raycluster", "RayJob": "rayjob"}


def _path(parts: Iterator[Any] | list[Any] | tuple[Any, ...]) -> str:
    """`spec.workerGroupSpecs[0].template`: the JSON path a reader can find in the YAML."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            text += f".{part}" if text else part
        else:  # a map key such as a label `app.kubernetes.io/name`
            text += f"[{json.dumps(part)}]"
    return text or "(root)"


# --- KubeRay CRDs -------------------------------------------------------------------------


@functools.cache
def crd_schema(kind: str, version: str) -> dict:
    """The `v1` openAPIV3Schema of a KubeRay CRD, as the API server stores it."""
    if version not in KUBERAY_VERSIONS:
        raise ValueError(f"no vendored KubeRay schema {version!r}; have {KUBERAY_VERSIONS}")
    file = DATA / "kuberay" / version / f"{CRD_FILES[kind]}.schema.json.gz"
    return json.loads(gzip.decompress(file.read_bytes()))


def _as_json_schema(node: Any) -> Any:
    """A structural OpenAPI schema turned into plain JSON Schema with the API server's meaning.

    - `nullable: true` admits null.
    - A required property with a `default` is filled in by the API server before it
      validates, so it may be left out (`minReplicas`, `maxReplicas` of a worker group).
    - `x-kubernetes-int-or-string` nodes already carry `anyOf: [integer, string]` in
      controller-gen's output; one without it gets it here.
    - `x-kubernetes-preserve-unknown-fields` needs nothing: JSON Schema allows unknown
      properties unless told otherwise; pruning is reported separately.
    """
    if isinstance(node, list):
        return [_as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _as_json_schema(value) for key, value in node.items()}
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "required" in out:
        props = out.get("properties", {})
        out["required"] = [name for name in out["required"] if "default" not in props.get(name, {})]
    return out


# `format: int32 / int64` are ranges in Kubernetes (a replicas of 2**31 is refused);
# date-time only occurs under `status`, which a manifest does not set.
_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("int32")
def _int32(value: object) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or -(2**31) <= value < 2**31


@_FORMATS.checks("int64")
def _int64(value: object) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or -(2**63) <= value < 2**63


@functools.cache
def _crd_validator(kind: str, version: str) -> jsonschema.Draft7Validator:
    schema = _as_json_schema(crd_schema(kind, version))
    return jsonschema.Draft7Validator(schema, format_checker=_FORMATS)


def pruned_fields(value: Any, schema: dict, path: tuple = ()) -> Iterator[str]:
    """Every field the API server would silently drop, following Kubernetes' pruning rules.

    Under a structural schema a key survives only where the node lists it in `properties`,
    maps it through `additionalProperties`, or says `x-kubernetes-preserve-unknown-fields:
    true` (then the listed properties are still pruned below). `metadata` at the root, and at
    an `x-kubernetes-embedded-resource`, is ObjectMeta, which the API server handles itself
    (KubeRay's CRDs declare it only as `type: object`).
    """
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for index, item in enumerate(value):
                yield from pruned_fields(item, items, (*path, index))
        return
    if not isinstance(value, dict):
        return
    properties = schema.get("properties", {})
    additional = schema.get("additionalProperties")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    implicit = set()
    if not path or schema.get("x-kubernetes-embedded-resource"):
        implicit = {"apiVersion", "kind", "metadata"}
    for key, child in value.items():
        if key in properties:
            if key == "metadata" and key in implicit:
                continue
            yield from pruned_fields(child, properties[key], (*path, key))
        elif key in implicit:
            continue
        elif isinstance(additional, dict):
            yield from pruned_fields(child, additional, (*path, key))
        elif not (preserve or additional is True):
            yield f"{_path((*path, key))}: would be pruned (not in the KubeRay CRD schema)"


def _list_key_problems(value: Any, schema: dict, path: tuple = ()) -> Iterator[str]:
    """Duplicate keys in `x-kubernetes-list-type: map / set` lists (two containers with one
    name, two ports with one containerPort and protocol): the API server refuses them."""
    if isinstance(value, list):
        items = schema.get("items", {})
        keys = schema.get("x-kubernetes-list-map-keys")
        kind = schema.get("x-kubernetes-list-type")
        if kind in ("map", "set"):
            seen = set()
            for index, item in enumerate(value):
                if kind == "map" and keys and isinstance(item, dict):
                    defaults = items.get("properties", {})
                    ident = tuple(item.get(k, defaults.get(k, {}).get("default")) for k in keys)
                else:
                    ident = json.dumps(item, sort_keys=True)
                if ident in seen:
                    yield f"{_path((*path, index))}: duplicate entry {ident} in a list-type {kind}"
                seen.add(ident)
        for index, item in enumerate(value):
            yield from _list_key_problems(item, items, (*path, index))
    elif isinstance(value, dict):
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        for key, child in value.items():
            sub = properties.get(key, additional if isinstance(additional, dict) else None)
            if sub is not None:
                yield from _list_key_problems(child, sub, (*path, key))


def crd_problems(manifest: dict, version: str) -> list[str]:
    """A RayCluster or RayJob against KubeRay `version`'s CRD, as `kubectl apply` would meet it.

    Reports schema violations (types, enums, required fields, int32 ranges, Kubernetes
    quantity patterns), duplicate list-map keys, and pruned fields. Not covered: the CRDs'
    CEL rules (`x-kubernetes-validations`; none of them concerns fields infra/ sets) and
    KubeRay's own checks at reconcile time (see `name_problems` for its name limits).
    """
    kind = manifest.get("kind")
    if kind not in CRD_FILES:
        return [f"kind: {kind!r} is not a KubeRay kind this checks ({', '.join(CRD_FILES)})"]
    if manifest.get("apiVersion") != "ray.io/v1":
        return [f"apiVersion: {manifest.get('apiVersion')!r}, the vendored schemas are ray.io/v1"]
    schema = crd_schema(kind, version)
    errors = sorted(
        _crd_validator(kind, version).iter_errors(manifest), key=lambda e: list(e.absolute_path)
    )
    problems = [f"{_path(e.absolute_path)}: {e.message}" for e in errors]
    problems += _list_key_problems(manifest, schema)
    problems += pruned_fields(manifest, schema)
    return problems


# --- Kubernetes built-in kinds -----------------------------------------------------------

# The newest Kubernetes whose schemas kubernetes-validate ships (1.25 ... 1.37 in 1.37.0).
K8S_VERSION = kubernetes_validate.latest_version()


def pod_templates(manifest: dict) -> Iterator[tuple[tuple, dict]]:
    """(path, PodTemplateSpec) for every pod template a manifest carries, wherever it sits."""
    kind = manifest.get("kind")
    spec = manifest.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield ("spec", "template"), spec.get("template") or {}
    elif kind == "CronJob":
        job = (spec.get("jobTemplate") or {}).get("spec") or {}
        yield ("spec", "jobTemplate", "spec", "template"), job.get("template") or {}
    elif kind == "Pod":
        yield (), manifest
    elif kind == "RayCluster":
        yield from _ray_cluster_templates(spec, ("spec",))
    elif kind in ("RayJob", "RayService"):
        yield from _ray_cluster_templates(
            spec.get("rayClusterSpec") or {}, ("spec", "rayClusterSpec")
        )
        if "submitterPodTemplate" in spec:
            yield ("spec", "submitterPodTemplate"), spec["submitterPodTemplate"] or {}


def _ray_cluster_templates(cluster: dict, path: tuple) -> Iterator[tuple[tuple, dict]]:
    head = cluster.get("headGroupSpec") or {}
    yield (*path, "headGroupSpec", "template"), head.get("template") or {}
    for index, group in enumerate(cluster.get("workerGroupSpecs") or []):
        yield (*path, "workerGroupSpecs", index, "template"), group.get("template") or {}


def _core_validate(manifest: dict, prefix: tuple = (), drop: int = 0) -> list[str]:
    """kubernetes-validate, strict, newest Kubernetes; an error's path loses its first `drop`
    parts and gains `prefix` (to report a wrapped part at its place in the manifest)."""
    try:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{_path((*prefix, *list(error.absolute_path)[drop:]))}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [error.message]
    return []


def core_problems(manifest: dict) -> list[str]:
    """A manifest against Kubernetes' own schema, strict: an unknown field is an error.

    kubernetes-validate stops at the first error, so this reports one problem per object.
    For KubeRay kinds it checks what Kubernetes itself owns in them: `metadata` (ObjectMeta)
    and every embedded pod template, each wrapped as a core `PodTemplate`. A kind it has no
    schema for is a problem, not a pass.
    """
    if manifest.get("kind") not in CRD_FILES:
        return _core_validate(manifest)
    metadata = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": manifest.get("metadata")}
    problems = _core_validate(metadata)
    for path, template in pod_templates(manifest):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "template": template}
        problems += _core_validate(wrapped, prefix=path, drop=1)
    return problems


# --- Names -------------------------------------------------------------------------------
# Kubernetes checks these in Go, so no OpenAPI schema carries them. Regexes and limits from
# k8s.io/apimachinery pkg/util/validation/validation.go (kubernetes/apimachinery v0.36.3,
# commit 40bf4b2b62f8838b9b37de7b407793f1f17ee225): IsDNS1123Label, IsDNS1123Subdomain,
# IsDNS1035Label, IsValidPortName, IsEnvVarName.

_DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_DNS1035_LABEL = re.compile("[a-z]([-a-z0-9]*[a-z0-9])?")
_ENV_VAR_NAME = re.compile("[-._a-zA-Z][-._a-zA-Z0-9]*")


def dns1123_label(value: object) -> str | None:
    """Container, volume, port-in-Service names: at most 63 of [a-z0-9-], alphanumeric ends."""
    if not isinstance(value, str) or len(value) > 63 or not re.fullmatch(_DNS1123_LABEL, value):
        return "must be a DNS-1123 label (at most 63 of a-z 0-9 -, alphanumeric at both ends)"
    return None


def dns1123_subdomain(value: object) -> str | None:
    """Object names and references to them (Kubernetes' NameIsDNSSubdomain, ValidateClassName)."""
    if not isinstance(value, str) or len(value) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(value):
        return "must be a DNS-1123 subdomain (at most 253 of a-z 0-9 - ., alphanumeric ends)"
    return None


def dns1035_label(value: object, max_length: int = 63) -> str | None:
    """Service names, and KubeRay's RayCluster / RayJob names: a DNS-1035 label starts with a
    letter. KubeRay also caps the length so its derived Service / cluster names fit."""
    if not isinstance(value, str) or not _DNS1035_LABEL.fullmatch(value):
        return "must be a DNS-1035 label (a-z 0-9 -, starting with a letter, alphanumeric end)"
    if len(value) > max_length:
        return f"must be at most {max_length} characters (is {len(value)})"
    return None


def port_name(value: object) -> str | None:
    """A container port name is an IANA_SVC_NAME (RFC 6335): at most 15 of [a-z0-9-], at least
    one letter, no hyphen at either end nor two in a row."""
    if (
        not isinstance(value, str)
        or len(value) > 15
        or not re.fullmatch("[-a-z0-9]+", value)
        or not re.search("[a-z]", value)
        or "--" in value
        or value.startswith("-")
        or value.endswith("-")
    ):
        return "must be an IANA_SVC_NAME (at most 15 of a-z 0-9 -, a letter, no edge or double -)"
    return None


def env_var_name(value: object) -> str | None:
    """The portable env var names (IsEnvVarName). Kubernetes >= 1.34 also accepts any printable
    ASCII but '=' (RelaxedEnvironmentVariableValidation); the strict rule works everywhere."""
    if not isinstance(value, str) or not _ENV_VAR_NAME.fullmatch(value):
        return "must be an env var name ([-._a-zA-Z][-._a-zA-Z0-9]*)"
    if value in (".", "..") or value.startswith(".."):
        return "must not be '.' or '..' nor start with '..'"
    return None


# KubeRay's ValidateRayClusterMetadata / ValidateRayJobMetadata
# (ray-operator/controllers/ray/utils/validation.go, same in v1.5.1 and v1.7.0): a DNS-1035
# label of at most MaxRayClusterNameLength = 53 (63 - len("-serve-svc")) and
# MaxRayJobNameLength = 53 - 6 (the RayJob's cluster is "<name>-<5 random chars>").
KUBERAY_NAME_LIMITS = {"RayCluster": 53, "RayJob": 47, "RayService": 47}

# metadata.name rules per kind (kubernetes/pkg/apis/core/validation: ValidateServiceName is
# DNS-1035, the others NameIsDNSSubdomain).
METADATA_NAME_RULES = {
    "Service": dns1035_label,
    "PersistentVolumeClaim": dns1123_subdomain,
    "ConfigMap": dns1123_subdomain,
    "Secret": dns1123_subdomain,
    "Deployment": dns1123_subdomain,
}


def _pod_spec_names(pod: dict, at: tuple) -> Iterator[tuple[tuple, object, Any]]:
    """(path, value, rule) for every name in a PodSpec that must follow a name rule."""
    for field in ("initContainers", "containers"):
        for i, container in enumerate(pod.get(field) or []):
            c = (*at, field, i)
            yield (*c, "name"), container.get("name"), dns1123_label
            for j, port in enumerate(container.get("ports") or []):
                if "name" in port:
                    yield (*c, "ports", j, "name"), port["name"], port_name
            for j, env in enumerate(container.get("env") or []):
                yield (*c, "env", j, "name"), env.get("name"), env_var_name
                source = env.get("valueFrom") or {}
                for ref in ("secretKeyRef", "configMapKeyRef"):
                    if ref in source:
                        e = (*c, "env", j, "valueFrom", ref, "name")
                        yield e, (source[ref] or {}).get("name"), dns1123_subdomain
            for j, env_from in enumerate(container.get("envFrom") or []):
                for ref in ("secretRef", "configMapRef"):
                    if ref in env_from:
                        e = (*c, "envFrom", j, ref, "name")
                        yield e, (env_from[ref] or {}).get("name"), dns1123_subdomain
            for j, mount in enumerate(container.get("volumeMounts") or []):
                yield (*c, "volumeMounts", j, "name"), mount.get("name"), dns1123_label
    for i, volume in enumerate(pod.get("volumes") or []):
        v = (*at, "volumes", i)
        yield (*v, "name"), volume.get("name"), dns1123_label
        if "persistentVolumeClaim" in volume:
            claim = (volume["persistentVolumeClaim"] or {}).get("claimName")
            yield (*v, "persistentVolumeClaim", "claimName"), claim, dns1123_subdomain
        if "configMap" in volume:
            name = (volume["configMap"] or {}).get("name")
            yield (*v, "configMap", "name"), name, dns1123_subdomain
        if "secret" in volume:
            name = (volume["secret"] or {}).get("secretName")
            yield (*v, "secret", "secretName"), name, dns1123_subdomain


def _names(manifest: dict) -> Iterator[tuple[tuple, object, Any]]:
    kind = manifest.get("kind")
    name = (manifest.get("metadata") or {}).get("name")
    if kind in KUBERAY_NAME_LIMITS:
        limit = KUBERAY_NAME_LIMITS[kind]
        yield ("metadata", "name"), name, lambda value: dns1035_label(value, limit)
    elif kind in METADATA_NAME_RULES:
        yield ("metadata", "name"), name, METADATA_NAME_RULES[kind]
    spec = manifest.get("spec") or {}
    if kind == "PersistentVolumeClaim" and spec.get("storageClassName"):  # "" means no class
        yield ("spec", "storageClassName"), spec["storageClassName"], dns1123_subdomain
    if kind == "Service":
        for i, port in enumerate(spec.get("ports") or []):
            if "name" in port:
                yield ("spec", "ports", i, "name"), port["name"], dns1123_label
    if kind in KUBERAY_NAME_LIMITS:
        cluster = spec if kind == "RayCluster" else spec.get("rayClusterSpec") or {}
        at = ("spec",) if kind == "RayCluster" else ("spec", "rayClusterSpec")
        for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
            # KubeRay >= 1.7 requires this only with networkPolicy (the group name goes into
            # object names); a label is safe under every version.
            yield (*at, "workerGroupSpecs", i, "groupName"), group.get("groupName"), dns1123_label
    for path, template in pod_templates(manifest):
        pod = (template or {}).get("spec") or {}
        yield from _pod_spec_names(pod, (*path, "spec"))


def name_problems(manifest: dict) -> list[str]:
    """Every name in a manifest that Kubernetes (or KubeRay) would refuse at admission or
    reconcile time, though it passes the schemas: e.g. a placeholder storage class
    `YOUR_RWX_STORAGE_CLASS`, a port name of 16 characters, a RayJob name over 47."""
    problems = []
    for path, value, rule in _names(manifest):
        error = rule(value)
        if error:
            problems.append(f"{_path(path)}: {value!r} {error}")
    return problems


# --- docker compose ----------------------------------------------------------------------


@functools.cache
def compose_schema() -> dict:
    """The compose-spec JSON schema, as check-jsonschema vendors it (its builtin
    `vendor.compose-spec`, taken from github.com/compose-spec/compose-spec and refreshed with
    each release), so a newer Compose feature only needs a newer check-jsonschema."""
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text(encoding="utf-8"))


def compose_problems(compose: dict) -> list[str]:
    """A docker-compose file against the compose-spec schema: unknown keys at any level are
    errors there (`additionalProperties: false`, only `x-` extensions allowed)."""
    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_class(schema).iter_errors(compose), key=lambda e: list(e.path))
    return [f"{_path(e.absolute_path)}: {e.message}" for e in errors]
