"""Kubernetes manifests under k8s/: render, validate, and check the deployment policy.

No cluster is needed. A small kustomize renderer below builds each kustomization (base, dev,
prod) with the features k8s/ uses: resources (files and directories), namespace,
configMapGenerator (envs / files / literals, behavior create|merge, content-hash name suffix
with references rewritten), secretGenerator, patches (JSON 6902 and strategic-merge
`$patch: delete` / plain merges) and images. It raises on any other kustomization field, so
a feature added to k8s/ without support here fails loudly instead of being ignored.

Where a `kubectl` binary is on PATH its `kubectl kustomize` output must equal ours, which keeps
the renderer honest; every rendered object is validated with kubernetes-validate (strict: no
unknown fields) against pinned Kubernetes versions.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUSTOMIZATIONS = {
    "base": K8S / "base",
    "dev": K8S / "overlays" / "dev",
    "prod": K8S / "overlays" / "prod",
}
OVERLAYS = ("dev", "prod")
# Oldest Kubernetes minor still in general support when this was written, and a newer one.
K8S_VERSIONS = ("1.31", "1.34")

SECRET_NAME = "clip-relay-secrets"
SECRET_KEYS = {"SCALEREACH_API_KEY", "RELAY_API_KEYS", "RELAY_SECRETS_KEY", "RELAY_UI_SECRET"}
# SPEC.md's configuration table minus the secrets, plus the extra knobs the app reads.
CONFIG_KEYS = {
    "REDIS_URL",
    "SCALEREACH_BASE_URL",
    "RELAY_HOST",
    "RELAY_PORT",
    "RELAY_CALLBACK_ALLOW",
    "RELAY_POLL_INTERVAL",
    "RELAY_WATCH_TIMEOUT",
    "RELAY_RETRY_SCHEDULE",
    "RELAY_DELIVERY_TIMEOUT",
    "RELAY_RENDER_TIMEOUT",
    "RELAY_UPSTREAM_RPS",
    "RELAY_SHUTDOWN_GRACE",
    "RELAY_TRUSTED_PROXIES",
    "RELAY_RATE_LIMIT",
    "RELAY_SECRET_GRACE",
    "RELAY_UI",
    "RELAY_UI_SESSION",
    "LOG_FORMAT",
    "RELAY_METRICS_PORT",
    "RELAY_UPSTREAM_TIMEOUT",
    "RELAY_LINK_REFRESH",
    "RELAY_DELIVERY_CONCURRENCY",
    "RELAY_POLL_CONCURRENCY",
    "RELAY_LEASE",
    "RELAY_RETENTION",
    "RELAY_REDIS_HIGH_WATER",
    "RELAY_TENANT_MAX_WATCHES",
    "RELAY_DNS_SERVERS",
    "RELAY_ORIGIN_CONCURRENCY",
    "RELAY_BREAKER_FAILURES",
    "RELAY_BREAKER_COOLDOWN",
}
PART_OF = {"app.kubernetes.io/part-of": "clip-relay"}

# ------------------------------------------------------------------------------------------
# A minimal kustomize
# ------------------------------------------------------------------------------------------

KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "images",
    "configMapGenerator",
    "secretGenerator",
    "patches",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class KustomizeError(Exception):
    """The kustomization uses something this renderer does not support, or is wrong."""


@dataclass
class Build:
    """Result of rendering one kustomization."""

    resources: list[dict[str, Any]]
    files: set[Path] = field(default_factory=set)  # every file the build read
    generated: set[int] = field(default_factory=set)  # id() of objects needing a name hash


def load_docs(path: Path) -> list[dict[str, Any]]:
    """All non-empty YAML documents of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _within(path: Path, root: Path) -> Path:
    """kustomize's load restriction: files must be in or below the kustomization root."""
    resolved = path.resolve()
    if resolved != root.resolve() and root.resolve() not in resolved.parents:
        raise KustomizeError(f"{path} is not in or below {root} (kustomize refuses it)")
    if not resolved.is_file():
        raise KustomizeError(f"{path} does not exist")
    return resolved


def parse_env_file(text: str) -> dict[str, str]:
    """kustomize's env-file rules: KEY=VALUE lines; '#' comments and blank lines skipped."""
    data: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            # kustomize would take the value from the environment of whoever renders: refuse
            raise KustomizeError(f"line {number}: {raw!r} has no '='")
        if not ENV_NAME.match(key):
            raise KustomizeError(f"line {number}: {key!r} is not a valid variable name")
        data[key] = value
    return data


def _generator_data(root: Path, spec: dict[str, Any], files: set[Path]) -> dict[str, str]:
    data: dict[str, str] = {}
    for env in spec.get("envs", []):
        path = _within(root / env, root)
        files.add(path)
        data.update(parse_env_file(path.read_text()))
    for entry in spec.get("files", []):
        key, sep, rel = entry.partition("=")
        if not sep:
            key, rel = Path(entry).name, entry
        path = _within(root / rel, root)
        files.add(path)
        data[key] = path.read_text()
    for literal in spec.get("literals", []):
        key, sep, value = literal.partition("=")
        if not sep:
            raise KustomizeError(f"literal {literal!r} has no '='")
        data[key] = value
    unknown = set(spec) - {"name", "envs", "files", "literals", "behavior", "options", "type"}
    if unknown:
        raise KustomizeError(f"unsupported generator fields: {sorted(unknown)}")
    return data


def _generate(root: Path, kust: dict[str, Any], build: Build) -> None:
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for spec in kust.get(key, []):
            data = _generator_data(root, spec, build.files)
            options = spec.get("options", {})
            if set(options) - {"labels", "annotations"}:
                raise KustomizeError(f"unsupported generator options: {sorted(options)}")
            behavior = spec.get("behavior", "create")
            existing = [
                r
                for r in build.resources
                if r["kind"] == kind and r["metadata"]["name"] == spec["name"]
            ]
            if behavior in ("merge", "replace"):
                if len(existing) != 1:
                    raise KustomizeError(f"{behavior}: no generated {kind} {spec['name']}")
                target = existing[0]
                if kind == "Secret":
                    data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
                if behavior == "replace":
                    target["data"] = {}
                target.setdefault("data", {}).update(data)
                for meta in ("labels", "annotations"):
                    if options.get(meta):
                        target["metadata"].setdefault(meta, {}).update(options[meta])
                continue
            if behavior != "create" or existing:
                raise KustomizeError(f"generator {spec['name']}: cannot {behavior}")
            obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": {}}
            obj["metadata"]["name"] = spec["name"]
            for meta in ("labels", "annotations"):
                if options.get(meta):
                    obj["metadata"][meta] = dict(options[meta])
            if kind == "Secret":
                obj["type"] = spec.get("type", "Opaque")
                data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
            obj["data"] = data
            build.resources.append(obj)
            build.generated.add(id(obj))


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    if set(target) - {"kind", "name", "group", "version"}:
        raise KustomizeError(f"unsupported patch target fields: {sorted(target)}")
    api_version = obj.get("apiVersion", "")
    group, _, version = api_version.rpartition("/")
    checks = {
        "kind": obj.get("kind"),
        "name": obj["metadata"].get("name"),
        "group": group,
        "version": version,
    }
    return all(re.fullmatch(str(want), str(checks[key])) for key, want in target.items())


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def apply_json6902(obj: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    """RFC 6902 add / replace / remove (what the overlays use)."""
    for op in ops:
        *parents, last = _pointer(op["path"])
        node: Any = obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        kind = op["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if kind == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif kind == "replace":
                node[index] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[index]
            else:
                raise KustomizeError(f"unsupported op {kind}")
        elif kind in ("add", "replace"):
            if kind == "replace" and last not in node:
                raise KustomizeError(f"replace of missing {op['path']}")
            node[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del node[last]
        else:
            raise KustomizeError(f"unsupported op {kind}")


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge, simplified: maps merge, lists of named items merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = _merge(base.get(key), value)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    ):
        out_list = [dict(i) for i in base]
        for item in patch:
            match = [i for i, b in enumerate(out_list) if b["name"] == item["name"]]
            if match:
                out_list[match[0]] = _merge(out_list[match[0]], item)
            else:
                out_list.append(item)
        return out_list
    return copy.deepcopy(patch)


def _patch(root: Path, kust: dict[str, Any], build: Build) -> None:
    for entry in kust.get("patches", []):
        if set(entry) - {"path", "patch", "target"}:
            raise KustomizeError(f"unsupported patch fields: {sorted(entry)}")
        if "path" in entry:
            path = _within(root / entry["path"], root)
            build.files.add(path)
            text = path.read_text()
        else:
            text = entry["patch"]
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
        if len(docs) != 1:
            raise KustomizeError("one patch per entry, please")
        patch = docs[0]
        if isinstance(patch, list):  # JSON 6902
            targets = [r for r in build.resources if _matches(r, entry["target"])]
            if not targets:
                raise KustomizeError(f"patch target {entry['target']} matches nothing")
            for obj in targets:
                apply_json6902(obj, patch)
            continue
        target = entry.get("target") or {
            "kind": patch["kind"],
            "name": patch["metadata"]["name"],
        }
        targets = [r for r in build.resources if _matches(r, target)]
        if not targets:
            raise KustomizeError(f"patch target {target} matches nothing")
        if patch.get("$patch") == "delete":
            build.resources = [r for r in build.resources if not any(r is t for t in targets)]
            continue
        for obj in targets:
            merged = _merge(obj, {k: v for k, v in patch.items() if k != "$patch"})
            obj.clear()
            obj.update(merged)


def pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod spec(s) inside a workload object."""
    if obj["kind"] in POD_TEMPLATE_KINDS:
        yield obj["spec"]["template"]["spec"]
    elif obj["kind"] == "CronJob":
        yield obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    elif obj["kind"] == "Pod":
        yield obj["spec"]


def containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for spec in pod_specs(obj):
        yield from spec.get("initContainers", [])
        yield from spec["containers"]


def _images(kust: dict[str, Any], build: Build) -> None:
    for entry in kust.get("images", []):
        for obj in build.resources:
            for container in containers(obj):
                image = container["image"]
                name, _, digest = image.partition("@")
                tag = ""
                if ":" in name.rsplit("/", 1)[-1]:
                    name, _, tag = name.rpartition(":")
                if name != entry["name"]:
                    continue
                name = entry.get("newName", name)
                tag = str(entry.get("newTag", tag))
                digest = entry.get("digest", digest)
                image = name + (f":{tag}" if tag else "")
                container["image"] = image + (f"@{digest}" if digest else "")


def _namespace(kust: dict[str, Any], build: Build) -> None:
    namespace = kust.get("namespace")
    if not namespace:
        return
    for obj in build.resources:
        if obj["kind"] == "Namespace":
            continue
        if obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace


def content_hash(obj: dict[str, Any]) -> str:
    """kustomize's name-suffix hash (api/hasher): sha256 of a Go json.Marshal encoding.

    kustomize looks the name up under the literal key "metadata/name", finds nothing and
    hashes an empty name, so only kind, data (and type for Secrets) count.
    """
    if obj["kind"] == "ConfigMap":
        encoded: dict[str, Any] = {"kind": "ConfigMap", "name": "", "data": obj.get("data", "")}
        if isinstance(obj.get("binaryData"), dict):
            encoded["binaryData"] = obj["binaryData"]
    else:
        encoded = {
            "kind": "Secret",
            "type": obj.get("type", ""),
            "name": "",
            "data": obj.get("data", ""),
        }
        if isinstance(obj.get("stringData"), dict):
            encoded["stringData"] = obj["stringData"]
    text = json.dumps(encoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(char, escaped)  # Go's json.Marshal HTML-escapes these
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _rename_refs(obj: dict[str, Any], kind: str, old: str, new: str) -> None:
    ref_key = "configMapRef" if kind == "ConfigMap" else "secretRef"
    key_ref = "configMapKeyRef" if kind == "ConfigMap" else "secretKeyRef"
    for spec in pod_specs(obj):
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            for source in container.get("envFrom", []):
                if source.get(ref_key, {}).get("name") == old:
                    source[ref_key]["name"] = new
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get(key_ref)
                if ref and ref.get("name") == old:
                    ref["name"] = new
        for volume in spec.get("volumes", []):
            sources = [volume, *volume.get("projected", {}).get("sources", [])]
            for source in sources:
                if kind == "ConfigMap" and source.get("configMap", {}).get("name") == old:
                    source["configMap"]["name"] = new
                if kind == "Secret" and source.get("secret", {}).get("secretName") == old:
                    source["secret"]["secretName"] = new


def _build(root: Path) -> Build:
    kust_path = root / "kustomization.yaml"
    kust = yaml.safe_load(kust_path.read_text())
    unknown = set(kust) - KUSTOMIZATION_FIELDS
    if unknown:
        raise KustomizeError(f"{kust_path}: renderer does not support {sorted(unknown)}")
    build = Build(resources=[], files={kust_path.resolve()})
    for entry in kust.get("resources", []):
        path = root / entry
        if path.is_dir():
            sub = _build(path)
            build.resources += sub.resources
            build.files |= sub.files
            build.generated |= sub.generated
        else:
            resolved = _within(path, root)
            build.files.add(resolved)
            build.resources += load_docs(resolved)
    _generate(root, kust, build)
    _patch(root, kust, build)
    _namespace(kust, build)
    _images(kust, build)
    return build


def render(root: Path) -> Build:
    """Build a kustomization the way `kubectl kustomize` does (for the features above)."""
    build = _build(root)
    for obj in build.resources:
        if id(obj) not in build.generated:
            continue
        old = obj["metadata"]["name"]
        new = f"{old}-{content_hash(obj)}"
        obj["metadata"]["name"] = new
        for other in build.resources:
            _rename_refs(other, obj["kind"], old, new)
    return build


def kubectl_kustomize(root: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl on PATH: our renderer is not cross-checked")
    result = subprocess.run(
        [kubectl, "kustomize", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return (obj["kind"], meta.get("namespace", ""), meta["name"])


# ------------------------------------------------------------------------------------------
# helpers over rendered output
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(path).resources for name, path in KUSTOMIZATIONS.items()}


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def config_map(objs: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    found = [
        o
        for o in of_kind(objs, "ConfigMap")
        if re.fullmatch(re.escape(prefix) + r"-[a-z0-9]{10}", o["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one generated ConfigMap {prefix}-<hash>"
    return found[0]


def workloads(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def quantity(value: str | int) -> float:
    """Kubernetes quantity -> float (cpu in cores, memory in bytes)."""
    text = str(value)
    units = {
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text)
    assert match, f"bad quantity {value!r}"
    number, unit = match.groups()
    return float(number) * units.get(unit, 1.0) if unit else float(number)


# ------------------------------------------------------------------------------------------
# rendering and schema validation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renders(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered[name]
    assert objs, f"{name} renders nothing"
    keys = [key(o) for o in objs]
    assert len(keys) == len(set(keys)), f"{name}: duplicate objects"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renderer_matches_kubectl_kustomize(
    name: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    theirs = sorted(kubectl_kustomize(KUSTOMIZATIONS[name]), key=key)
    ours = sorted(rendered[name], key=key)
    assert [key(o) for o in ours] == [key(o) for o in theirs]
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine == reference, f"{name}: {key(mine)} differs from kubectl kustomize"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_manifests_validate_strict(
    name: str, version: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    errors = []
    for obj in rendered[name]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{key(obj)} at {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{key(obj)}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_every_file_under_k8s_is_used() -> None:
    used: set[Path] = set()
    for path in KUSTOMIZATIONS.values():
        used |= render(path).files
    on_disk = {
        p.resolve()
        for p in K8S.rglob("*")
        if p.is_file() and p.suffix != ".md"  # READMEs document, nobody renders them
    }
    unused = sorted(str(p.relative_to(K8S)) for p in on_disk - used)
    assert not unused, f"files under k8s/ no kustomization uses: {unused}"
    missing = sorted(str(p) for p in used - on_disk)
    assert not missing, f"referenced but missing: {missing}"
    # every kustomization directory is one of those we render
    dirs = {p.parent.resolve() for p in K8S.rglob("kustomization.yaml")}
    assert dirs == {p.resolve() for p in KUSTOMIZATIONS.values()}


def test_renderer_rejects_what_it_does_not_know(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("namePrefix: x-\nresources: []\n")
    with pytest.raises(KustomizeError):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [../outside.yaml]\n")
    with pytest.raises(KustomizeError):
        render(tmp_path)


def test_env_file_parser_follows_kustomize() -> None:
    text = "# comment\n\n  A=1\nB=\nC=x=y\n"
    assert parse_env_file(text) == {"A": "1", "B": "", "C": "x=y"}
    with pytest.raises(KustomizeError):
        parse_env_file("NO_VALUE\n")


# ------------------------------------------------------------------------------------------
# policy
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_workloads_are_hardened(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    found = workloads(rendered[name])
    assert {o["metadata"]["name"] for o in found} == {
        "clip-relay-api",
        "clip-relay-worker",
        "clip-relay-redis",
    }
    for obj in found:
        where = f"{name}: {key(obj)}"
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert selects(obj["spec"]["selector"]["matchLabels"], labels), where
        assert selects(PART_OF, labels), f"{where}: pods need app.kubernetes.io/part-of"
        spec = obj["spec"]["template"]["spec"]
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, where
        assert isinstance(pod_sc.get("runAsUser"), int), where
        assert pod_sc["runAsUser"] > 0, where
        assert "fsGroup" in pod_sc, where
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        assert spec.get("terminationGracePeriodSeconds", 30) > 20, where
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            cwhere = f"{where} container {container['name']}"
            assert container.get("livenessProbe"), f"{cwhere}: no livenessProbe"
            assert container.get("readinessProbe"), f"{cwhere}: no readinessProbe"
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    assert res in resources.get(part, {}), f"{cwhere}: no {part}.{res}"
                    assert quantity(resources["requests"][res]) <= quantity(
                        resources["limits"][res]
                    ), f"{cwhere}: {res} request above limit"
            sc = container.get("securityContext", {})
            assert sc.get("readOnlyRootFilesystem") is True, cwhere
            assert sc.get("allowPrivilegeEscalation") is False, cwhere
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], cwhere
            assert not sc.get("capabilities", {}).get("add"), cwhere
            assert sc.get("privileged") is not True, cwhere
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1], f"{cwhere}: image {image} has no tag"
            assert not image.endswith(":latest"), f"{cwhere}: image {image} uses latest"
            # read-only root: /tmp must be a writable emptyDir
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp, f"{cwhere}: no /tmp mount"
            assert "emptyDir" in volumes[tmp[0]["name"]], f"{cwhere}: /tmp is not an emptyDir"
            # named probe ports exist on the container
            port_names = {p.get("name") for p in container.get("ports", [])}
            port_numbers = {p["containerPort"] for p in container.get("ports", [])}
            for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = container.get(probe_name)
                if not probe:
                    continue
                handler = probe.get("httpGet") or probe.get("tcpSocket")
                if handler:
                    port = handler["port"]
                    assert port in port_names | port_numbers, f"{cwhere}: {probe_name} port"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_app_probes_and_ports(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered[name]
    api = one(objs, "Deployment", "clip-relay-api")["spec"]["template"]
    (api_c,) = api["spec"]["containers"]
    assert api_c["args"] == ["api"]
    assert {p["name"]: p["containerPort"] for p in api_c["ports"]} == {"http": 8080}
    assert api_c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api_c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api_c["readinessProbe"]["httpGet"]["port"] in ("http", 8080)
    worker = one(objs, "Deployment", "clip-relay-worker")["spec"]["template"]
    (worker_c,) = worker["spec"]["containers"]
    assert worker_c["args"] == ["worker"]
    assert {p["name"]: p["containerPort"] for p in worker_c["ports"]} == {"metrics": 9100}
    # alive is the process answering (a Redis outage is no reason to restart a worker);
    # ready is Redis answering
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert worker_c[probe]["httpGet"]["path"] == path
        assert worker_c[probe]["httpGet"]["port"] in ("metrics", 9100)
    assert worker_c["startupProbe"]["httpGet"]["path"] == "/healthz"
    # Prometheus annotations on the pods point at the real metrics ports
    for template, port in ((api, 8080), (worker, 9100)):
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"
    # both read the ConfigMap, and only the Secret's keys each uses (least privilege: the
    # API never holds the upstream key, the worker never the API keys or the dashboard's);
    # an env entry wins over the ConfigMap's value of the same name (REDIS_URL)
    cm_name = config_map(objs, "clip-relay-config")["metadata"]["name"]
    needs = {
        api_c["name"]: {
            "RELAY_API_KEYS": False,
            "RELAY_SECRETS_KEY": True,
            "RELAY_UI_SECRET": True,
            "REDIS_URL": True,
        },
        worker_c["name"]: {
            "SCALEREACH_API_KEY": False,
            "RELAY_SECRETS_KEY": True,
            "REDIS_URL": True,
        },
    }
    for container in (api_c, worker_c):
        assert container["envFrom"] == [{"configMapRef": {"name": cm_name}}]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
        assert {n: r["key"] for n, r in refs.items()} == {n: n for n in needs[container["name"]]}
        for env_name, ref in refs.items():
            assert ref["name"] == SECRET_NAME
            assert ref.get("optional", False) is needs[container["name"]][env_name], env_name


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_worker_grace_outlasts_shutdown_grace(
    name: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    objs = rendered[name]
    grace = float(config_map(objs, "clip-relay-config")["data"]["RELAY_SHUTDOWN_GRACE"])
    worker = one(objs, "Deployment", "clip-relay-worker")["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] > 20
    assert worker["terminationGracePeriodSeconds"] >= grace + 10
    api = one(objs, "Deployment", "clip-relay-api")["spec"]["template"]["spec"]
    pre_stop = api["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert api["terminationGracePeriodSeconds"] > float(pre_stop[-1]) + 10
    # the API's whole stop: preStop, its drain delay, requests' grace, pings in flight
    # (RELAY_DELIVERY_TIMEOUT + 1 to record their attempt), with a margin
    from relay.api.serving import MAX_DRAIN_DELAY

    timeout = float(config_map(objs, "clip-relay-config")["data"]["RELAY_DELIVERY_TIMEOUT"])
    stop = float(pre_stop[-1]) + min(MAX_DRAIN_DELAY, grace / 4) + grace + timeout + 1
    assert api["terminationGracePeriodSeconds"] >= stop + 2, (stop, "the API's stop")


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_hpa_and_pdb_target_existing_workloads(
    name: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    objs = rendered[name]
    deployments = {o["metadata"]["name"]: o for o in of_kind(objs, "Deployment")}
    hpas = of_kind(objs, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == {
        "clip-relay-api",
        "clip-relay-worker",
    }
    for hpa in hpas:
        assert hpa["apiVersion"] == "autoscaling/v2"
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment")
        assert ref["name"] in deployments, f"HPA {hpa['metadata']['name']} targets nothing"
        low, high = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
        assert 1 <= low <= high
        # the Deployment starts where the HPA would put it (no fight on every apply)
        assert deployments[ref["name"]]["spec"]["replicas"] == low
    pdbs = of_kind(objs, "PodDisruptionBudget")
    assert len(pdbs) == 2
    for pdb in pdbs:
        assert pdb["apiVersion"] == "policy/v1"
        selector = pdb["spec"]["selector"]["matchLabels"]
        targets = [
            d
            for d in deployments.values()
            if selects(selector, d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(targets) == 1, f"PDB {pdb['metadata']['name']} must cover one Deployment"
        # never a budget that blocks every drain (e.g. minAvailable == replicas)
        assert pdb["spec"].get("maxUnavailable", 0) >= 1


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_services_select_pods_and_ports(
    name: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    objs = rendered[name]
    for svc in of_kind(objs, "Service"):
        selector = svc["spec"]["selector"]
        targets = [
            w
            for w in workloads(objs)
            if selects(selector, w["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(targets) == 1, f"Service {svc['metadata']['name']} selects {len(targets)}"
        (container,) = targets[0]["spec"]["template"]["spec"]["containers"]
        names = {p["name"]: p["containerPort"] for p in container["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names or port["targetPort"] in names.values()
    api = one(objs, "Service", "clip-relay-api")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in api["spec"]["ports"]} == {
        "http": (80, "http"),
        "metrics": (8080, "http"),
    }
    redis_svc = one(objs, "Service", "clip-relay-redis")
    assert redis_svc["spec"]["clusterIP"] == "None"  # headless, for the StatefulSet


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_configmap_matches_the_app(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered[name]
    data = config_map(objs, "clip-relay-config")["data"]
    assert set(data) == CONFIG_KEYS, "relay.env must hold exactly the non-secret settings"
    assert not set(data) & SECRET_KEYS
    assert data["RELAY_PORT"] == "8080"
    assert data["RELAY_METRICS_PORT"] == "9100"
    assert data["RELAY_HOST"] == "0.0.0.0"
    # REDIS_URL names the in-cluster Redis Service and its port
    match = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/\d+", data["REDIS_URL"])
    assert match, data["REDIS_URL"]
    svc = one(objs, "Service", match.group(1))
    assert int(match.group(2)) in {p["port"] for p in svc["spec"]["ports"]}
    assert float(data["RELAY_LEASE"]) > float(data["RELAY_DELIVERY_TIMEOUT"])
    assert float(data["RELAY_LEASE"]) > float(data["RELAY_UPSTREAM_TIMEOUT"])


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_app_accepts_the_shipped_configuration(
    name: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    settings = pytest.importorskip("relay.settings", reason="relay.settings not importable")
    env = dict(config_map(rendered[name], "clip-relay-config")["data"])
    env.update({"SCALEREACH_API_KEY": "placeholder", "RELAY_API_KEYS": "ops:placeholder"})
    loaded = settings.load(env)
    loaded.require_api()
    loaded.require_worker()
    assert loaded.port == 8080
    assert loaded.metrics_port == 9100


def test_relay_env_documents_every_variable() -> None:
    lines = (K8S / "base" / "relay.env").read_text().splitlines()
    for number, line in enumerate(lines):
        if not line or line.startswith("#"):
            continue
        # a KEY=VALUE line (or a group of them) sits right below its comment
        above = number - 1
        while above >= 0 and lines[above] and not lines[above].startswith("#"):
            above -= 1
        assert above >= 0, f"relay.env: {line.split('=')[0]} has no comment"
        assert lines[above].startswith("#"), f"relay.env: {line.split('=')[0]} has no comment"


def test_secret_template_holds_only_placeholders() -> None:
    path = K8S / "base" / "secret.example.yaml"
    (secret,) = load_docs(path)
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["name"] == SECRET_NAME
    assert "data" not in secret, "use stringData with placeholders, never base64 data"
    values = secret["stringData"]
    assert set(values) <= SECRET_KEYS | {"REDIS_URL", "REDIS_PASSWORD"}
    assert {"SCALEREACH_API_KEY", "RELAY_API_KEYS", "REDIS_PASSWORD", "REDIS_URL"} <= set(values)
    for k, v in values.items():
        assert "REPLACE_ME" in v, f"{k} must be a REPLACE_ME placeholder"
        # nothing besides the placeholder that could be a real key
        rest = v.replace("REPLACE_ME", "")
        if k == "REDIS_URL":  # the in-cluster Redis with the placeholder password
            assert rest == "redis://:@clip-relay-redis:6379/0", v
        else:
            assert re.fullmatch(r"[a-z]*:?", rest), f"{k}: unexpected content {v!r}"
    assert values["REDIS_PASSWORD"] == "REPLACE_ME"  # (the same as the URL's)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_redis_requires_the_secrets_password(
    name: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """The in-cluster Redis requires a password (the NetworkPolicy keeps other pods out only
    where the CNI enforces it), the Secret's REDIS_PASSWORD, also for its readiness probe."""
    redis = one(rendered[name], "StatefulSet", "clip-relay-redis")["spec"]["template"]["spec"]
    container = redis["containers"][0]
    args = container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    ref = {"name": SECRET_NAME, "key": "REDIS_PASSWORD"}
    assert env == {"REDIS_PASSWORD": ref, "REDISCLI_AUTH": ref}
    assert "valkey-cli" in " ".join(container["readinessProbe"]["exec"]["command"])


SECRET_LOOKING = re.compile(
    r"whsec_[A-Za-z0-9+/=]{8,}|sk_(live|test)_\w+|gh[pousr]_\w{20,}|AKIA[0-9A-Z]{16}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----|[A-Za-z0-9_-]{43}="  # e.g. a Fernet key
)


def test_no_real_looking_secret_anywhere_under_k8s() -> None:
    for path in K8S.rglob("*"):
        if path.is_file():
            found = SECRET_LOOKING.search(path.read_text())
            assert not found, f"{path}: looks like a real secret: {found.group(0)[:12]}..."


def test_secrets_per_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    # dev uses the placeholder template; prod ships no Secret (operators create it)
    dev_secrets = of_kind(rendered["dev"], "Secret")
    assert [s["metadata"]["name"] for s in dev_secrets] == [SECRET_NAME]
    assert not of_kind(rendered["prod"], "Secret"), "prod must not overwrite the real Secret"
    for name in OVERLAYS:
        for secret in of_kind(rendered[name], "Secret"):
            for value in secret.get("stringData", {}).values():
                assert "REPLACE_ME" in value


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_network_policies(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered[name]
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(objs, "NetworkPolicy")}
    pods = {
        w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in workloads(objs)
    }
    # default deny covers every pod of ours
    deny = policies["clip-relay-default-deny"]
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny
    assert "egress" not in deny
    assert all(selects(deny["podSelector"]["matchLabels"], labels) for labels in pods.values())

    def ports(rule: dict[str, Any]) -> set[tuple[str, int]]:
        return {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}

    # Redis: ingress on 6379 only from pods labelled part-of=clip-relay
    redis = policies["clip-relay-redis"]
    assert selects(redis["podSelector"]["matchLabels"], pods["clip-relay-redis"])
    assert set(redis["policyTypes"]) == {"Ingress", "Egress"}
    (rule,) = redis["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": PART_OF}}]
    assert ports(rule) == {("TCP", 6379)}
    assert not redis.get("egress")

    api = policies["clip-relay-api"]
    assert selects(api["podSelector"]["matchLabels"], pods["clip-relay-api"])
    assert not selects(api["podSelector"]["matchLabels"], pods["clip-relay-worker"])
    assert [ports(r) for r in api["ingress"]] == [{("TCP", 8080)}]
    worker = policies["clip-relay-worker"]
    assert selects(worker["podSelector"]["matchLabels"], pods["clip-relay-worker"])
    assert [ports(r) for r in worker["ingress"]] == [{("TCP", 9100)}]
    # out, both: Redis, DNS and the public internet on 80/443 (the worker's deliveries, and
    # the API's pings: it sends them itself)
    for policy in (api, worker):
        egress = policy["egress"]
        assert set().union(*(ports(r) for r in egress)) == {
            ("TCP", 6379),
            ("UDP", 53),
            ("TCP", 53),
            ("TCP", 443),
            ("TCP", 80),
        }
        internet = [r for r in egress if any("ipBlock" in t for t in r.get("to", []))]
        assert len(internet) == 1
        blocks = {t["ipBlock"]["cidr"]: set(t["ipBlock"]["except"]) for t in internet[0]["to"]}
        # private, shared, link-local, loopback, "this network", IETF, benchmarking,
        # multicast, reserved; and IPv6 forms that carry an IPv4 address (NAT64, 6to4: an
        # egress rule is by address, so a private one inside them would pass -- an
        # operator's review; the relay's SSRF check refuses them too). Not the IPv4-mapped
        # ::ffff:0:0/96: the API server refuses such an exception (Go reads it as an IPv4
        # network, not a subset of ::/0), and a mapped address goes out as IPv4 anyway.
        for cidr, excepted in blocks.items():
            outer = ipaddress.ip_network(cidr)
            for x in excepted:
                inner = ipaddress.ip_network(x)
                assert inner.version == outer.version and inner != outer, x
                assert inner.subnet_of(outer), x  # type: ignore[arg-type]
                assert inner.version == 4 or inner.network_address.ipv4_mapped is None, x
        assert {
            *("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"),
            *("169.254.0.0/16", "127.0.0.0/8", "0.0.0.0/8", "192.0.0.0/24"),
            *("198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4"),
        } <= blocks["0.0.0.0/0"]
        assert {
            *("fc00::/7", "fe80::/10", "::1/128"),
            *("64:ff9b::/96", "2002::/16"),
        } <= blocks["::/0"]
    # Redis egress rules point at the Redis pods
    for policy in (api, worker):
        redis_rules = [r for r in policy["egress"] if ("TCP", 6379) in ports(r)]
        (target,) = redis_rules[0]["to"]
        assert selects(target["podSelector"]["matchLabels"], pods["clip-relay-redis"])


def _redis_conf(text: str) -> dict[str, str]:
    conf = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            conf[name.lower()] = value.strip()
    return conf


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_redis_statefulset_persists(name: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered[name]
    sts = one(objs, "StatefulSet", "clip-relay-redis")
    assert sts["spec"]["replicas"] == 1, "arq needs one Redis (or Sentinel), not several"
    svc = one(objs, "Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    spec = sts["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    image = container["image"]
    pinned = r"(redis:7\.4|valkey/valkey:8\.1)[0-9.]*-alpine(@sha256:[0-9a-f]{64})?"
    assert re.fullmatch(pinned, image), image
    # the config comes from the generated ConfigMap, mounted where args say
    cm = config_map(objs, "clip-relay-redis-config")
    conf = _redis_conf(cm["data"]["redis.conf"])
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "everysec"
    assert conf["maxmemory-policy"] == "noeviction", "evicting arq/watch keys loses work"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    config_volume = [n for n, v in volumes.items() if "configMap" in v]
    assert [volumes[n]["configMap"]["name"] for n in config_volume] == [cm["metadata"]["name"]]
    assert container["args"][0] == f"{mounts[config_volume[0]]}/redis.conf"
    maxmemory = quantity(container["args"][container["args"].index("--maxmemory") + 1][:-1])
    assert maxmemory * 2**20 <= quantity(container["resources"]["limits"]["memory"]) / 2
    # AOF lands on the PVC
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert mounts[claim["metadata"]["name"]] == conf["dir"] == "/data"
    assert quantity(claim["spec"]["resources"]["requests"]["storage"]) >= 2**30
    assert container["readinessProbe"]
    assert container["livenessProbe"]


def test_overlays_differ_as_intended(rendered: dict[str, list[dict[str, Any]]]) -> None:
    namespaces = {}
    for name in OVERLAYS:
        objs = rendered[name]
        (ns,) = of_kind(objs, "Namespace")
        namespaces[name] = ns["metadata"]["name"]
        labels = ns["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        for obj in objs:
            if obj["kind"] != "Namespace":
                assert obj["metadata"]["namespace"] == ns["metadata"]["name"], key(obj)
    assert namespaces["dev"] != namespaces["prod"]

    def replicas(name: str) -> dict[str, int]:
        return {
            w["metadata"]["name"]: w["spec"]["replicas"]
            for w in of_kind(rendered[name], "Deployment")
        }

    def memory_limit(name: str, kind: str, obj_name: str) -> float:
        obj = one(rendered[name], kind, obj_name)
        (container,) = obj["spec"]["template"]["spec"]["containers"]
        return quantity(container["resources"]["limits"]["memory"])

    assert replicas("base") == {"clip-relay-api": 2, "clip-relay-worker": 2}
    assert set(replicas("dev").values()) == {1}
    assert min(replicas("prod").values()) > 2
    for kind, obj_name in (
        ("Deployment", "clip-relay-api"),
        ("Deployment", "clip-relay-worker"),
        ("StatefulSet", "clip-relay-redis"),
    ):
        assert memory_limit("dev", kind, obj_name) < memory_limit("base", kind, obj_name)
        assert memory_limit("prod", kind, obj_name) > memory_limit("base", kind, obj_name)
    # images: dev runs a local build, prod a released version
    for name, tag in (("dev", "dev"), ("prod", "0.1.0")):
        for obj_name in ("clip-relay-api", "clip-relay-worker"):
            (container,) = one(rendered[name], "Deployment", obj_name)["spec"]["template"]["spec"][
                "containers"
            ]
            assert container["image"].endswith(f"clip-relay:{tag}")


def test_json6902_and_merge_helpers() -> None:
    obj: dict[str, Any] = {"a": {"b": [1, 2]}, "c": [{"name": "x", "v": 1}]}
    apply_json6902(
        obj,
        [
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "replace", "path": "/a/b/0", "value": 0},
            {"op": "remove", "path": "/a/b/1"},
            {"op": "add", "path": "/d~1e", "value": True},
        ],
    )
    assert obj["a"]["b"] == [0, 3]
    assert obj["d/e"] is True
    with pytest.raises(KustomizeError):
        apply_json6902(obj, [{"op": "replace", "path": "/missing", "value": 1}])
    merged = _merge(obj, {"c": [{"name": "x", "v": 2}, {"name": "y"}], "a": None})
    assert merged["c"] == [{"name": "x", "v": 2}, {"name": "y"}]
    assert "a" not in merged


def test_content_hash_matches_kustomize_examples() -> None:
    # Values produced by kustomize 5.5 for `configMapGenerator: [{name: x, literals: [A=b]}]`
    assert content_hash({"kind": "ConfigMap", "data": {"A": "b"}}) == "b9t2424hkf"
