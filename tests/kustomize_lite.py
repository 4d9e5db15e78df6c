"""A stand-in for ``kustomize build``, limited to what deploy/kubernetes/ uses.

The committed renders (deploy/kubernetes/rendered/) come from the real kustomize (``kubectl
kustomize``, kustomize v5). Where no kustomize is installed, tests/unit/test_deploy_kubernetes.py
still checks that they are current with this module: the same objects from the same sources.
It does only what these kustomizations ask and refuses anything else, so a kustomization that
starts using another feature fails here instead of being rendered wrongly:

- ``resources``: YAML files, or directories holding a kustomization (built first);
- ``namespace``: set on every object (all of them namespaced; a cluster-scoped kind is refused);
- ``images``: ``newName``, ``newTag`` or ``digest`` for containers of pod templates;
- ``configMapGenerator``: ``files`` (``path`` or ``key=path``) and ``literals`` (``key=value``),
  named with kustomize's content hash, and references to them in pod templates renamed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KustomizeLiteError", "build", "configmap_hash"]

_KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "images",
    "configMapGenerator",
}
_GENERATOR_FIELDS = {"name", "files", "literals"}
_IMAGE_FIELDS = {"name", "newName", "newTag", "digest"}
# Kinds this renderer may put a namespace on; anything else (a ClusterRole, a Namespace, a kind
# whose references kustomize would rewrite) is refused.
_NAMESPACED_KINDS = {
    "ConfigMap",
    "Deployment",
    "KafkaConnector",
    "PodDisruptionBudget",
    "PrometheusRule",
    "ScaledObject",
    "Service",
    "ServiceAccount",
    "ServiceMonitor",
    "TriggerAuthentication",
}

Object = dict[str, Any]


class KustomizeLiteError(ValueError):
    """A kustomization uses something this renderer does not do."""


def build(directory: Path) -> list[Object]:
    """The objects ``kustomize build directory`` gives, in no particular order."""
    objects, generated = _build(directory)
    renames = {}
    for configmap in generated:
        name = configmap["metadata"]["name"]
        hashed = f"{name}-{configmap_hash(configmap)}"
        configmap["metadata"]["name"] = hashed
        renames[name] = hashed
    for obj in objects:
        _rename_configmap_references(obj, renames)
    return objects


def configmap_hash(configmap: Object) -> str:
    """kustomize's name suffix for a generated ConfigMap (api/hasher/hasher.go): the SHA-256 of
    Go's JSON encoding of its kind, name and data, the first ten hex digits with 0, 1, 3, a and
    e replaced so that the suffix never reads as a number or a word. The name is hashed empty:
    kustomize v5's generator hashes the ConfigMap before naming it (checked against kustomize
    5.5.0's output; the committed renders keep checking it)."""
    data = configmap.get("data", {})
    if set(configmap) - {"apiVersion", "kind", "metadata", "data"}:
        raise KustomizeLiteError("only data of generated ConfigMaps is supported")
    encoded = json.dumps(
        {"data": data, "kind": "ConfigMap", "name": ""},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    if any(ord(c) < 0x20 and c not in "\n\t\r" for c in encoded):
        raise KustomizeLiteError("control characters in a ConfigMap: Go escapes them otherwise")
    # Go's encoding/json escapes these for HTML safety; Python's does not.
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        encoded = encoded.replace(char, escaped)
    encoded = encoded.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _build(directory: Path) -> tuple[list[Object], list[Object]]:
    kustomization = _kustomization(directory)
    objects: list[Object] = []
    generated: list[Object] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            more, more_generated = _build(path)
            objects += more
            generated += more_generated
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for generator in kustomization.get("configMapGenerator", []):
        configmap = _generate(directory, generator)
        objects.append(configmap)
        generated.append(configmap)
    namespace = kustomization.get("namespace")
    if namespace is not None:
        for obj in objects:
            if obj["kind"] not in _NAMESPACED_KINDS:
                raise KustomizeLiteError(f"{obj['kind']}: not known to be namespaced here")
            obj["metadata"]["namespace"] = namespace
    for image in kustomization.get("images", []):
        if set(image) - _IMAGE_FIELDS:
            raise KustomizeLiteError(f"images: only {sorted(_IMAGE_FIELDS)}")
        for obj in objects:
            _set_image(obj, image)
    return objects, generated


def _kustomization(directory: Path) -> Object:
    found = [directory / n for n in ("kustomization.yaml", "kustomization.yml", "Kustomization")]
    files = [path for path in found if path.is_file()]
    if len(files) != 1:
        raise KustomizeLiteError(f"{directory}: needs exactly one kustomization file")
    kustomization: Object = yaml.safe_load(files[0].read_text())
    unknown = set(kustomization) - _KUSTOMIZATION_FIELDS
    if unknown:
        raise KustomizeLiteError(f"{files[0]}: not supported here: {sorted(unknown)}")
    return kustomization


def _generate(directory: Path, generator: Object) -> Object:
    unknown = set(generator) - _GENERATOR_FIELDS
    if unknown:
        raise KustomizeLiteError(f"configMapGenerator: not supported here: {sorted(unknown)}")
    data: dict[str, str] = {}
    for entry in generator.get("files", []):
        key, _, path = entry.rpartition("=")
        source = directory / path
        data[key or source.name] = source.read_text()
    for literal in generator.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": generator["name"]},
        "data": dict(sorted(data.items())),
    }


def _containers(obj: Object) -> list[Object]:
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    containers: list[Object] = pod.get("containers", []) + pod.get("initContainers", [])
    return containers


def _set_image(obj: Object, image: Object) -> None:
    for container in _containers(obj):
        name, tag = _split_image(container["image"])
        if name != image["name"]:
            continue
        name = image.get("newName", name)
        if "digest" in image:
            container["image"] = f"{name}@{image['digest']}"
        else:
            new_tag = image.get("newTag", tag)
            container["image"] = name if new_tag is None else f"{name}:{new_tag}"


def _split_image(image: str) -> tuple[str, str | None]:
    if "@" in image:
        raise KustomizeLiteError(f"{image}: images given by digest are not supported here")
    name, colon, tag = image.rpartition(":")
    if not colon or "/" in tag:  # no tag; or the colon was a registry's port
        return image, None
    return name, tag


def _rename_configmap_references(obj: Object, renames: dict[str, str]) -> None:
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            ref = volume["configMap"]
            ref["name"] = renames.get(ref["name"], ref["name"])
    for container in _containers(obj):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("configMapKeyRef")
            if ref is not None:
                ref["name"] = renames.get(ref["name"], ref["name"])
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef")
            if ref is not None:
                ref["name"] = renames.get(ref["name"], ref["name"])
