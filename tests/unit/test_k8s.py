"""The Kubernetes manifests (k8s/), checked offline as they would be applied.

Both overlays are rendered with kustomize (kubectl's) from a copy of k8s/ and of the monitoring
configs, with Grafana's dashboards generated into the copy (they are built, never committed:
monitoring/kustomization.yaml turns them into a ConfigMap). Then:

- `kubernetes-validate --strict` against the EKS cluster's Kubernetes version; it has no schema
  for the External Secrets kinds (it warns and passes them), so those are validated here against
  strict subsets of their CRDs (k8s/schemas/), and any other kind without a schema fails;
- checkov on both renders, with the skip list of k8s/.checkov.yaml (a reason on every skip);
- what no schema says: the restricted security context and resources of every container, a
  default-deny network policy in every namespace and exactly the flows in use, the service
  accounts' permissions against the table below, the API's replicas, probes, PDB and HPA, the
  pipeline's single writer, the writable paths of read-only images, and the names the
  monitoring configs and the CloudFormation templates rely on.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from monitoring.grafana import dashboards
from recsys.cli import build_parser
from recsys.settings import REPO_ROOT

K8S = REPO_ROOT / "k8s"
MONITORING = REPO_ROOT / "monitoring"
CLOUDFORMATION = K8S / "aws" / "cloudformation"
BIN = Path(sys.executable).parent
KUBECTL = BIN / "kubectl"
KUBERNETES_VALIDATE = BIN / "kubernetes-validate"
CHECKOV = REPO_ROOT / ".tools" / "checkov" / "bin" / "checkov"
OVERLAYS = ("local", "aws")
NAMESPACE = "recsys"
# the cluster's version (k8s/aws/cloudformation/eks.yaml, KubernetesVersion), and the newest
# kubernetes-validate knows
KUBERNETES_VERSIONS = ("1.33", "1.37")

# kinds kubernetes-validate has no schema for, and the schema each is validated with instead
CRD_SCHEMAS = {
    ("external-secrets.io/v1", "ExternalSecret"): "externalsecret-external-secrets-v1.json",
    ("external-secrets.io/v1", "SecretStore"): "secretstore-external-secrets-v1.json",
    ("generators.external-secrets.io/v1alpha1", "Password"): "password-generators-v1alpha1.json",
}

# What each service account may do through the Kubernetes API: (apiGroup, resource, verb).
# Nothing, for every one of them: Prometheus scrapes static targets, configs and secrets are
# mounted files. A Role added later must be declared here first.
PERMISSIONS: dict[str, set[tuple[str, str, str]]] = {
    "api": set(),
    "monitoring": set(),
    "pipeline": set(),
    "prometheus": set(),
    "alertmanager": set(),
    "grafana": set(),
}
READ_VERBS = {"get", "list", "watch"}

# The flows between the namespace's workloads (by app.kubernetes.io/name): (from, to, port).
FLOWS = {
    ("prometheus", "api", 8000),
    ("prometheus", "monitoring", 8001),
    ("prometheus", "alertmanager", 9093),
    ("alertmanager", "monitoring", 8001),
    ("grafana", "prometheus", 9090),
    ("grafana", "alertmanager", 9093),
}
# what comes in from outside the namespace (the ingress controller): (to, port)
FROM_OUTSIDE = {("api", 8000), ("grafana", 3000)}
# what goes out of the namespace, by overlay: (from, port)
DNS = {(name, 53) for name in PERMISSIONS}
TO_OUTSIDE = {
    "local": DNS,
    # S3 over HTTPS and the EKS Pod Identity agent (169.254.170.23:80)
    "aws": DNS | {(name, port) for name in ("api", "monitoring", "pipeline") for port in (443, 80)},
}

POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
# the volume types Pod Security "restricted" admits
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
OUR_IMAGES = ("recsys-api", "recsys-monitoring", "recsys-pipeline")
# settings naming a folder the process writes into: each must be on a volume (the images'
# root file systems are read-only)
WRITTEN_PATHS = (
    "RECSYS_DATA_DIR",
    "RECSYS_API_CACHE_DIR",
    "DBT_TARGET_PATH",
    "DBT_LOG_PATH",
    "HOME",
    "MPLCONFIGDIR",
)


# --- rendering -------------------------------------------------------------------------------


def _require(binary: Path) -> Path:
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing: run `make install tools` (make test does)")
    return binary


def _monitoring_files() -> list[str]:
    """The files monitoring/kustomization.yaml makes ConfigMaps of, relative to monitoring/."""
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    return [f for generator in kustomization["configMapGenerator"] for f in generator["files"]]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of k8s/ and of monitoring/'s config files, with the dashboards generated."""
    root = tmp_path_factory.mktemp("k8s-tree")
    shutil.copytree(K8S, root / "k8s", ignore=shutil.ignore_patterns("cloudformation"))
    (root / "monitoring").mkdir()
    shutil.copy2(MONITORING / "kustomization.yaml", root / "monitoring")
    dashboards.write(root / "monitoring" / "grafana" / "dashboards")
    for name in _monitoring_files():
        if not name.startswith("grafana/dashboards/"):
            (root / "monitoring" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(MONITORING / name, root / "monitoring" / name)
    return root


def _kustomize(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_require(KUBECTL)), "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def renders(tree: Path) -> dict[str, Path]:
    """Each overlay rendered into one YAML file."""
    out = {}
    for overlay in OVERLAYS:
        result = _kustomize(tree / "k8s" / "overlays" / overlay)
        assert result.returncode == 0, result.stderr
        path = tree / "rendered" / f"{overlay}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(result.stdout)
        out[overlay] = path
    return out


@pytest.fixture(scope="module")
def manifests(renders: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    return {
        overlay: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for overlay, path in renders.items()
    }


def _of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in _of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _pod_template(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod template (metadata and spec) of a workload."""
    if doc["kind"] == "Pod":
        return doc
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    return doc["spec"]["template"]


def _workloads(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in POD_KINDS:
            yield f"{doc['kind']}/{doc['metadata']['name']}", _pod_template(doc)


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """A container's environment: its ConfigMaps' (envFrom) and its own variables."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(_one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({v["name"]: v["value"] for v in container.get("env", []) if "value" in v})
    return env


def test_overlays_render_every_resource_in_the_namespace(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    cluster_scoped = {"Namespace", "StorageClass", "ClusterRole", "ClusterRoleBinding"}
    for overlay, docs in manifests.items():
        assert [d["metadata"]["name"] for d in _of_kind(docs, "Namespace")] == [NAMESPACE]
        stray = [
            f"{d['kind']}/{d['metadata']['name']}"
            for d in docs
            if d["kind"] not in cluster_scoped and d["metadata"].get("namespace") != NAMESPACE
        ]
        assert not stray, f"{overlay}: outside {NAMESPACE}: {stray}"


def test_monitoring_kustomization_names_every_config_file() -> None:
    """Kustomize takes no globs: a rule file, provisioning file or dashboard left out of
    monitoring/kustomization.yaml would silently not be deployed."""
    listed = set(_monitoring_files())
    on_disk = {
        str(path.relative_to(MONITORING))
        for folder in ("prometheus/rules", "alertmanager", "grafana/provisioning")
        for path in (MONITORING / folder).rglob("*.yml")
    } | {"prometheus/prometheus.yml"}
    built = {f"grafana/dashboards/{uid}.json" for uid in dashboards.build()}
    assert listed == on_disk | built


def test_projected_volumes_put_every_config_file_back(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    """A ConfigMap holds no folders: the projected volumes list each key with its path, so a
    key added to the ConfigMap and not to the volume would be missing in the pod."""
    docs = manifests["local"]
    for _, template in _workloads(docs):
        for volume in template["spec"].get("volumes", []):
            for source in volume.get("projected", {}).get("sources", []):
                if "configMap" not in source:
                    continue
                keys = set(_one(docs, "ConfigMap", source["configMap"]["name"])["data"])
                assert {item["key"] for item in source["configMap"].get("items", [])} == keys
    paths = {
        item["path"]
        for volume in _pod_template(_one(docs, "Deployment", "prometheus"))["spec"]["volumes"]
        for source in volume.get("projected", {}).get("sources", [])
        for item in source.get("configMap", {}).get("items", [])
    }
    rules = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())
    assert rules["rule_files"] == ["rules/*.yml"]  # relative to prometheus.yml, mounted together
    assert {p for p in paths if p.startswith("rules/")} == {
        f"rules/{p.name}" for p in (MONITORING / "prometheus" / "rules").glob("*.yml")
    }


def test_dashboards_are_mounted_where_the_provider_reads_them(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    provider = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "dashboards" / "dashboards.yml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    spec = _pod_template(_one(manifests["local"], "Deployment", "grafana"))["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    configmap = _one(manifests["local"], "ConfigMap", volumes[mounts[path]]["configMap"]["name"])
    assert set(configmap["data"]) == {f"{uid}.json" for uid in dashboards.build()}


# --- schemas ---------------------------------------------------------------------------------


def _kubernetes_validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_require(KUBERNETES_VALIDATE)), "--strict", "--quiet", "-k", version, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _crd_validator(doc: dict[str, Any]) -> jsonschema.Draft202012Validator:
    schema_file = CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]
    schema = json.loads((K8S / "schemas" / schema_file).read_text())
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_validate_strict(
    renders: dict[str, Path],
    manifests: dict[str, list[dict[str, Any]]],
    overlay: str,
    version: str,
) -> None:
    result = _kubernetes_validate(renders[overlay], version)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "ERROR" not in output and "FATAL" not in output, output
    # kubernetes-validate passes a kind it has no schema for with a warning: each must be one
    # of the custom resources validated below, never a typo in a built-in kind's apiVersion
    unknown = set(re.findall(r"find schema for kind (\S+) with api version (\S+)", output))
    assert unknown <= {(kind, api) for api, kind in CRD_SCHEMAS}, output
    for doc in manifests[overlay]:
        if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS:
            _crd_validator(doc).validate(doc)
        else:
            assert (doc["kind"], doc["apiVersion"]) not in unknown


def test_a_misspelt_field_fails_validation(
    manifests: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """The validation above would catch a typo: `replicas` as `replicaz` fails it, in a built-in
    kind (kubernetes-validate) and in a custom one (the CRD subset)."""
    deployment = copy.deepcopy(_one(manifests["aws"], "Deployment", "api"))
    deployment["spec"]["replicaz"] = deployment["spec"].pop("replicas")
    path = tmp_path / "misspelt.yaml"
    path.write_text(yaml.safe_dump(deployment))
    result = _kubernetes_validate(path, KUBERNETES_VERSIONS[0])
    assert result.returncode != 0
    assert "replicaz" in result.stdout

    secret = copy.deepcopy(_one(manifests["aws"], "ExternalSecret", "recsys-api-keys"))
    secret["spec"]["data"][0]["secretkey"] = secret["spec"]["data"][0].pop("secretKey")
    errors = list(_crd_validator(secret).iter_errors(secret))
    assert errors and any("secretkey" in e.message for e in errors)


# --- checkov ---------------------------------------------------------------------------------

CHECKOV_CONFIG = K8S / ".checkov.yaml"


def test_checkov_skips_have_reasons() -> None:
    config = yaml.safe_load(CHECKOV_CONFIG.read_text())
    skips = config.get("skip-check", [])
    reasons = dict(
        re.findall(r"^\s*-\s*(CKV\w+)\s*#\s*(.+?)\s*$", CHECKOV_CONFIG.read_text(), re.M)
    )
    assert set(skips) == set(reasons), "every skip on a line of its own, with '# <reason>'"
    for check, reason in reasons.items():
        assert len(reason.split()) >= 8, f"{check}: say why it is skipped ({reason!r})"
    assert len(skips) <= 3, "a short list: fix the manifests instead"


def test_checkov_reports_no_failed_check(renders: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "rendered"
    folder.mkdir()
    for path in renders.values():
        shutil.copy2(path, folder)
    result = subprocess.run(
        [
            str(_require(CHECKOV)),
            "--config-file",
            str(CHECKOV_CONFIG),
            "--skip-download",
            "-d",
            str(folder),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    assert [r["check_type"] for r in reports] == ["kubernetes"]
    summary = reports[0]["summary"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})"
        for c in reports[0]["results"]["failed_checks"]
    ]
    assert summary["failed"] == 0, "\n".join(failed)
    assert summary["passed"] > 500  # the checks ran on both renders
    assert result.returncode == 0


# --- what the schemas cannot say -------------------------------------------------------------


def _security_problems(name: str, spec: dict[str, Any]) -> list[str]:
    """What breaks Pod Security "restricted" (and our own rules) in a pod spec."""
    problems = []
    pod = spec.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{name}: {field}")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"{name}: volume {volume['name']} is {kinds}")
    for container in _containers(spec):
        where = f"{name}/{container['name']}"
        sc = container.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        capabilities = sc.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []) or capabilities.get("add"):
            problems.append(f"{where}: capabilities must drop ALL and add none")
        if sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod.get("runAsUser")) in (None, 0):
            problems.append(f"{where}: no non-zero runAsUser")
        seccomp = sc.get("seccompProfile", pod.get("seccompProfile", {}))
        if seccomp.get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(part, {}):
                    problems.append(f"{where}: no {resource} in {part}")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_restricted_and_bounded(
    manifests: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    workloads = list(_workloads(manifests[overlay]))
    assert len(workloads) == 9  # 5 Deployments, 4 CronJobs
    problems = [p for name, t in workloads for p in _security_problems(name, t["spec"])]
    assert not problems, "\n".join(problems)


def test_the_security_check_catches_a_loose_container(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    spec = copy.deepcopy(_pod_template(_one(manifests["aws"], "Deployment", "api"))["spec"])
    spec["initContainers"] = [copy.deepcopy(spec["containers"][0]) | {"name": "init"}]
    del spec["initContainers"][0]["securityContext"]["readOnlyRootFilesystem"]
    del spec["containers"][0]["resources"]["limits"]
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    problems = _security_problems("api", spec)
    assert any("api/init: readOnlyRootFilesystem" in p for p in problems)
    assert any("api/api: no cpu in limits" in p for p in problems)
    assert any("volume host" in p for p in problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_namespace_denies_by_default(
    manifests: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = manifests[overlay]
    namespaces = {d["metadata"]["name"] for d in _of_kind(docs, "Namespace")}
    namespaces |= {d["metadata"]["namespace"] for d in docs if "namespace" in d["metadata"]}
    for namespace in namespaces:
        deny = [
            p
            for p in _of_kind(docs, "NetworkPolicy")
            if p["metadata"].get("namespace") == namespace
            and p["spec"]["podSelector"] in ({}, None)
            and {"Ingress", "Egress"} <= set(p["spec"].get("policyTypes", []))
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
        ]
        assert deny, f"{overlay}: no default-deny (ingress and egress) policy in {namespace}"


def _matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) against labels."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


ANYWHERE: dict[str, Any] = {"anywhere": True}  # a rule without from/to: every peer


def _peers(rule: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return rule.get(key) or [ANYWHERE]


def _peer_is(peer: dict[str, Any], labels: dict[str, str], namespace: dict[str, str]) -> bool:
    """Whether a policy peer (from/to) selects a pod of this namespace with these labels."""
    if peer is ANYWHERE:
        return True
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer and not _matches(peer["namespaceSelector"], namespace):
        return False
    return _matches(peer.get("podSelector"), labels)


def _leaves_namespace(peer: dict[str, Any]) -> bool:
    """Whether a peer may be outside the namespace: an address block, anywhere, or namespaces
    not pinned to this one by name."""
    if peer is ANYWHERE or "ipBlock" in peer:
        return True
    selector = peer.get("namespaceSelector")
    if selector is None:
        return False
    return (selector.get("matchLabels") or {}).get("kubernetes.io/metadata.name") != NAMESPACE


def _port_in(rule: dict[str, Any], port: int, protocol: str = "TCP") -> bool:
    ports = rule.get("ports")
    return not ports or any(
        p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports
    )


def _flows(docs: list[dict[str, Any]]) -> tuple[set[Any], set[Any], set[Any]]:
    """The flows the network policies allow: between the namespace's workloads (from, to,
    port), from outside the namespace (to, port), and out of it (from, port)."""
    namespace = _one(docs, "Namespace", NAMESPACE)["metadata"].get("labels", {})
    namespace = {**namespace, "kubernetes.io/metadata.name": NAMESPACE}
    pods = {}
    for _, template in _workloads(docs):
        labels = template["metadata"]["labels"]
        ports = {
            p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])
        }
        pods.setdefault(labels["app.kubernetes.io/name"], (labels, set()))[1].update(ports)
    policies = _of_kind(docs, "NetworkPolicy")

    def rules(labels: dict[str, str], direction: str) -> list[dict[str, Any]]:
        selecting = [p for p in policies if _matches(p["spec"]["podSelector"], labels)]
        assert any(direction.capitalize() in p["spec"]["policyTypes"] for p in selecting)
        return [r for p in selecting for r in p["spec"].get(direction, [])]

    inside, from_outside, to_outside = set(), set(), set()
    for dst, (dst_labels, ports) in pods.items():
        for port in ports:
            ingress = [r for r in rules(dst_labels, "ingress") if _port_in(r, port)]
            for src, (src_labels, _) in pods.items():
                egress = [r for r in rules(src_labels, "egress") if _port_in(r, port)]
                admitted = any(
                    _peer_is(peer, src_labels, namespace)
                    for rule in ingress
                    for peer in _peers(rule, "from")
                )
                sent = any(
                    _peer_is(peer, dst_labels, namespace)
                    for rule in egress
                    for peer in _peers(rule, "to")
                )
                if admitted and sent:
                    inside.add((src, dst, port))
            if any(_leaves_namespace(p) for rule in ingress for p in _peers(rule, "from")):
                from_outside.add((dst, port))
    for src, (src_labels, _) in pods.items():
        for rule in rules(src_labels, "egress"):
            if any(_leaves_namespace(peer) for peer in _peers(rule, "to")):
                # a rule without ports opens every port: it shows as port 0
                to_outside |= {(src, p.get("port", 0)) for p in rule.get("ports") or [{}]}
    return inside, from_outside, to_outside


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_the_flows_in_use(
    manifests: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    inside, from_outside, to_outside = _flows(manifests[overlay])
    assert inside == FLOWS
    assert from_outside == FROM_OUTSIDE
    assert to_outside == TO_OUTSIDE[overlay]


def test_the_monitoring_configs_name_services_that_exist(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    """prometheus.yml's targets, Alertmanager's webhook and Grafana's data sources name hosts
    and ports: each must be a Service of the render, on that port, in front of a pod."""
    prometheus = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())
    alertmanager = yaml.safe_load((MONITORING / "alertmanager" / "alertmanager.yml").read_text())
    grafana = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "datasources" / "datasources.yml").read_text()
    )
    addresses = [
        target
        for job in prometheus["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
        if not target.startswith("localhost:")
    ]
    addresses += [
        t
        for a in prometheus["alerting"]["alertmanagers"]
        for s in a["static_configs"]
        for t in s["targets"]
    ]
    urls = [w["url"] for r in alertmanager["receivers"] for w in r["webhook_configs"]]
    urls += [source["url"] for source in grafana["datasources"]]
    addresses += [re.sub(r"^https?://([^/]+).*$", r"\1", url) for url in urls]
    assert len(addresses) == 6
    for overlay, docs in manifests.items():
        pods = [t["metadata"]["labels"] for _, t in _workloads(docs)]
        for address in addresses:
            host, port = address.split(":")
            service = _one(docs, "Service", host)
            assert int(port) in {p["port"] for p in service["spec"]["ports"]}, (overlay, address)
            assert any(_matches({"matchLabels": service["spec"]["selector"]}, p) for p in pods)


def _rbac_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Bindings that give a service account more than PERMISSIONS declares, roles granting
    more than reading what they name, and tokens mounted for accounts with nothing to do."""
    problems = []
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"].endswith("Role")}
    for (kind, name), role in roles.items():
        for rule in role.get("rules", []):
            verbs = set(rule.get("verbs", []))
            if not verbs <= READ_VERBS:
                problems.append(f"{kind}/{name} grants {sorted(verbs - READ_VERBS)}")
            if "*" in rule.get("resources", []) + rule.get("apiGroups", []):
                problems.append(f"{kind}/{name} names no resource (*)")
    granted: dict[str, set[tuple[str, str, str]]] = {sa: set() for sa in PERMISSIONS}
    for binding in [d for d in docs if d["kind"].endswith("RoleBinding")]:
        role = roles.get((binding["roleRef"]["kind"], binding["roleRef"]["name"]))
        for subject in binding.get("subjects", []):
            if subject["kind"] != "ServiceAccount":
                problems.append(f"{binding['metadata']['name']} binds a {subject['kind']}")
                continue
            rules = role["rules"] if role else [{"verbs": ["*"], "resources": ["*"]}]
            granted.setdefault(subject["name"], set()).update(
                (group, resource, verb)
                for rule in rules
                for group in rule.get("apiGroups", [""])
                for resource in rule.get("resources", [])
                for verb in rule.get("verbs", [])
            )
    for account, grants in granted.items():
        extra = grants - PERMISSIONS.get(account, set())
        if extra:
            problems.append(f"serviceaccount {account} is granted {sorted(extra)}")
    accounts = {d["metadata"]["name"]: d for d in _of_kind(docs, "ServiceAccount")}
    for name, template in _workloads(docs):
        spec = template["spec"]
        account = spec.get("serviceAccountName", "default")
        if account not in accounts:
            problems.append(f"{name} runs as service account {account}, not one of ours")
            continue
        if not granted.get(account) and (
            spec.get("automountServiceAccountToken") is not False
            or accounts[account].get("automountServiceAccountToken") is not False
        ):
            problems.append(f"{name}: a token is mounted for {account}, which uses no API")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_accounts_have_only_what_they_use(
    manifests: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = manifests[overlay]
    assert {d["metadata"]["name"] for d in _of_kind(docs, "ServiceAccount")} == set(PERMISSIONS)
    assert {
        _pod_template(d)["spec"]["serviceAccountName"] for d in docs if d["kind"] in POD_KINDS
    } == set(PERMISSIONS)
    assert not _rbac_problems(docs)


def test_the_rbac_check_catches_a_grant(manifests: dict[str, list[dict[str, Any]]]) -> None:
    docs = copy.deepcopy(manifests["aws"])
    docs.append(
        {
            "kind": "Role",
            "metadata": {"name": "peek", "namespace": NAMESPACE},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]}],
        }
    )
    docs.append(
        {
            "kind": "RoleBinding",
            "metadata": {"name": "peek", "namespace": NAMESPACE},
            "roleRef": {"kind": "Role", "name": "peek"},
            "subjects": [{"kind": "ServiceAccount", "name": "api", "namespace": NAMESPACE}],
        }
    )
    problems = _rbac_problems(docs)
    assert "Role/peek grants ['create']" in problems
    assert any(p.startswith("serviceaccount api is granted") for p in problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_is_replicated_probed_and_autoscaled(
    manifests: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = manifests[overlay]
    deployment = _one(docs, "Deployment", "api")
    template = _pod_template(deployment)
    labels = template["metadata"]["labels"]
    assert deployment["spec"]["replicas"] >= 2
    (container,) = template["spec"]["containers"]
    assert container["command"] == ["recsys", "serve", "--host", "0.0.0.0", "--port", "8000"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert port == 8000
    probes = {kind: container[f"{kind}Probe"] for kind in ("startup", "readiness", "liveness")}
    assert probes["startup"]["httpGet"]["path"] == "/readyz"
    assert probes["readiness"]["httpGet"]["path"] == "/readyz"
    assert probes["liveness"]["httpGet"]["path"] == "/healthz"
    startup = probes["startup"]
    # the snapshot's download and load: minutes, not the default 30 s
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    spread = {c["topologyKey"] for c in template["spec"]["topologySpreadConstraints"]}
    assert spread == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}

    (pdb,) = [
        p for p in _of_kind(docs, "PodDisruptionBudget") if _matches(p["spec"]["selector"], labels)
    ]
    assert pdb["spec"].get("minAvailable", 0) >= 1 or pdb["spec"].get("maxUnavailable") == 1
    (hpa,) = _of_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "api",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]

    # the keys: a Secret mounted as a file and named by RECSYS_API_KEYS_FILE, never a variable
    env = _env(docs, container)
    assert "RECSYS_API_KEYS" not in env
    assert not any("valueFrom" in v for v in container.get("env", []))
    keys_file = Path(env["RECSYS_API_KEYS_FILE"])
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(keys_file.parent)]
    assert mount.get("readOnly") is True
    assert volumes[mount["name"]]["secret"]["secretName"] == "recsys-api-keys"
    assert env["RECSYS_API_CACHE_DIR"] == "/var/cache/recsys"
    assert env["RECSYS_LAKE_URI"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_written_paths_are_volumes(
    manifests: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """Read-only root file systems: /tmp and every folder a setting names for writing is a
    volume, and no secret or ConfigMap mount is writable."""
    docs = manifests[overlay]
    for name, template in _workloads(docs):
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        for container in _containers(template["spec"]):
            mounts = container.get("volumeMounts", [])
            writable = [
                m["mountPath"]
                for m in mounts
                if not m.get("readOnly")
                and ({"emptyDir", "persistentVolumeClaim"} & set(volumes[m["name"]]))
            ]
            for mount in mounts:
                if {"secret", "configMap", "projected"} & set(volumes[mount["name"]]):
                    assert mount.get("readOnly") is True, (name, mount)
            if not container["image"].split("/")[-1].startswith(OUR_IMAGES):
                continue
            env = _env(docs, container)
            paths = ["/tmp"] + [value for key, value in env.items() if key in WRITTEN_PATHS]
            if env.get("RECSYS_LAKE_URI", "").startswith("/"):  # a mounted lake is written too
                paths.append(env["RECSYS_LAKE_URI"])
            for path in paths:
                assert any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable), (
                    f"{overlay} {name}: {path} is not on a writable volume"
                )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pipeline_keeps_one_writer(
    manifests: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """Every job holds an exclusive flock on a lock file in the one data volume they share,
    for all its steps; no job overlaps its own next run; nothing else mounts that volume."""
    docs = manifests[overlay]
    jobs = _of_kind(docs, "CronJob")
    assert {j["metadata"]["name"]: j["spec"].get("suspend", False) for j in jobs} == {
        "pipeline-monitor": False,
        "pipeline-features": False,
        "pipeline-training": False,
        "pipeline-run": True,  # by hand only (kubectl create job --from=cronjob/pipeline-run)
    }
    commands = {
        command
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
        for command in action.choices
    }
    claims = set()
    for job in jobs:
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        spec = _pod_template(job)["spec"]
        (container,) = spec["containers"]
        env = _env(docs, container)
        data_dir = env["RECSYS_DATA_DIR"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == data_dir]
        claims.add(volumes[mount["name"]]["persistentVolumeClaim"]["claimName"])
        command = container["command"]
        assert command[0] == "flock"
        options = list(itertools.takewhile(lambda a: a.startswith("-"), command[1:]))
        lock = command[1 + len(options)]
        assert "--exclusive" in options and Path(lock).parent == Path(data_dir)
        # the steps run under flock: recsys itself, or a shell script of recsys commands
        steps = command[2 + len(options) :]
        script = steps[-1] if steps[0] == "sh" else " ".join(steps)
        used = re.findall(r"(?:^|\s)recsys (\w+)", script)
        assert used and set(used) <= commands, used
    assert len(claims) == 1
    (claim,) = claims
    for kind in ("Deployment", "StatefulSet", "DaemonSet"):
        for doc in _of_kind(docs, kind):
            for volume in _pod_template(doc)["spec"].get("volumes", []):
                assert volume.get("persistentVolumeClaim", {}).get("claimName") != claim
    pvc = _one(docs, "PersistentVolumeClaim", claim)
    expected = "ReadWriteMany" if overlay == "aws" else "ReadWriteOnce"
    assert pvc["spec"]["accessModes"] == [expected]


def test_local_overlay(manifests: dict[str, list[dict[str, Any]]]) -> None:
    docs = manifests["local"]
    for name, template in _workloads(docs):
        for container in template["spec"]["containers"]:
            if container["image"].startswith(OUR_IMAGES):
                assert container["image"].endswith(":local"), name
                assert container["imagePullPolicy"] == "IfNotPresent", name
    secrets = {d["metadata"]["name"] for d in _of_kind(docs, "Secret")}
    assert secrets == {"recsys-api-keys", "recsys-webhook-token", "grafana-admin"}


def test_aws_overlay(manifests: dict[str, list[dict[str, Any]]]) -> None:
    docs = manifests["aws"]
    for name, template in _workloads(docs):
        for container in template["spec"]["containers"]:
            assert container["imagePullPolicy"] == "Always", name  # checkov's CKV_K8S_15
            image = container["image"].split(":")[0].split("/")[-1]
            if image in OUR_IMAGES:
                assert re.match(
                    r"\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/", container["image"]
                )
    # no Secret in the manifests: External Secrets makes each Secret a pod mounts
    assert not _of_kind(docs, "Secret")
    made = {d["spec"]["target"]["name"] for d in _of_kind(docs, "ExternalSecret")}
    mounted = {
        source["secret"].get("secretName") or source["secret"].get("name")
        for _, template in _workloads(docs)
        for volume in template["spec"]["volumes"]
        for source in [volume, *volume.get("projected", {}).get("sources", [])]
        if "secret" in source
    }
    assert mounted == made
    stores = {d["metadata"]["name"] for d in _of_kind(docs, "SecretStore")}
    for secret in _of_kind(docs, "ExternalSecret"):
        if "secretStoreRef" in secret["spec"]:
            assert secret["spec"]["secretStoreRef"]["name"] in stores
    # EFS: one StorageClass, every claim on it
    (storage_class,) = _of_kind(docs, "StorageClass")
    assert storage_class["provisioner"] == "efs.csi.aws.com"
    assert storage_class["parameters"]["provisioningMode"] == "efs-ap"
    assert storage_class["parameters"]["uid"] == storage_class["parameters"]["gid"] == "10001"
    claims = _of_kind(docs, "PersistentVolumeClaim")
    assert {c["metadata"]["name"] for c in claims} == {
        "pipeline-data",
        "api-snapshot-cache",
        "prometheus-data",
        "alertmanager-data",
    }
    assert {c["spec"]["storageClassName"] for c in claims} == {storage_class["metadata"]["name"]}
    lake = _one(docs, "ConfigMap", _recsys_config_name(docs))["data"]["RECSYS_LAKE_URI"]
    assert lake.startswith("s3://")


def _recsys_config_name(docs: list[dict[str, Any]]) -> str:
    (name,) = [
        d["metadata"]["name"]
        for d in _of_kind(docs, "ConfigMap")
        if d["metadata"]["name"].startswith("recsys-config-")
    ]
    return name


# --- the CloudFormation templates' names -----------------------------------------------------


class _CloudFormationLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (!Ref, !Sub, ...) read as {"Fn": value}."""


def _short_form(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {suffix: value}


_CloudFormationLoader.add_multi_constructor("!", _short_form)


def _template(name: str) -> dict[str, Any]:
    path = CLOUDFORMATION / name
    assert path.exists(), f"{path} is missing: the manifests are checked against it"
    loaded: dict[str, Any] = yaml.load(path.read_text(), Loader=_CloudFormationLoader)
    return loaded


def _resolve(template: dict[str, Any], value: Any) -> Any:
    """A value with !Ref and !Sub of the template's parameters replaced by their defaults."""
    defaults = {k: v.get("Default") for k, v in template.get("Parameters", {}).items()}
    if isinstance(value, dict) and "Ref" in value:
        return defaults[value["Ref"]]
    if isinstance(value, dict) and "Sub" in value:
        return re.sub(r"\$\{(\w+)\}", lambda m: str(defaults[m.group(1)]), value["Sub"])
    return value


def test_cloudformation_binds_the_service_accounts_and_holds_the_secrets(
    manifests: dict[str, list[dict[str, Any]]],
) -> None:
    """EKS Pod Identity binds roles to (namespace, service account) names, and External
    Secrets reads secrets by name: both must agree with the aws overlay."""
    docs = manifests["aws"]
    iam = _template("iam.yaml")
    associations = {
        (
            _resolve(iam, r["Properties"]["Namespace"]),
            _resolve(iam, r["Properties"]["ServiceAccount"]),
        )
        for r in iam["Resources"].values()
        if r["Type"] == "AWS::EKS::PodIdentityAssociation"
    }
    accounts = {(NAMESPACE, d["metadata"]["name"]) for d in _of_kind(docs, "ServiceAccount")}
    needs_aws = {(NAMESPACE, name) for name in ("api", "monitoring", "pipeline")}
    assert needs_aws <= associations
    assert {a for a in associations if a[0] == NAMESPACE} <= accounts

    secrets = _template("secrets.yaml")
    names = {
        _resolve(secrets, r["Properties"]["Name"])
        for r in secrets["Resources"].values()
        if r["Type"] == "AWS::SecretsManager::Secret"
    }
    wanted = {
        item["remoteRef"]["key"]
        for d in _of_kind(docs, "ExternalSecret")
        for item in d["spec"].get("data", [])
    }
    assert wanted <= names

    storage = _template("storage.yaml")
    bucket = _resolve(storage, storage["Resources"]["LakeBucket"]["Properties"]["BucketName"])
    pattern = re.escape(bucket).replace(r"\$\{AWS::AccountId\}", r"\d{12}")
    pattern = pattern.replace(r"\$\{AWS::Region\}", r"[a-z0-9-]+")
    lake = _one(docs, "ConfigMap", _recsys_config_name(docs))["data"]["RECSYS_LAKE_URI"]
    prefix = _resolve(storage, {"Ref": "LakePrefix"})
    assert re.fullmatch(f"s3://{pattern}/{prefix}", lake), lake
