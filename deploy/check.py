#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests (run by .ci/run).

1. Render every overlay with `kubectl kustomize` and validate the result against the
   Kubernetes API schemas with `kubernetes-validate --strict` (no cluster needed).
2. No drift: every environment variable a manifest sets for a container of a Deployment or
   CronJob (explicit `env` and the keys of `envFrom` ConfigMaps) is one its binary's subcommand
   reads (from `<binary> <subcommand> --help`). CronJobs run one at a time (Forbid), and their
   Jobs fail at once, without another pod, on exit 1 (stopped or refused) and 2 (bad
   settings), which another try would only repeat.
3. Probes: every probe port is a declared container port that the binary really listens on
   (per its *_ADDR setting), every HTTP probe path is served by the code, every gRPC probe
   names the service's health name.
4. Shutdown fits the grace period: for every Deployment, the preStop sleep plus the binary's
   shutdown budgets (SHUTDOWN_DRAIN_SECS, SHUTDOWN_WORKER_STOP_SECS: the manifest's values, else
   the defaults `--help` shows) stay below terminationGracePeriodSeconds.
5. Secrets are files: no container takes a Secret into its environment (secretKeyRef); every
   `*_FILE` setting names a file under a volume the container mounts.
6. Prod: the services check `azp` (CLERK_AUTHORIZED_PARTIES is set and not empty); every
   Deployment runs at least 2 replicas (its HPA's minReplicas). No Deployment an HPA scales sets
   spec.replicas (each apply would reset the HPA's choice).
7. Alerts (the PrometheusRule): each rule has a severity, a summary and a runbook link to an
   entry of deploy/README.md; every metric an expression uses is one the code registers (or
   one of KUBE_STATE_METRICS, kube-state-metrics' series for the CronJob and the Deployments,
   or Prometheus' `up`); every `job` an expression selects is one a PodMonitor yields; the
   rules pass `promtool check rules` and the unit tests in deploy/alerts-test.yaml
   (`promtool test rules`) when promtool is installed.
8. The database the prod overlay brings (CloudNativePG): every `postgresql.cnpg.io` object
   validates against the operator's published schema (deploy/schemas/cloudnative-pg, strict: a
   field the schema does not declare is an error); the Cluster has at least three instances and
   synchronous replication that never trades durability away; the bootstrap SQL grants what
   deploy/database-roles.sql grants, for each service; the Pooler runs transaction mode in front
   of the primary with prepared statements enabled; every object names an existing Cluster.
9. Operators' APIs: every object of an API group with vendored schemas (deploy/schemas:
   `postgresql.cnpg.io`, `monitoring.coreos.com`) validates against them, strictly.
10. Scraping: each PodMonitor selects, by matchLabels, the pods of a workload the overlay renders
   (or of a CloudNativePG Cluster it creates), names ports those pods declare, and takes its
   jobLabel from a label they carry; every pod annotated prometheus.io/scrape has a PodMonitor
   on the same port and path (the Prometheus Operator ignores the annotations).
11. No Ingress host is routed by two overlays (they may share a cluster).
12. Public paths: a gRPC method an Ingress routes by Exact path is one the service's MethodPolicy
   admits user tokens to, and every such method of a service routed that way is routed.
13. Egress: every workload's pods are selected by an egress NetworkPolicy that admits DNS, and no
   egress rule admits the cloud metadata address (169.254.169.254; an ipBlock must except it).
14. Objects the operators own: a ConfigMap a pod mounts is either rendered by the overlay or
   one the operators make by hand (OPERATOR_CONFIGMAPS, whose creation deploy/README.md shows);
   those are never rendered, as every `kubectl apply -k` would put the committed value back
   over theirs (for `service-jwks`: an empty key set, every internal call refused).
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ["dev", "prod"]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
# Paths each binary serves over HTTP, read from the code that serves them.
HTTP_SOURCES = {
    "webhook-gateway": [ROOT / "services/webhook-gateway/src/server.rs"],
    "identity-service": [ROOT / "crates/service-runtime/src/metrics.rs"],
    "workspace-service": [ROOT / "crates/service-runtime/src/metrics.rs"],
}
GRPC_NAMES = {
    "identity-service": ROOT / "services/identity-service/src/lib.rs",
    "workspace-service": ROOT / "services/workspace-service/src/lib.rs",
}
# ConfigMaps the operators make and edit by hand (deploy/README.md, "Secrets"); the manifests
# name them and never render them.
OPERATOR_CONFIGMAPS = {"service-jwks"}
errors = []


def fail(msg):
    errors.append(msg)


HELP = {}


def binary_help(binary, sub):
    if (binary, sub) not in HELP:
        HELP[(binary, sub)] = subprocess.run(
            [str(TARGET / binary), sub, "--help"], capture_output=True, text=True, check=True
        ).stdout
    return HELP[(binary, sub)]


def binary_env(binary, sub):
    return set(re.findall(r"\[env: ([A-Z0-9_]+)", binary_help(binary, sub)))


def binary_default(binary, sub, name):
    """The default `--help` shows for the setting read from `name`, if any."""
    m = re.search(r"\[env: " + name + r"=?[^\]]*\]\s*\[default: ([^\]]+)\]", binary_help(binary, sub))
    return m.group(1) if m else None


# The steps of a stop, in order after the preStop sleep, as settings of the binaries.
SHUTDOWN_BUDGETS = ["SHUTDOWN_DRAIN_SECS", "SHUTDOWN_WORKER_STOP_SECS"]


def pre_stop_seconds(container):
    pre = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        return int(pre["sleep"]["seconds"])
    command = pre.get("exec", {}).get("command", [])
    if len(command) >= 2 and Path(command[0]).name == "sleep":
        return int(command[1])
    return 0


def check_shutdown(where, spec, container, binary, sub, env):
    """preStop + the binary's shutdown budgets < the pod's terminationGracePeriodSeconds."""
    grace = spec.get("terminationGracePeriodSeconds", 30)
    steps = [("preStop", pre_stop_seconds(container))]
    reads = binary_env(binary, sub)
    for name in SHUTDOWN_BUDGETS:
        if name not in reads:
            continue
        value = env.get(name) or binary_default(binary, sub, name)
        if value is None:
            fail(f"{where}: {name} has no value and `{binary} {sub} --help` shows no default")
            continue
        steps.append((name, int(value)))
    if len(steps) == 1:
        fail(f"{where}: `{binary} {sub}` reads none of {SHUTDOWN_BUDGETS}: its stop is unbounded")
    total = sum(s for _, s in steps)
    if total >= grace:
        shown = " + ".join(f"{n} {s}" for n, s in steps)
        fail(f"{where}: {shown} = {total} s, not below terminationGracePeriodSeconds ({grace} s)")


def check_secret_files(where, spec, container, env):
    """Secrets reach the container as files under its mounted volumes, never as env values."""
    for e in container.get("env", []):
        if "secretKeyRef" in e.get("valueFrom", {}):
            fail(f"{where}: {e['name']} takes a Secret into the environment; mount it and set {e['name']}_FILE")
    for src in container.get("envFrom", []):
        if "secretRef" in src:
            fail(f"{where}: envFrom takes a Secret into the environment; mount it as files")
    mounts = {m["mountPath"].rstrip("/"): m["name"] for m in container.get("volumeMounts", [])}
    secret_volumes = {v["name"] for v in spec.get("volumes", []) if "secret" in v}
    for name, value in env.items():
        if not name.endswith("_FILE") or not value:
            continue
        mount = next((m for m in mounts if value.startswith(m + "/")), None)
        if mount is None:
            fail(f"{where}: {name} ({value}) is under no volume the container mounts")
        elif name not in ("SERVICE_JWKS_FILE",) and mounts[mount] not in secret_volumes:
            fail(f"{where}: {name} ({value}) is not on a Secret volume")


def served_paths(binary):
    text = "".join(p.read_text() for p in HTTP_SOURCES[binary])
    return set(re.findall(r'"(/[a-z]+)"\)?\s*=>', text)) | set(re.findall(r'\(&Method::\w+, "(/[a-z]+)"\)', text))


# Series of kube-state-metrics (not of our code) that alerts may use: the reconcile CronJob's
# failed Jobs (VBaseReconcileFailed), its suspension and last success, the Deployments' desired
# and available replicas. Keep this list to what a rule needs.
KUBE_STATE_METRICS = {
    "kube_job_failed", "kube_job_owner",
    "kube_cronjob_spec_suspend", "kube_cronjob_status_last_successful_time", "kube_cronjob_created",
    "kube_deployment_spec_replicas", "kube_deployment_status_replicas_available",
}
# Series Prometheus itself records for every target.
PROMETHEUS_METRICS = {"up"}
# Series of CloudNativePG's exporter (its default queries, v1.30: pg_stat_archiver,
# pg_replication) and of the kubelet (volume statistics) the database's alerts use.
CNPG_METRICS = {
    "cnpg_pg_stat_archiver_last_failed_time", "cnpg_pg_stat_archiver_last_archived_time",
    "cnpg_pg_replication_streaming_replicas", "cnpg_pg_replication_in_recovery", "cnpg_pg_replication_lag",
}
KUBELET_METRICS = {"kubelet_volume_stats_available_bytes", "kubelet_volume_stats_capacity_bytes"}

# PromQL words that are not metric names.
PROMQL = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "delta", "deriv", "by",
    "without", "and", "or", "unless", "on", "ignoring", "vector", "time", "absent", "absent_over_time",
    "max_over_time", "min_over_time", "avg_over_time", "histogram_quantile", "humanize",
    "humanizePercentage", "humanizeDuration", "bool", "offset", "le", "group", "label_replace",
}


def registered_metrics():
    """Metric names the code registers, with the suffixes the exposition adds."""
    names = set()
    for rs in ROOT.glob("*/*/src/**/*.rs"):
        text = rs.read_text()
        # Metrics registered one by one, and families a collector encodes at each scrape.
        found = re.findall(r'\.register\(\s*"([a-z_][a-z0-9_]*)"', text)
        found += re.findall(r'&mut encoder,\s*"([a-z_][a-z0-9_]*)"', text)
        for name in found:
            names |= {name, f"{name}_total", f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def metrics_in(expr):
    """Metric names an expression uses: identifiers outside label matchers and grouping."""
    bare = re.sub(r"\{[^}]*\}", "", expr)
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    bare = re.sub(r'"[^"]*"', "", bare)
    return {w for w in re.findall(r"\b[a-zA-Z_][a-zA-Z0-9_]*\b", bare) if w not in PROMQL and not w[0].isdigit()}


def readme_anchors():
    """GitHub's anchors of deploy/README.md's headings."""
    anchors = set()
    for line in (ROOT / "deploy/README.md").read_text().splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            text = re.sub(r"[^a-z0-9 -]", "", m.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


# Each Ingress host, with the overlays that route it.
INGRESS_HOSTS = {}
# Indexes of the tests of deploy/alerts-test.yaml that ran against some overlay's rules.
TESTS_RUN = set()


def check_alerts(overlay, docs):
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    if not rules:
        fail(f"{overlay}: no PrometheusRule")
        return
    metrics = registered_metrics() | KUBE_STATE_METRICS | PROMETHEUS_METRICS | CNPG_METRICS | KUBELET_METRICS
    anchors = readme_anchors()
    jobs = pod_monitor_jobs(docs)
    for pr in rules:
        for group in pr["spec"]["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert", "?")
                where = f"{overlay}/{pr['metadata']['name']}/{name}"
                if rule.get("labels", {}).get("severity") not in ("warning", "critical"):
                    fail(f"{where}: severity must be warning or critical")
                ann = rule.get("annotations", {})
                if not ann.get("summary"):
                    fail(f"{where}: no summary")
                anchor = ann.get("runbook_url", "").rpartition("#")[2]
                if anchor not in anchors:
                    fail(f"{where}: runbook_url must link a heading of deploy/README.md (#{anchor} is none)")
                for m in sorted(metrics_in(rule["expr"]) - metrics):
                    fail(f"{where}: uses {m}, which no code registers")
                # A `job` an expression names is one a PodMonitor of the overlay gives its targets.
                for op, value in re.findall(r'\bjob\s*(=~|=)\s*"([^"]*)"', rule["expr"]):
                    for job in value.split("|") if op == "=~" else [value]:
                        if job not in jobs:
                            fail(f"{where}: selects job {job!r}, which no PodMonitor of the overlay yields ({sorted(jobs)})")
    promtool = shutil.which("promtool")
    if not promtool:
        print(f"{overlay}: promtool not installed; alert rules checked by schema only")
        return
    # All the overlay's rules in one file; the tests of deploy/alerts-test.yaml whose alerts it
    # has (the database's are in the prod overlay only). main() checks each test ran somewhere.
    groups = [g for pr in rules for g in pr["spec"]["groups"]]
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    with tempfile.TemporaryDirectory() as tmp:
        rules_file = Path(tmp) / "alerts.yaml"
        rules_file.write_text(yaml.safe_dump({"groups": groups}))
        r = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"{overlay}: promtool check rules:\n{r.stdout}{r.stderr}")
        tests = yaml.safe_load((ROOT / "deploy/alerts-test.yaml").read_text())
        mine = []
        for i, t in enumerate(tests["tests"]):
            names = {a["alertname"] for a in t.get("alert_rule_test", [])}
            if names <= alerts:
                mine.append(t)
                TESTS_RUN.add(i)
        tests["tests"] = mine
        tests["rule_files"] = [str(rules_file)]
        test_file = Path(tmp) / "alerts-test.yaml"
        test_file.write_text(yaml.safe_dump(tests))
        r = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"{overlay}: promtool test rules:\n{r.stdout}{r.stderr}")


CNPG_SCHEMAS = ROOT / "deploy/schemas/cloudnative-pg"
# The operators' APIs the overlays use, by API group: their vendored schemas.
CRD_SCHEMAS = {
    "postgresql.cnpg.io": CNPG_SCHEMAS,
    "monitoring.coreos.com": ROOT / "deploy/schemas/prometheus-operator",
}
# The roles each service's grants are made for: (owner, app role, schema).
SERVICE_ROLES = [("identity_owner", "identity_app", "identity"), ("workspace_owner", "workspace_app", "workspace")]


def strict(schema):
    """`schema` with undeclared fields refused wherever it declares its fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def roles_sql():
    """deploy/database-roles.sql for each service, one statement a line, as the Cluster runs it."""
    text = "\n".join(l for l in (ROOT / "deploy/database-roles.sql").read_text().splitlines() if not l.strip().startswith("--"))
    lines = []
    for owner, app, schema in SERVICE_ROLES:
        sql = text.replace(':"owner"', f'"{owner}"').replace(':"app"', f'"{app}"').replace(':"schema"', f'"{schema}"')
        lines += [" ".join(st.split()) for st in sql.split(";") if st.strip()]
    return lines


def check_crd_schemas(overlay, docs):
    """Every object of an operator's API group validates, strictly, against its vendored schema."""
    import json

    import jsonschema

    schemas = {}
    for group, folder in CRD_SCHEMAS.items():
        for f in folder.glob("*.json"):
            doc = json.loads(f.read_text())
            schemas[(doc["apiVersion"], doc["kind"])] = strict(doc["openAPIV3Schema"])
    for d in docs:
        group = d["apiVersion"].rpartition("/")[0]
        if group not in CRD_SCHEMAS:
            continue
        where = f"{overlay}/{d['kind']}/{d['metadata']['name']}"
        schema = schemas.get((d["apiVersion"], d["kind"]))
        if schema is None:
            fail(f"{where}: no schema for {d['apiVersion']} {d['kind']} in {CRD_SCHEMAS[group].relative_to(ROOT)}")
            continue
        for e in sorted(jsonschema.Draft7Validator(schema).iter_errors(d), key=str):
            path = ".".join(str(p) for p in e.absolute_path)
            fail(f"{where}: {path}: {e.message}")


def check_cloudnative_pg(overlay, docs):
    objects = [d for d in docs if d["apiVersion"].startswith("postgresql.cnpg.io/")]
    if not objects:
        return
    clusters = {d["metadata"]["name"]: d for d in objects if d["kind"] == "Cluster"}
    for d in objects:
        where = f"{overlay}/{d['kind']}/{d['metadata']['name']}"
        cluster = d["spec"].get("cluster", {}).get("name")
        if d["kind"] != "Cluster" and cluster not in clusters:
            fail(f"{where}: names Cluster {cluster!r}, which the overlay does not create")
    for name, c in clusters.items():
        spec, where = c["spec"], f"{overlay}/Cluster/{name}"
        if spec.get("instances", 1) < 3:
            fail(f"{where}: fewer than 3 instances")
        sync = spec.get("postgresql", {}).get("synchronous", {})
        if sync.get("number", 0) < 1 or sync.get("dataDurability") != "required":
            fail(f"{where}: commits must wait for a replica (synchronous.number >= 1, dataDurability: required)")
        sql = spec.get("bootstrap", {}).get("initdb", {}).get("postInitApplicationSQL", [])
        missing = [line for line in roles_sql() if line not in [" ".join(s.split()) for s in sql]]
        for line in missing:
            fail(f"{where}: postInitApplicationSQL lacks what deploy/database-roles.sql grants: {line}")
        if "barmanObjectStore" not in spec.get("backup", {}) and not spec.get("plugins"):
            fail(f"{where}: no backup configured")
    for p in (d for d in objects if d["kind"] == "Pooler"):
        where, bouncer = f"{overlay}/Pooler/{p['metadata']['name']}", p["spec"].get("pgbouncer", {})
        if p["spec"].get("type", "rw") != "rw" or bouncer.get("poolMode") != "transaction":
            fail(f"{where}: the services' pooler is type rw in transaction mode")
        if int(bouncer.get("parameters", {}).get("max_prepared_statements", "0")) < 1:
            fail(f"{where}: the services use named prepared statements: set max_prepared_statements")


def pod_templates(docs):
    """(object, pod template) of every workload the overlay renders."""
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            out.append((d, d["spec"]["template"]))
        elif d["kind"] == "CronJob":
            out.append((d, d["spec"]["jobTemplate"]["spec"]["template"]))
    return out


# The pods CloudNativePG makes for a Cluster (not rendered): their labels and ports.
CNPG_INSTANCE_PORTS = {"postgresql": 5432, "metrics": 9187}


def pod_monitor_jobs(docs):
    """The `job` label values the overlay's PodMonitors give their targets."""
    jobs = set()
    templates = pod_templates(docs)
    for pm in (d for d in docs if d["kind"] == "PodMonitor"):
        label = pm["spec"].get("jobLabel")
        if not label:
            jobs.add(f"{pm['metadata'].get('namespace', 'default')}/{pm['metadata']['name']}")
            continue
        want = pm["spec"].get("selector", {}).get("matchLabels", {})
        if label == "cnpg.io/cluster" and "cnpg.io/cluster" in want:
            jobs.add(want["cnpg.io/cluster"])
            continue
        for _, t in templates:
            labels = t.get("metadata", {}).get("labels", {})
            if want.items() <= labels.items() and label in labels:
                jobs.add(labels[label])
    return jobs


def check_pod_monitors(overlay, docs):
    """Each PodMonitor selects pods the overlay makes, by their labels, and names ports they
    declare; every pod annotated for scraping has a PodMonitor on that port."""
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    templates = pod_templates(docs)
    clusters = {d["metadata"]["name"] for d in docs if d["kind"] == "Cluster" and d["apiVersion"].startswith("postgresql.cnpg.io/")}
    scraped = set()  # (workload name, container port) some PodMonitor scrapes
    for pm in monitors:
        spec, where = pm["spec"], f"{overlay}/PodMonitor/{pm['metadata']['name']}"
        selector = spec.get("selector", {})
        want = selector.get("matchLabels", {})
        if not want or set(selector) - {"matchLabels"}:
            fail(f"{where}: select the pods with matchLabels only (the check reads nothing else)")
            continue
        if spec.get("namespaceSelector"):
            fail(f"{where}: namespaceSelector: the PodMonitor must select pods of its own namespace")
        endpoints = spec.get("podMetricsEndpoints", [])
        if not endpoints or any("port" not in e for e in endpoints):
            fail(f"{where}: every podMetricsEndpoint must name a port")
            continue
        if "cnpg.io/cluster" in want:
            # Pods of a CloudNativePG Cluster: made by its operator, with its labels and ports.
            if want["cnpg.io/cluster"] not in clusters:
                fail(f"{where}: selects the pods of Cluster {want['cnpg.io/cluster']!r}, which the overlay does not create")
            if spec.get("jobLabel", "cnpg.io/cluster") != "cnpg.io/cluster":
                fail(f"{where}: jobLabel of a Cluster's pods: cnpg.io/cluster (the label the check knows they carry)")
            for e in endpoints:
                if e["port"] not in CNPG_INSTANCE_PORTS:
                    fail(f"{where}: port {e['port']!r} is not one CloudNativePG's instance pods declare ({sorted(CNPG_INSTANCE_PORTS)})")
            continue
        selected = [(d, t) for d, t in templates if want.items() <= t.get("metadata", {}).get("labels", {}).items()]
        if not selected:
            fail(f"{where}: selector {want} matches the pods of no workload the overlay renders")
        for d, t in selected:
            labels = t["metadata"]["labels"]
            if spec.get("jobLabel") and spec["jobLabel"] not in labels:
                fail(f"{where}: jobLabel {spec['jobLabel']} is not a label of {d['metadata']['name']}'s pods")
            ports = {p.get("name"): p["containerPort"] for c in t["spec"]["containers"] for p in c.get("ports", [])}
            for e in endpoints:
                if e["port"] not in ports:
                    fail(f"{where}: port {e['port']!r} is not a named port of {d['metadata']['name']}'s pods ({sorted(p for p in ports if p)})")
                else:
                    scraped.add((d["metadata"]["name"], ports[e["port"]], e.get("path", "/metrics")))
    for d, t in templates:
        ann = t.get("metadata", {}).get("annotations", {})
        if ann.get("prometheus.io/scrape") != "true":
            continue
        port, path = int(ann.get("prometheus.io/port", 0)), ann.get("prometheus.io/path", "/metrics")
        if (d["metadata"]["name"], port, path) not in scraped:
            fail(
                f"{overlay}/{d['metadata']['name']}: annotated for scraping on {port}{path}, but no PodMonitor "
                "scrapes that port and path (the Prometheus Operator ignores the annotations)"
            )


# The gRPC services' access policies (MethodPolicy), by full service name.
POLICY_SOURCES = {
    "vbase.identity.v1.IdentityService": ROOT / "services/identity-service/src/grpc/mod.rs",
    "vbase.workspace.v1.WorkspaceService": ROOT / "services/workspace-service/src/grpc/policy.rs",
}


def user_methods(service):
    """The methods of `service` its MethodPolicy admits user tokens to."""
    text = POLICY_SOURCES[service].read_text()
    user = r"Access::(?:User|UserOrService)\b"
    names = set(re.findall(r'\.allow\(\s*"(\w+)",\s*' + user, text))
    for const in re.findall(r"\.allow_all\(\s*(\w+),\s*" + user, text):
        body = re.search(r"const " + const + r": &\[&str\] = &\[(.*?)\];", text, re.S)
        if body is None:
            fail(f"{POLICY_SOURCES[service].relative_to(ROOT)}: cannot read {const}")
            continue
        names |= set(re.findall(r'"(\w+)"', body.group(1)))
    if not names:
        fail(f"{POLICY_SOURCES[service].relative_to(ROOT)}: no method admits users (the check cannot read the policy)")
    return names


def check_public_paths(overlay, docs):
    """An Exact gRPC path an Ingress routes is a method users may call; a service routed by
    Exact paths has every such method routed."""
    for ing in (d for d in docs if d["kind"] == "Ingress"):
        exact = {}
        for rule in ing["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                m = re.fullmatch(r"/([\w.]+)/(\w+)", path["path"])
                if path.get("pathType") != "Exact" or not m or m.group(1) not in POLICY_SOURCES:
                    continue
                exact.setdefault(m.group(1), set()).add(m.group(2))
        for service, methods in exact.items():
            where = f"{overlay}/Ingress/{ing['metadata']['name']}"
            users = user_methods(service)
            for method in sorted(methods - users):
                fail(f"{where}: routes /{service}/{method}, which no user token may call (service tokens only)")
            for method in sorted(users - methods):
                fail(f"{where}: does not route /{service}/{method}, which users call")


METADATA_ADDRESS = "169.254.169.254"


def selects(selector, labels):
    """Whether a label selector (matchLabels, matchExpressions) selects these labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        has, value = e["key"] in labels, labels.get(e["key"])
        op, values = e["operator"], e.get("values", [])
        if (op == "In" and value not in values) or (op == "NotIn" and value in values):
            return False
        if (op == "Exists" and not has) or (op == "DoesNotExist" and has):
            return False
    return True


def check_egress(overlay, docs):
    """Every workload's pods are under an egress policy that admits DNS; no egress rule admits
    the cloud metadata address."""
    import ipaddress

    policies = [d for d in docs if d["kind"] == "NetworkPolicy" and "Egress" in d["spec"].get("policyTypes", [])]
    metadata = ipaddress.ip_address(METADATA_ADDRESS)
    for np in policies:
        for rule in np["spec"].get("egress", []):
            for peer in rule.get("to", []) or [{"ipBlock": {"cidr": "0.0.0.0/0"}}]:
                block = peer.get("ipBlock")
                if not block or ipaddress.ip_network(block["cidr"]).version != 4:
                    continue
                if metadata in ipaddress.ip_network(block["cidr"]) and not any(
                    metadata in ipaddress.ip_network(x) for x in block.get("except", [])
                ):
                    fail(f"{overlay}/NetworkPolicy/{np['metadata']['name']}: an egress rule admits the metadata address {METADATA_ADDRESS}")
    for d, t in pod_templates(docs):
        labels = t.get("metadata", {}).get("labels", {})
        mine = [np for np in policies if selects(np["spec"]["podSelector"], labels)]
        if not mine:
            fail(f"{overlay}/{d['metadata']['name']}: no egress NetworkPolicy selects its pods (they may connect anywhere)")
            continue
        dns = any(
            {"port": 53, "protocol": "UDP"} in rule.get("ports", [])
            for np in mine
            for rule in np["spec"].get("egress", [])
        )
        if not dns:
            fail(f"{overlay}/{d['metadata']['name']}: its egress policies do not admit DNS (UDP 53)")


def check_no_retry_of_refusals(overlay, cj):
    """A run that stopped or refused (exit 1) or had bad settings (exit 2) is not run again."""
    job = cj["spec"]["jobTemplate"]["spec"]
    where = f"{overlay}/{cj['metadata']['name']}"
    if job.get("backoffLimit", 6) > 1:
        fail(f"{where}: backoffLimit above 1 runs a failed reconcile again and again")
    codes = set()
    for rule in job.get("podFailurePolicy", {}).get("rules", []):
        on = rule.get("onExitCodes", {})
        if rule.get("action") == "FailJob" and on.get("operator") == "In":
            codes |= set(on.get("values", []))
    if not {1, 2} <= codes:
        fail(f"{where}: podFailurePolicy must fail the Job at once on exit 1 (stopped or refused) and 2 (bad settings)")


def check_operator_objects(overlay, docs, configmaps, pods):
    """The operators' ConfigMaps are referenced by name, made as the README shows, never rendered."""
    readme = (ROOT / "deploy/README.md").read_text()
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] in OPERATOR_CONFIGMAPS:
            fail(
                f"{overlay}: renders ConfigMap {d['metadata']['name']}, which the operators own: "
                "every `kubectl apply -k` would put this value back over theirs"
            )
    for d, spec in pods:
        for v in spec.get("volumes", []):
            name = v.get("configMap", {}).get("name")
            if name is None or name in configmaps:
                continue
            where = f"{overlay}/{d['metadata']['name']}: volume {v['name']}"
            if name not in OPERATOR_CONFIGMAPS:
                fail(f"{where} mounts ConfigMap {name}, which the overlay does not render nor the operators make")
            elif f"create configmap {name} " not in readme:
                fail(f"{where} mounts ConfigMap {name}, which deploy/README.md does not say how to create")


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def main():
    for tool in ("kubectl",):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            sys.exit(f"{tool} is needed to render the kustomize overlays")
    validator = os.environ.get("KUBERNETES_VALIDATE", "kubernetes-validate")
    for overlay in OVERLAYS:
        rendered = subprocess.run(
            ["kubectl", "kustomize", str(ROOT / "deploy/k8s/overlays" / overlay)], capture_output=True, text=True
        )
        if rendered.returncode != 0:
            fail(f"{overlay}: kustomize failed: {rendered.stderr}")
            continue
        out_file = Path(f"/tmp/vbase-{overlay}.yaml")
        out_file.write_text(rendered.stdout)
        v = subprocess.run([validator, "--strict", "--quiet", str(out_file)], capture_output=True, text=True)
        if v.returncode != 0:
            fail(f"{overlay}: schema validation failed:\n{v.stdout}{v.stderr}")
        docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
        check_crd_schemas(overlay, docs)
        for ing in (d for d in docs if d["kind"] == "Ingress"):
            for rule in ing["spec"].get("rules", []):
                INGRESS_HOSTS.setdefault(rule.get("host", "*"), set()).add(overlay)
        check_alerts(overlay, docs)
        check_cloudnative_pg(overlay, docs)
        check_pod_monitors(overlay, docs)
        check_public_paths(overlay, docs)
        check_egress(overlay, docs)
        configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
        deployments = [d for d in docs if d["kind"] == "Deployment"]
        cronjobs = [d for d in docs if d["kind"] == "CronJob"]
        for cj in cronjobs:
            if cj["spec"].get("concurrencyPolicy") != "Forbid":
                fail(f"{overlay}/{cj['metadata']['name']}: concurrencyPolicy must be Forbid")
            check_no_retry_of_refusals(overlay, cj)
        # A Deployment an HPA scales sets no spec.replicas: every `kubectl apply -k` would put
        # that number back over the HPA's choice (killing pods under load). minReplicas is the floor.
        hpas = {
            h["spec"]["scaleTargetRef"]["name"]: h
            for h in docs
            if h["kind"] == "HorizontalPodAutoscaler" and h["spec"]["scaleTargetRef"].get("kind") == "Deployment"
        }
        for d in deployments:
            name = d["metadata"]["name"]
            if name in hpas and "replicas" in d["spec"]:
                fail(f"{overlay}/{name}: sets spec.replicas, but HPA {hpas[name]['metadata']['name']} scales it: every apply resets its choice (set minReplicas instead)")
            floor = hpas[name]["spec"].get("minReplicas", 1) if name in hpas else d["spec"].get("replicas", 1)
            if overlay == "prod" and floor < 2:
                fail(f"prod: {name} may run fewer than 2 replicas")
        pods = [(d, d["spec"]["template"]["spec"]) for d in deployments]
        pods += [(c, c["spec"]["jobTemplate"]["spec"]["template"]["spec"]) for c in cronjobs]
        check_operator_objects(overlay, docs, configmaps, pods)
        for d, spec in pods:
            for c in spec.get("initContainers", []) + spec["containers"]:
                binary = Path(c["command"][0]).name
                sub = (c.get("args") or ["serve"])[0]
                where = f"{overlay}/{d['metadata']['name']}/{c['name']}"
                reads = binary_env(binary, sub)
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                for src in c.get("envFrom", []):
                    cm = src.get("configMapRef", {}).get("name")
                    if cm not in configmaps:
                        fail(f"{where}: envFrom names a missing ConfigMap {cm}")
                        continue
                    env.update(configmaps[cm])
                for name in sorted(set(env) - reads):
                    fail(f"{where}: sets {name}, which `{binary} {sub}` does not read")
                check_secret_files(where, spec, c, env)
                if env.get("DB_POOL_MODE") == "transaction" and not ({"DATABASE_DIRECT_URL", "DATABASE_DIRECT_URL_FILE"} & set(env)):
                    fail(f"{where}: DB_POOL_MODE=transaction needs DATABASE_DIRECT_URL (LISTEN and the role's settings cannot go through the pooler)")
                sc = c.get("securityContext", {})
                for key, want in [("runAsNonRoot", True), ("allowPrivilegeEscalation", False), ("readOnlyRootFilesystem", True)]:
                    if sc.get(key) != want:
                        fail(f"{where}: securityContext.{key} must be {want}")
                if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                    fail(f"{where}: must drop ALL capabilities")
                if sub != "serve":
                    continue
                if d["kind"] == "Deployment":
                    check_shutdown(where, spec, c, binary, sub, env)
                if overlay == "prod" and "CLERK_AUTHORIZED_PARTIES" in reads and not env.get("CLERK_AUTHORIZED_PARTIES"):
                    fail(f"{where}: CLERK_AUTHORIZED_PARTIES must name the app's origins in prod (user tokens are then checked for azp)")
                ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
                listening = {port_of(v) for k, v in env.items() if k.endswith("_ADDR") and v}
                for declared in ports.values():
                    if declared not in listening:
                        fail(f"{where}: containerPort {declared} is not an address the binary listens on ({sorted(listening)})")
                for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
                    probe = c.get(probe_name)
                    if not probe:
                        fail(f"{where}: no {probe_name}")
                        continue
                    if "httpGet" in probe:
                        port = probe["httpGet"]["port"]
                        port = ports.get(port, port)
                        if port not in listening:
                            fail(f"{where}: {probe_name} port {port} is not served")
                        path = probe["httpGet"]["path"]
                        # The metrics listener serves /healthz and /metrics; the gateway its routes.
                        if path not in served_paths(binary):
                            fail(f"{where}: {probe_name} path {path} is not served by {binary}")
                    elif "grpc" in probe:
                        if probe["grpc"]["port"] not in listening:
                            fail(f"{where}: {probe_name} gRPC port {probe['grpc']['port']} is not served")
                        name = probe["grpc"].get("service", "")
                        if binary not in GRPC_NAMES or f'"{name}"' not in GRPC_NAMES[binary].read_text():
                            fail(f"{where}: {probe_name} checks gRPC health of {name!r}, not the service's name")
                    else:
                        fail(f"{where}: {probe_name} must be httpGet or grpc")
        print(f"{overlay}: {len(docs)} objects rendered, validated and checked")
    # Overlays may share a cluster: two that claim one Ingress host would take each other's traffic.
    for host, overlays in sorted(INGRESS_HOSTS.items()):
        if len(overlays) > 1:
            fail(f"Ingress host {host} is claimed by several overlays: {sorted(overlays)}")
    if shutil.which("promtool"):
        tests = yaml.safe_load((ROOT / "deploy/alerts-test.yaml").read_text())["tests"]
        for i, t in enumerate(tests):
            if i not in TESTS_RUN:
                names = sorted({a["alertname"] for a in t.get("alert_rule_test", [])})
                fail(f"deploy/alerts-test.yaml: test {i + 1} ({', '.join(names)}) names an alert no overlay has")
    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
