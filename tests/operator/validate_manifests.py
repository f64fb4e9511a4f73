#!/usr/bin/python3
"""Checks Kubernetes manifests rendered by `helm template` without a cluster.

usage: validate_manifests.py --crds DIR [--expect KIND]... [--forbid KIND]...
                             [--example FILE]... RENDERED.yaml

Every document must parse and carry what the API server requires (apiVersion,
kind, a valid metadata.name, namespaces where needed) plus what this project
promises: pods run as non-root with a read-only root filesystem and no
privilege escalation, probes and Services point at declared ports, selectors
match their pods, RBAC is least-privilege and its bindings resolve, alerting
rules and dashboards use only metrics baton exports, and BatonServices (in
the render or given with --example) validate against the CRD's
openAPIV3Schema. Prints one line per problem; exits 1 if there is any.

Needs python3-yaml (Debian package), installed by scripts/setup.
"""
import argparse
import glob
import json
import os
import re
import sys

try:
    import yaml
except ImportError:
    print("validate_manifests: python3-yaml is missing: run scripts/setup", file=sys.stderr)
    sys.exit(2)

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
CLUSTER_SCOPED = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "Namespace"}
# The metrics baton's workers and operator export (histograms add
# _bucket/_sum/_count), and the recording rules the chart defines.
BATON_METRICS = {
    "baton_time_to_first_token_seconds", "baton_inter_token_latency_seconds",
    "baton_e2e_request_latency_seconds", "baton_requests_running", "baton_requests_queued",
    "baton_kv_blocks_used", "baton_kv_blocks_total", "baton_prompt_tokens_total",
    "baton_generated_tokens_total", "baton_requests_total", "baton_kv_transfer_bytes_total",
    "baton_kv_transfer_seconds", "baton_kv_transfer_failures_total", "baton_prefill_queue_tokens",
    "baton_operator_reconcile_total", "baton_operator_reconcile_duration_seconds",
    "baton_operator_queue_depth", "baton_operator_leader", "baton_operator_desired_replicas",
    "baton_operator_pool_utilization", "baton_operator_scaling_decisions_total",
}
SENSITIVE = {"secrets", "*", "nodes", "clusterroles", "clusterrolebindings", "roles", "rolebindings"}

problems = []


def problem(doc, what):
    meta = doc.get("metadata") or {}
    problems.append(f"{doc.get('kind', '?')}/{meta.get('name', '?')}: {what}")


def metric_names(expr):
    names = set()
    for m in re.finditer(r"\b(baton_[a-z0-9_]+)", expr):
        name = m.group(1)
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in BATON_METRICS:
                name = name[: -len(suffix)]
        names.add(name)
    return names


def check_metadata(doc, applied_by_hand=False):
    for field in ("apiVersion", "kind", "metadata"):
        if not doc.get(field):
            problem(doc, f"missing {field}")
            return False
    meta = doc["metadata"]
    name = meta.get("name", "")
    if not isinstance(name, str) or not DNS_SUBDOMAIN.match(name) or len(name) > 253:
        problem(doc, f"bad metadata.name {name!r}")
    if doc["kind"] in ("Service", "Deployment") and (len(name) > 63 or not DNS_LABEL.match(name)):
        problem(doc, "name must be a DNS label (63 characters)")
    # `helm template` sets every namespace; examples take kubectl's.
    if doc["kind"] not in CLUSTER_SCOPED and not meta.get("namespace") and not applied_by_hand:
        problem(doc, "namespaced object without metadata.namespace")
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            problem(doc, f"bad label value {key}={value!r}")
    return True


def container_ports(pod_spec):
    ports = {}
    for c in pod_spec.get("containers", []):
        for p in c.get("ports", []) or []:
            port = p.get("containerPort")
            if not isinstance(port, int) or not 1 <= port <= 65535:
                ports["__bad__"] = port
            ports[p.get("name")] = port
    return ports


def check_probe_port(doc, probe_name, probe, ports):
    for kind in ("httpGet", "tcpSocket", "grpc"):
        if kind in probe:
            port = probe[kind].get("port")
            if isinstance(port, str) and port not in ports:
                problem(doc, f"{probe_name} uses undeclared port {port!r}")
            if isinstance(port, int) and port not in ports.values():
                problem(doc, f"{probe_name} uses undeclared port {port}")
            return
    if "exec" not in probe:
        problem(doc, f"{probe_name} has no handler")


def check_pod(doc, template):
    labels = (template.get("metadata") or {}).get("labels") or {}
    spec = template.get("spec") or {}
    containers = spec.get("containers") or []
    if not containers:
        problem(doc, "no containers")
    ports = container_ports(spec)
    if "__bad__" in ports:
        problem(doc, f"bad containerPort {ports['__bad__']!r}")
    pod_sc = spec.get("securityContext") or {}
    for c in containers:
        if not c.get("name") or not c.get("image"):
            problem(doc, "container without name or image")
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            problem(doc, f"container {c.get('name')} may run as root")
        if sc.get("readOnlyRootFilesystem") is not True:
            problem(doc, f"container {c.get('name')} has a writable root filesystem")
        if sc.get("allowPrivilegeEscalation") is not False:
            problem(doc, f"container {c.get('name')} allows privilege escalation")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problem(doc, f"container {c.get('name')} keeps Linux capabilities")
        if not c.get("resources"):
            problem(doc, f"container {c.get('name')} has no resources")
        for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe_name in c:
                check_probe_port(doc, probe_name, c[probe_name], ports)
        if "readinessProbe" not in c:
            problem(doc, f"container {c.get('name')} has no readinessProbe")
    return labels, ports


def check_workload(doc, by_kind):
    spec = doc.get("spec") or {}
    if not isinstance(spec.get("replicas", 1), int):
        problem(doc, "spec.replicas must be an integer")
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    if not selector:
        problem(doc, "no spec.selector.matchLabels")
    labels, ports = check_pod(doc, spec.get("template") or {})
    for k, v in selector.items():
        if labels.get(k) != v:
            problem(doc, f"selector {k}={v} does not match the pod template's labels")
    sa = (spec.get("template") or {}).get("spec", {}).get("serviceAccountName")
    if sa and sa not in by_kind.get("ServiceAccount", {}) and sa != "default":
        # An existing account the values name is fine; note only ours.
        pass
    return labels, ports


def check_service(doc, pods):
    spec = doc.get("spec") or {}
    selector = spec.get("selector") or {}
    if not selector:
        problem(doc, "no selector")
    matched = [p for p in pods if all(p[0].get(k) == v for k, v in selector.items())]
    if not matched:
        problem(doc, f"selector {selector} matches no rendered pod template")
    for port in spec.get("ports") or []:
        if not isinstance(port.get("port"), int):
            problem(doc, f"port {port.get('name')} is not an integer")
        target = port.get("targetPort")
        if isinstance(target, str) and matched and not any(target in m[1] for m in matched):
            problem(doc, f"targetPort {target!r} is no container port of the selected pods")


def check_rbac(doc, by_kind, service_accounts):
    kind = doc["kind"]
    if kind in ("Role", "ClusterRole"):
        for rule in doc.get("rules") or []:
            for field in ("apiGroups", "resources", "verbs"):
                if not rule.get(field):
                    problem(doc, f"rule without {field}")
            if "*" in rule.get("verbs", []) or "*" in rule.get("apiGroups", []):
                problem(doc, "wildcard rule")
            if SENSITIVE & set(rule.get("resources", [])):
                problem(doc, f"access to {sorted(SENSITIVE & set(rule['resources']))}")
            if "delete" in rule.get("verbs", []) or "deletecollection" in rule.get("verbs", []):
                problem(doc, f"may delete {rule.get('resources')}: the garbage collector does that")
    else:
        ref = doc.get("roleRef") or {}
        if ref.get("name") not in by_kind.get(ref.get("kind"), {}):
            problem(doc, f"roleRef {ref.get('kind')}/{ref.get('name')} is not rendered")
        elif kind == "RoleBinding":
            role = by_kind[ref["kind"]][ref["name"]]
            if role["metadata"].get("namespace") != doc["metadata"].get("namespace"):
                problem(doc, "binds a Role of another namespace")
        for s in doc.get("subjects") or []:
            if s.get("kind") == "ServiceAccount" and service_accounts and s.get("name") not in service_accounts:
                problem(doc, f"subject ServiceAccount {s.get('name')} is not the operator's")


def check_monitoring(doc, services, pods):
    spec = doc.get("spec") or {}
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    if doc["kind"] == "ServiceMonitor":
        if not any(all((s.get("metadata", {}).get("labels") or {}).get(k) == v
                       for k, v in selector.items()) for s in services):
            problem(doc, "selects no rendered Service")
        if not spec.get("endpoints"):
            problem(doc, "no endpoints")
    else:
        # Worker pods are created by the operator, with these labels.
        worker = {"app.kubernetes.io/name": "baton", "app.kubernetes.io/managed-by": "baton-operator"}
        if any(worker.get(k) != v for k, v in selector.items()):
            problem(doc, f"selector {selector} does not select the operator's worker pods")
        if not spec.get("podMetricsEndpoints"):
            problem(doc, "no podMetricsEndpoints")


def check_rule(doc):
    groups = (doc.get("spec") or {}).get("groups") or []
    if not groups:
        problem(doc, "no rule groups")
    recorded = set()
    for g in groups:
        for r in g.get("rules") or []:
            if "record" in r:
                recorded.add(r["record"])
    for g in groups:
        for r in g.get("rules") or []:
            if not r.get("expr") or not (r.get("alert") or r.get("record")):
                problem(doc, f"rule {r} needs expr and alert or record")
                continue
            unknown = metric_names(r["expr"]) - BATON_METRICS
            if unknown:
                problem(doc, f"{r.get('alert') or r.get('record')} uses unknown metrics {sorted(unknown)}")
            for used in re.findall(r"\b(baton:[a-z_0-9:]+)", r["expr"]):
                if used not in recorded:
                    problem(doc, f"{r.get('alert')} uses unrecorded {used}")
            if r.get("alert") and (r.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
                problem(doc, f"{r['alert']} has no severity")
            if r["expr"].count("(") != r["expr"].count(")"):
                problem(doc, f"{r.get('alert') or r.get('record')}: unbalanced parentheses")


def check_dashboard(doc):
    for key, text in (doc.get("data") or {}).items():
        if not key.endswith(".json"):
            continue
        try:
            dash = json.loads(text)
        except ValueError as e:
            problem(doc, f"{key} is not JSON: {e}")
            continue
        panels = [p for p in dash.get("panels", []) if p.get("type") != "row"]
        if not panels:
            problem(doc, f"{key} has no panels")
        for p in panels:
            for t in p.get("targets", []):
                unknown = metric_names(t.get("expr", "")) - BATON_METRICS
                if unknown:
                    problem(doc, f"panel {p.get('title')!r} uses unknown metrics {sorted(unknown)}")


# --- openAPIV3Schema validation of custom resources ---------------------------

def validate_schema(value, schema, path, errors):
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            errors.append(f"{path}: must be an integer or a string")
        return
    if "anyOf" in schema:
        return
    t = schema.get("type")
    if value is None:
        errors.append(f"{path}: null")
        return
    types = {"object": dict, "array": list, "string": str, "boolean": bool}
    if t in types and not isinstance(value, types[t]):
        errors.append(f"{path}: must be {t}, got {type(value).__name__}")
        return
    if t == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
        errors.append(f"{path}: must be an integer")
        return
    if t == "number" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        errors.append(f"{path}: must be a number")
        return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: below the minimum {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{path}: above the maximum {schema['maximum']}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if t == "object":
        for req in schema.get("required", []):
            if req not in value:
                errors.append(f"{path}: missing required {req}")
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if props is not None and k in props:
                validate_schema(v, props[k], f"{path}.{k}", errors)
            elif isinstance(extra, dict):
                validate_schema(v, extra, f"{path}.{k}", errors)
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                # The API server would prune it silently: a typo.
                errors.append(f"{path}.{k}: unknown field")
    if t == "array":
        for i, item in enumerate(value):
            validate_schema(item, schema.get("items", {}), f"{path}[{i}]", errors)


def check_structural(schema, path, errors):
    """Every node of a structural schema has a type (or is int-or-string or
    preserves unknown fields)."""
    if not (schema.get("type") or schema.get("x-kubernetes-int-or-string")
            or schema.get("x-kubernetes-preserve-unknown-fields")):
        errors.append(f"{path}: no type (not a structural schema)")
    for k, sub in (schema.get("properties") or {}).items():
        check_structural(sub, f"{path}.{k}", errors)
    if isinstance(schema.get("additionalProperties"), dict):
        check_structural(schema["additionalProperties"], f"{path}.*", errors)
    if "items" in schema:
        check_structural(schema["items"], f"{path}[]", errors)


def load_crds(directory):
    crds = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc:
                    continue
                if doc.get("kind") != "CustomResourceDefinition" or doc.get("apiVersion") != "apiextensions.k8s.io/v1":
                    problems.append(f"{path}: not an apiextensions.k8s.io/v1 CustomResourceDefinition")
                    continue
                spec = doc["spec"]
                names = spec["names"]
                if doc["metadata"]["name"] != f"{names['plural']}.{spec['group']}":
                    problem(doc, "name must be <plural>.<group>")
                storage = [v for v in spec["versions"] if v.get("storage")]
                if len(storage) != 1:
                    problem(doc, "exactly one storage version")
                for v in spec["versions"]:
                    errors = []
                    schema = v["schema"]["openAPIV3Schema"]
                    check_structural(schema, "openAPIV3Schema", errors)
                    for e in errors:
                        problem(doc, e)
                    if "status" not in (v.get("subresources") or {}):
                        problem(doc, f"{v['name']}: no status subresource")
                    for col in v.get("additionalPrinterColumns") or []:
                        if not col.get("jsonPath", "").startswith("."):
                            problem(doc, f"printer column {col.get('name')}: bad jsonPath")
                    crds[(f"{spec['group']}/{v['name']}", names["kind"])] = schema
    return crds


def check_custom(doc, crds):
    schema = crds.get((doc.get("apiVersion"), doc.get("kind")))
    if schema is None:
        problem(doc, "no CRD defines this kind")
        return
    errors = []
    body = {k: v for k, v in doc.items() if k != "metadata"}
    validate_schema(body, {**schema, "required": schema.get("required", [])}, doc["kind"], errors)
    for e in errors:
        problem(doc, e)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered")
    ap.add_argument("--crds", required=True)
    ap.add_argument("--expect", action="append", default=[])
    ap.add_argument("--forbid", action="append", default=[])
    ap.add_argument("--example", action="append", default=[])
    args = ap.parse_args()

    crds = load_crds(args.crds)
    if not crds:
        problems.append(f"{args.crds}: no CRD")
    with open(args.rendered) as f:
        try:
            docs = [d for d in yaml.safe_load_all(f) if d]
        except yaml.YAMLError as e:
            print(f"{args.rendered}: not YAML: {e}")
            return 1
    if not docs:
        problems.append("nothing rendered")
    examples = []
    for path in args.example:
        with open(path) as f:
            examples.extend(d for d in yaml.safe_load_all(f) if d)

    by_kind = {}
    for d in docs + examples:
        if not isinstance(d, dict) or not check_metadata(d, any(d is e for e in examples)):
            continue
        key = d["metadata"]["name"]
        if key in by_kind.setdefault(d["kind"], {}):
            problem(d, "rendered twice")
        by_kind[d["kind"]][key] = d
    service_accounts = set(by_kind.get("ServiceAccount", {}))
    pods = []
    for d in by_kind.get("Deployment", {}).values():
        pods.append(check_workload(d, by_kind))
    for kind, objects in by_kind.items():
        for d in objects.values():
            if kind == "Service":
                check_service(d, pods)
            elif kind in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"):
                check_rbac(d, by_kind, service_accounts)
            elif kind in ("ServiceMonitor", "PodMonitor"):
                check_monitoring(d, list(by_kind.get("Service", {}).values()), pods)
            elif kind == "PrometheusRule":
                check_rule(d)
            elif kind == "ConfigMap":
                check_dashboard(d)
            elif kind == "BatonService":
                check_custom(d, crds)
    rendered_kinds = {d.get("kind") for d in docs if isinstance(d, dict)}
    for kind in args.expect:
        if kind not in rendered_kinds:
            problems.append(f"expected a {kind}, none rendered")
    for kind in args.forbid:
        if kind in rendered_kinds:
            problems.append(f"a {kind} was rendered, none expected")

    for p in problems:
        print(p)
    count = sum(len(v) for v in by_kind.values())
    print(f"validate_manifests: {count} objects, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
