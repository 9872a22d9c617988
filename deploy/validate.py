#!/usr/bin/env python3
"""Validates everything under deploy/ (run by scripts/validate-deploy, which installs the
validators; see it for how).

1. deploy/kubernetes: every document against the Kubernetes OpenAPI schemas bundled by the
   `kubernetes-validate` package (strict: unknown fields are errors; an unknown kind is an
   error, not the package's warning), for the oldest and the newest Kubernetes we support.
2. deploy/compose/compose.yaml: against the compose-spec JSON schema vendored by
   `check-jsonschema` (`vendor.compose-spec`).
3. What no schema sees: kustomization.yaml lists exactly the manifests; selectors match pod
   labels; Secrets, keys, ServiceAccounts, namespaces and HPA targets that are referenced exist;
   named ports exist; every SLIPWAY_* variable is one the service's code reads; every peer
   endpoint names a Service (or compose service) listening on that port; the collector's
   pipelines use components it defines; the Dockerfile ships every binary the manifests run;
   the rack name leaves our namespaces out of `<rack>-<app>`; the admission policy's CEL
   compiles (`cel-python`) and allows and denies what it should.

Exits 1 listing every problem found, 0 when there is none.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

# Kubernetes versions validated against: the oldest we support (grpc probes are GA since 1.27,
# securityContext.appArmorProfile since 1.30) and the newest schemas the package bundles.
K8S_VERSIONS = ("1.30.0", "1.37.0")

# SLIPWAY_* names the manifests may set before the binary reads them, each with why (work of
# issue 6 landing in parallel). A name listed here that the code does read is fine; one that
# the code does not read and that is not listed fails.
_TLS = "gateway HTTPS (issue 6, transport security, in progress)"
PENDING_ENV = {
    ("slipway-rollout", "SLIPWAY_REDIS_URL"): "rollout --redis-url: the Redis Streams event bus "
                                              "(issue 6, in progress)",
    ("slipway-gateway", "SLIPWAY_DATA_DIR"): _TLS,
    ("slipway-gateway", "SLIPWAY_TLS_CERT"): _TLS,
    ("slipway-gateway", "SLIPWAY_TLS_KEY"): _TLS,
    ("slipway-gateway", "SLIPWAY_INSECURE_HTTP"): _TLS,
    **{(binary, "SLIPWAY_SERVICE_TOKEN_KEY"): "service tokens between the services "
                                              "(issue 6, transport security, in progress)"
       for binary in ("slipway-release", "slipway-build", "slipway-rollout", "slipway-gateway")},
}

# The binaries the manifests run, and the crate directories whose code may read their env.
BINARIES = {
    "slipway-release": ["services/release"],
    "slipway-build": ["services/build"],
    "slipway-rollout": ["services/rollout"],
    "slipway-gateway": ["services/gateway"],
}


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")


def load_all(path: Path, problems: Problems) -> list[dict]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        problems.add(str(path), f"not valid YAML: {e}")
        return []
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            problems.add(str(path), f"document {i + 1} is not a mapping")
    return [d for d in docs if isinstance(d, dict)]


def env_names_read_by_code(repo: Path) -> dict[str, set[str]]:
    """SLIPWAY_* string literals in each binary's crate plus the shared crates."""
    pattern = re.compile(r'"(SLIPWAY_[A-Z0-9_]+)"')

    def scan(dirs: list[Path]) -> set[str]:
        names: set[str] = set()
        for d in dirs:
            for f in d.rglob("*.rs"):
                if "tests" in f.relative_to(d).parts:
                    continue
                names.update(pattern.findall(f.read_text(errors="replace")))
        return names

    shared = scan([p / "src" for p in (repo / "crates").iterdir() if (p / "src").is_dir()])
    return {
        binary: shared | scan([repo / d / "src" for d in dirs])
        for binary, dirs in BINARIES.items()
    }


def check_env_names(where: str, binary: str, names: list[str], known: dict[str, set[str]],
                    problems: Problems) -> None:
    if binary not in known:
        problems.add(where, f"runs {binary!r}, which is none of {sorted(known)}")
        return
    for name in names:
        if (name.startswith("SLIPWAY_") and name not in known[binary]
                and (binary, name) not in PENDING_ENV):
            problems.add(where, f"sets {name}, which {binary} does not read "
                                f"(no such flag in its config.rs)")


# --- Kubernetes ---------------------------------------------------------------------------

def k8s_schema_check(path: Path, docs: list[dict], problems: Problems) -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    for doc in docs:
        ident = f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except SchemaNotFoundError:
                problems.add(f"{path} {ident}",
                             f"no schema for kind {doc.get('kind')!r} of apiVersion "
                             f"{doc.get('apiVersion')!r} in Kubernetes {version}")
                break
            except kubernetes_validate.ValidationError as e:
                at = ".".join(str(p) for p in e.path) or "(root)"
                problems.add(f"{path} {ident}", f"Kubernetes {version}: {at}: {e.message}")
                break
            except Exception as e:  # a malformed document (no apiVersion, say)
                problems.add(f"{path} {ident}", f"cannot validate: {e!r}")
                break


def pod_spec(doc: dict) -> dict | None:
    if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return ((doc.get("spec") or {}).get("template") or {}).get("spec")
    return None


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def k8s_reference_check(kdir: Path, by_file: dict[Path, list[dict]], repo: Path,
                        known_env: dict[str, set[str]], dockerfile: str,
                        problems: Problems) -> None:
    docs = [(p, d) for p, ds in by_file.items() for d in ds]
    namespaces = {d["metadata"]["name"] for _, d in docs if d.get("kind") == "Namespace"}
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding",
                      "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    secrets: dict[tuple[str, str], set[str]] = {}
    accounts: set[tuple[str, str]] = set()
    services: dict[tuple[str, str], dict[int, str]] = {}
    service_selectors: dict[tuple[str, str], dict] = {}
    policies = [d for _, d in docs if d.get("kind") == "NetworkPolicy"]
    workloads: list[tuple[Path, dict]] = []
    for path, d in docs:
        meta = d.get("metadata") or {}
        ns = meta.get("namespace")
        kind = d.get("kind")
        where = f"{path} {kind}/{meta.get('name')}"
        if kind not in cluster_scoped:
            if not ns:
                problems.add(where, "has no metadata.namespace (every object names its own)")
            elif ns not in namespaces:
                problems.add(where, f"namespace {ns!r} is not created by these manifests")
        if kind == "Secret":
            secrets[(ns, meta["name"])] = set((d.get("data") or {}) | (d.get("stringData") or {}))
        elif kind == "ServiceAccount":
            accounts.add((ns, meta["name"]))
        elif kind == "Service":
            services[(ns, meta["name"])] = {
                p.get("port"): p.get("targetPort") for p in (d.get("spec") or {}).get("ports", [])
            }
            service_selectors[(ns, meta["name"])] = (d.get("spec") or {}).get("selector") or {}
        if pod_spec(d) is not None:
            workloads.append((path, d))

    for path, d in workloads:
        meta, spec = d["metadata"], d["spec"]
        ns = meta.get("namespace")
        where = f"{path} {d['kind']}/{meta['name']}"
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not matches((spec.get("selector") or {}).get("matchLabels") or {}, labels):
            problems.add(where, "spec.selector.matchLabels does not match the pod template labels")
        pod = pod_spec(d) or {}
        sa = pod.get("serviceAccountName")
        if sa and (ns, sa) not in accounts:
            problems.add(where, f"serviceAccountName {sa!r} is not defined in namespace {ns}")
        for vol in pod.get("volumes") or []:
            name = (vol.get("secret") or {}).get("secretName")
            if name and (ns, name) not in secrets:
                problems.add(where, f"volume {vol.get('name')!r} mounts Secret {name!r}, "
                                    f"not defined in namespace {ns}")
        for c in pod.get("containers") or []:
            cwhere = f"{where} container {c.get('name')}"
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c.get(probe) or {}
                for kind in ("grpc", "tcpSocket", "httpGet"):
                    port = (p.get(kind) or {}).get("port")
                    if isinstance(port, str) and port not in ports:
                        problems.add(cwhere, f"{probe} uses port {port!r}, not a named port")
                    if isinstance(port, int) and port not in ports.values():
                        problems.add(cwhere, f"{probe} probes port {port}, which it does not expose")
            names = []
            for e in c.get("env") or []:
                names.append(e.get("name", ""))
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    keys = secrets.get((ns, ref.get("name")))
                    if keys is None:
                        problems.add(cwhere, f"{e['name']} reads Secret {ref.get('name')!r}, "
                                             f"not defined in namespace {ns}")
                    elif ref.get("key") not in keys:
                        problems.add(cwhere, f"{e['name']} reads key {ref.get('key')!r} of Secret "
                                             f"{ref.get('name')!r}, which has only {sorted(keys)}")
                if e.get("name", "").endswith("_ENDPOINTS"):
                    for target in check_k8s_endpoints(cwhere, e["name"], e.get("value", ""),
                                                      services, problems):
                        check_network_policy(cwhere, (ns, labels), target, services,
                                             service_selectors, workloads, policies, problems)
            binary = (c.get("command") or [""])[0]
            check_env_names(cwhere, binary, names, known_env, problems)
            if binary and not re.search(rf"\b{re.escape(binary)}\b", dockerfile):
                problems.add(cwhere, f"runs {binary!r}, which deploy/Dockerfile does not install")

    for path, d in docs:
        meta, spec = d.get("metadata") or {}, d.get("spec") or {}
        ns, kind = meta.get("namespace"), d.get("kind")
        where = f"{path} {kind}/{meta.get('name')}"
        selector = None
        if kind == "Service":
            selector = spec.get("selector") or {}
        elif kind == "PodDisruptionBudget":
            selector = (spec.get("selector") or {}).get("matchLabels") or {}
        elif kind == "NetworkPolicy":
            selector = (spec.get("podSelector") or {}).get("matchLabels") or {}
        if selector is not None and not any(
            w["metadata"].get("namespace") == ns
            and matches(selector, ((w["spec"].get("template") or {}).get("metadata") or {})
                        .get("labels") or {})
            for _, w in workloads
        ):
            problems.add(where, f"selector {selector} matches no pod template in namespace {ns}")
        if kind == "Service":
            for port in spec.get("ports") or []:
                target = port.get("targetPort")
                if isinstance(target, str) and not any(
                    w["metadata"].get("namespace") == ns
                    and any(target == p.get("name")
                            for c in (pod_spec(w) or {}).get("containers") or []
                            for p in c.get("ports") or [])
                    for _, w in workloads
                ):
                    problems.add(where, f"targetPort {target!r} is no container's named port")
        if kind == "HorizontalPodAutoscaler":
            ref = spec.get("scaleTargetRef") or {}
            if not any(w["kind"] == ref.get("kind") and w["metadata"]["name"] == ref.get("name")
                       and w["metadata"].get("namespace") == ns for _, w in workloads):
                problems.add(where, f"scaleTargetRef {ref.get('kind')}/{ref.get('name')} "
                                    f"does not exist in namespace {ns}")
            target = next((w for _, w in workloads if w["metadata"]["name"] == ref.get("name")
                           and w["metadata"].get("namespace") == ns), None)
            if target is not None and "replicas" in target["spec"]:
                problems.add(where, f"{ref.get('name')} sets spec.replicas, which fights the HPA "
                                    f"on every apply")
        if kind in ("ClusterRoleBinding", "RoleBinding"):
            for s in d.get("subjects") or []:
                if s.get("kind") == "ServiceAccount" and (s.get("namespace"), s.get("name")) not in accounts:
                    problems.add(where, f"binds ServiceAccount {s.get('namespace')}/{s.get('name')}, "
                                        f"which is not defined")
            ref = d.get("roleRef") or {}
            if not any(x.get("kind") == ref.get("kind") and x["metadata"]["name"] == ref.get("name")
                       for _, x in docs):
                problems.add(where, f"roleRef {ref.get('kind')}/{ref.get('name')} is not defined")


def env_value(docs: list[dict], binary: str, name: str) -> str | None:
    for d in docs:
        for c in (pod_spec(d) or {}).get("containers") or []:
            if (c.get("command") or [""])[0] == binary:
                for e in c.get("env") or []:
                    if e.get("name") == name:
                        return e.get("value")
    return None


def check_rack(kdir: Path, by_file: dict[Path, list[dict]], problems: Problems) -> None:
    """The rack name: app namespaces are `<rack>-<app>`, so no namespace of ours may start
    with `<rack>-`; the gateway reports the same name; the admission policy pins it."""
    docs = [d for ds in by_file.values() for d in ds]
    rack = env_value(docs, "slipway-rollout", "SLIPWAY_RACK") or "slipway"
    where = f"{kdir} SLIPWAY_RACK={rack}"
    for d in docs:
        if d.get("kind") == "Namespace" and d["metadata"]["name"].startswith(f"{rack}-"):
            problems.add(where, f"namespace {d['metadata']['name']} is `<rack>-<app>` of an app "
                                f"named {d['metadata']['name'][len(rack) + 1:]!r}: rename the rack")
    gateway_rack = env_value(docs, "slipway-gateway", "SLIPWAY_RACK_NAME")
    if gateway_rack not in (None, rack):
        problems.add(where, f"the gateway reports rack {gateway_rack!r} (SLIPWAY_RACK_NAME)")
    accounts = [d for d in docs if d.get("kind") == "ServiceAccount"
                and d["metadata"]["name"] == "slipway-rollout"]
    for d in docs:
        if d.get("kind") != "ValidatingAdmissionPolicy":
            continue
        text = yaml.safe_dump(d.get("spec"))
        if f"'{rack}-'" not in text or f"== '{rack}'" not in text:
            problems.add(where, f"ValidatingAdmissionPolicy {d['metadata']['name']} does not pin "
                                f"namespaces to '{rack}-*' labelled rack={rack}")
        for sa in accounts:
            user = f"system:serviceaccount:{sa['metadata'].get('namespace')}:{sa['metadata']['name']}"
            if user not in text:
                problems.add(where, f"ValidatingAdmissionPolicy {d['metadata']['name']} does not "
                                    f"match the rollout service's account {user}")


def check_admission_policy(kdir: Path, by_file: dict[Path, list[dict]], problems: Problems) -> None:
    """Compiles every CEL expression of the ValidatingAdmissionPolicies (cel-python) and runs
    the rollout service's policy on the requests it must allow and those it must deny."""
    import celpy
    from celpy import json_to_cel

    docs = [d for ds in by_file.values() for d in ds]
    rack = env_value(docs, "slipway-rollout", "SLIPWAY_RACK") or "slipway"
    env = celpy.Environment()
    for d in docs:
        if d.get("kind") != "ValidatingAdmissionPolicy":
            continue
        where = f"{kdir} ValidatingAdmissionPolicy/{d['metadata']['name']}"
        programs = []
        for v in (d.get("spec") or {}).get("validations") or []:
            for key in ("expression", "messageExpression"):
                if key not in v:
                    continue
                try:
                    program = env.program(env.compile(v[key]))
                except Exception as e:
                    problems.add(where, f"{key} does not compile as CEL: {e}")
                    continue
                if key == "expression":
                    programs.append(program)
        if d["metadata"]["name"] != "slipway-rollout-app-namespaces" or not programs:
            continue

        def ns(name: str, labelled: bool) -> dict:
            labels = {"rack": rack, "app": "myapp"} if labelled else {"kubernetes.io/metadata.name": name}
            return {"metadata": {"name": name, "labels": labels}}

        app_ns = f"{rack}-myapp"
        cases = [  # (what, resource, operation, name, namespace, object, oldObject, nsObject, allowed)
            ("create its app namespace", "namespaces", "CREATE", app_ns, "",
             ns(app_ns, True), None, None, True),
            ("re-apply its app namespace", "namespaces", "UPDATE", app_ns, "",
             ns(app_ns, True), ns(app_ns, True), None, True),
            ("delete its app namespace", "namespaces", "DELETE", app_ns, "",
             None, ns(app_ns, True), None, True),
            ("create a namespace without the rack label", "namespaces", "CREATE", app_ns, "",
             ns(app_ns, False), None, None, False),
            ("take over an unlabelled namespace by applying the label", "namespaces", "UPDATE",
             f"{rack}-build", "", ns(f"{rack}-build", True), ns(f"{rack}-build", False), None, False),
            ("delete kube-system", "namespaces", "DELETE", "kube-system", "",
             None, ns("kube-system", False), None, False),
            ("create a namespace outside <rack>-*", "namespaces", "CREATE", "other", "",
             ns("other", True), None, None, False),
            ("apply a Deployment in its app namespace", "deployments", "UPDATE", "web", app_ns,
             {"metadata": {"name": "web"}}, {"metadata": {"name": "web"}}, ns(app_ns, True), True),
            ("create a Secret in its app namespace", "secrets", "CREATE", "web-env-r1", app_ns,
             {"metadata": {"name": "web-env-r1"}}, None, ns(app_ns, True), True),
            ("patch a Secret in the slipway namespace", "secrets", "UPDATE", "slipway-keys", "slipway",
             {"metadata": {"name": "slipway-keys"}}, {"metadata": {"name": "slipway-keys"}},
             ns("slipway", False), False),
            ("delete a Deployment in kube-system", "deployments", "DELETE", "coredns", "kube-system",
             None, {"metadata": {"name": "coredns"}}, ns("kube-system", False), False),
        ]
        for what, resource, op, name, namespace, obj, old, ns_obj, allowed in cases:
            activation = {
                "request": json_to_cel({"resource": {"resource": resource}, "operation": op,
                                        "name": name, "namespace": namespace}),
                "object": json_to_cel(obj),
                "oldObject": json_to_cel(old),
                "namespaceObject": json_to_cel(ns_obj),
            }
            try:
                verdict = all(bool(p.evaluate(activation)) for p in programs)
            except Exception as e:
                problems.add(where, f"evaluating the request to {what} failed: {e}")
                continue
            if verdict != allowed:
                problems.add(where, f"{'denies' if allowed else 'allows'} the rollout service to "
                                    f"{what}")


def check_network_policy(where: str, client: tuple[str, dict], target: tuple[str, str, int],
                         services: dict, service_selectors: dict, workloads: list,
                         policies: list[dict], problems: Problems) -> None:
    """A client's calls to a peer's Service must be let in by the NetworkPolicies that select
    the peer's pods (pods no policy selects accept everything)."""
    ns, name, port = target
    selector = service_selectors.get((ns, name)) or {}
    target_port = services[(ns, name)].get(port)
    for _, w in workloads:
        if w["metadata"].get("namespace") != ns:
            continue
        labels = ((w["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not matches(selector, labels):
            continue
        pod_ports = {p.get("name"): p.get("containerPort")
                     for c in (pod_spec(w) or {}).get("containers") or [] for p in c.get("ports") or []}
        container_port = pod_ports.get(target_port, target_port)
        selecting = [p for p in policies if p["metadata"].get("namespace") == ns and matches(
            ((p.get("spec") or {}).get("podSelector") or {}).get("matchLabels") or {}, labels)]
        if not selecting:
            continue

        def admits(rule: dict) -> bool:
            ports = rule.get("ports")
            if ports and not any(p.get("port") in (container_port, target_port) for p in ports):
                return False
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                ns_sel = (peer.get("namespaceSelector") or {}).get("matchLabels")
                pod_sel = (peer.get("podSelector") or {}).get("matchLabels")
                ns_ok = (client[0] == ns) if ns_sel is None else \
                    matches(ns_sel, {"kubernetes.io/metadata.name": client[0]})
                pod_ok = pod_sel is None or pod_sel == {} or matches(pod_sel, client[1])
                if ns_ok and pod_ok:
                    return True
            return False

        if not any(admits(r) for p in selecting for r in (p.get("spec") or {}).get("ingress") or []):
            problems.add(where, f"calls Service {ns}/{name}:{port}, but no NetworkPolicy "
                                f"({', '.join(p['metadata']['name'] for p in selecting)}) lets it in")


def check_k8s_endpoints(where: str, var: str, value: str,
                        services: dict[tuple[str, str], dict[int, str]],
                        problems: Problems) -> list[tuple[str, str, int]]:
    """The (namespace, Service, port) each endpoint names, problems for those it cannot."""
    found = []
    for endpoint in filter(None, (v.strip() for v in value.split(","))):
        url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        parts = (url.hostname or "").split(".")
        if len(parts) < 2 or parts[2:3] not in ([], ["svc"]):
            problems.add(where, f"{var}: {endpoint!r} is not <service>.<namespace>.svc:<port>")
            continue
        ports = services.get((parts[1], parts[0]))
        if ports is None:
            problems.add(where, f"{var}: {endpoint!r} names Service {parts[1]}/{parts[0]}, "
                                f"which is not defined")
        elif url.port not in ports:
            problems.add(where, f"{var}: {endpoint!r}: Service {parts[1]}/{parts[0]} has no port "
                                f"{url.port} (it has {sorted(ports)})")
        else:
            found.append((parts[1], parts[0], url.port))
    return found


def check_kustomization(kdir: Path, problems: Problems) -> None:
    path = kdir / "kustomization.yaml"
    if not path.exists():
        problems.add(str(kdir), "has no kustomization.yaml")
        return
    k = (load_all(path, problems) or [{}])[0]
    if k.get("kind") != "Kustomization":
        problems.add(str(path), "is not a Kustomization")
    listed = k.get("resources") or []
    present = sorted(p.name for p in kdir.glob("*.yaml") if p.name != "kustomization.yaml")
    for name in listed:
        if not (kdir / name).exists():
            problems.add(str(path), f"lists {name}, which does not exist")
    for name in present:
        if name not in listed:
            problems.add(str(path), f"does not list {name} (kubectl apply -k would skip it)")
    manifests = "".join((kdir / n).read_text() for n in present)
    for image in k.get("images") or []:
        if f"image: {image.get('name')}:" not in manifests:
            problems.add(str(path), f"images: {image.get('name')!r} is used by no manifest")


# --- Compose ------------------------------------------------------------------------------

def compose_check(cdir: Path, venv_bin: Path, known_env: dict[str, set[str]], dockerfile: str,
                  problems: Problems) -> None:
    path = cdir / "compose.yaml"
    result = subprocess.run(
        [str(venv_bin / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
         "--output-format", "text", str(path)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        problems.add(str(path), "does not match the compose-spec schema:\n"
                     + (result.stdout + result.stderr).strip())
    docs = load_all(path, problems)
    if not docs:
        return
    compose = docs[0]
    svcs = compose.get("services") or {}
    listen_ports: dict[str, int] = {}
    for name, s in svcs.items():
        env = s.get("environment") or {}
        if isinstance(env, dict) and "SLIPWAY_LISTEN" in env:
            listen_ports[name] = int(str(env["SLIPWAY_LISTEN"]).rsplit(":", 1)[1])
    volumes = set(compose.get("volumes") or {})
    for name, s in svcs.items():
        where = f"{path} service {name}"
        for dep in s.get("depends_on") or {}:
            if dep not in svcs:
                problems.add(where, f"depends on {dep!r}, which is not a service")
        for vol in s.get("volumes") or []:
            source = (vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", ""))
            if source.startswith((".", "/")):
                if not (cdir / source).exists():
                    problems.add(where, f"mounts {source}, which does not exist")
            elif source and source not in volumes:
                problems.add(where, f"mounts volume {source!r}, not declared under volumes:")
        command = s.get("command") or []
        binary = command[0] if isinstance(command, list) and command else ""
        if not binary.startswith("slipway-"):
            continue
        env = s.get("environment") or {}
        if not isinstance(env, dict):
            problems.add(where, "environment: use the mapping form")
            continue
        check_env_names(where, binary, list(env), known_env, problems)
        if not re.search(rf"\b{re.escape(binary)}\b", dockerfile):
            problems.add(where, f"runs {binary!r}, which deploy/Dockerfile does not install")
        for var, value in env.items():
            if not var.endswith("_ENDPOINTS"):
                continue
            for endpoint in filter(None, (v.strip() for v in str(value).split(","))):
                url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
                if url.hostname not in svcs:
                    problems.add(where, f"{var}: {endpoint!r} names no compose service")
                elif listen_ports.get(url.hostname) != url.port:
                    problems.add(where, f"{var}: {endpoint!r}: {url.hostname} listens on port "
                                        f"{listen_ports.get(url.hostname)}")


def otel_check(path: Path, problems: Problems) -> None:
    docs = load_all(path, problems)
    if not docs:
        problems.add(str(path), "is empty")
        return
    config = docs[0]
    service = config.get("service") or {}
    for ext in service.get("extensions") or []:
        if ext not in (config.get("extensions") or {}):
            problems.add(str(path), f"service.extensions uses {ext!r}, which is not defined")
    pipelines = service.get("pipelines") or {}
    if not pipelines:
        problems.add(str(path), "defines no pipelines")
    for name, pipeline in pipelines.items():
        for section in ("receivers", "processors", "exporters"):
            for component in pipeline.get(section) or []:
                if component not in (config.get(section) or {}):
                    problems.add(str(path), f"pipeline {name} uses {section[:-1]} {component!r}, "
                                            f"which is not defined under {section}:")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True, help="repository root (for the code)")
    parser.add_argument("--deploy", type=Path, required=True, help="the deploy/ directory")
    parser.add_argument("--venv-bin", type=Path, required=True, help="bin/ of the validators' venv")
    args = parser.parse_args()

    problems = Problems()
    known_env = env_names_read_by_code(args.repo)
    dockerfile_path = args.deploy / "Dockerfile"
    dockerfile = dockerfile_path.read_text() if dockerfile_path.exists() else ""
    if not dockerfile:
        problems.add(str(dockerfile_path), "is missing or empty")

    kdir = args.deploy / "kubernetes"
    by_file = {p: load_all(p, problems) for p in sorted(kdir.glob("*.yaml"))
               if p.name != "kustomization.yaml"}
    count = 0
    for path, docs in by_file.items():
        k8s_schema_check(path, docs, problems)
        count += len(docs)
    check_kustomization(kdir, problems)
    k8s_reference_check(kdir, by_file, args.repo, known_env, dockerfile, problems)
    check_rack(kdir, by_file, problems)
    check_admission_policy(kdir, by_file, problems)

    cdir = args.deploy / "compose"
    compose_check(cdir, args.venv_bin, known_env, dockerfile, problems)
    otel_check(cdir / "otel-collector.yaml", problems)

    if problems.items:
        print(f"deploy validation FAILED: {len(problems.items)} problem(s)", file=sys.stderr)
        for item in problems.items:
            print(f"  - {item}", file=sys.stderr)
        return 1
    pending = sorted(k for k in PENDING_ENV if k[1] not in known_env.get(k[0], set()))
    print(f"deploy: {count} Kubernetes objects valid for Kubernetes {', '.join(K8S_VERSIONS)} "
          f"(strict), compose.yaml valid against compose-spec, references consistent")
    for binary, name in pending:
        print(f"deploy: note: {name} is set for {binary}, which does not read it yet "
              f"({PENDING_ENV[(binary, name)]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
