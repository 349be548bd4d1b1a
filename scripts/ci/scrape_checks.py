#!/usr/bin/env python3
"""The scrape test's checks, run by scripts/ci/prometheus-check against a real tally and a real
Prometheus that scrapes it (both on loopback, started and stopped by that script).

1. Sends Twilio's traffic with `tally simulate` (seeded operations with channel fallbacks,
   failures with real error codes, read receipts, duplicates, through both doors, checked with
   --verify), then two requests it never sends, signed with `tally sign`: a batch holding one
   event of an unknown type, and a form callback signed with the wrong token.
2. Waits until Prometheus has scraped the result and checks, through its HTTP API, that every
   counter tally exports arrived with tally's own value, and that the event accounting agrees
   with what `tally simulate` was told and with the operations the query API shows.
3. Checks that Prometheus loaded deploy/prometheus/alerts.yml, evaluates every rule without
   error, and that nothing fires.
4. Runs `promtool check metrics` on tally's /metrics.
5. Checks the Grafana dashboard and the alert rules: every PromQL expression (Grafana
   variables substituted) is evaluated by this Prometheus and must parse and run; every metric
   they name must be one tally exports, or one declared in src/ with no sample yet.
   Expressions whose metrics all have samples must return data.

Standard library only, plus the tally binary. Exits 1 with a list of failures.
"""

import argparse
import json
import pathlib
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from checklib import fail, finish, ok

PHONE = "+15558675310"
DEADLINE_S = 45
# The simulated send: seeded, so every run sends the same requests.
OPERATIONS = 4
RECIPIENTS = 25



def http(method, url, body=None, headers=None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ok(url, what):
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        try:
            status, _ = http("GET", url, timeout=2)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"{what} did not become ready at {url} within {DEADLINE_S}s")


# --- Twilio's traffic ------------------------------------------------------------------------


class Tally:
    """The tally under test, and the binary that signs and simulates as Twilio does."""

    def __init__(self, base, token, binary, work):
        self.base = base
        self.token = token
        self.binary = binary
        self.work = pathlib.Path(work)

    def sign(self, url, form=(), json_body=None, token=None):
        """`tally sign`: the URL to call and its X-Twilio-Signature."""
        cmd = [self.binary, "sign", "--token", token or self.token, "--url", url]
        if json_body is not None:
            body_file = self.work / "body.json"
            body_file.write_bytes(json_body)
            cmd += ["--json", str(body_file)]
        for k, v in form:
            cmd += ["--form", f"{k}={v}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
        return lines.get("url", url), lines["X-Twilio-Signature"]

    def post_events(self, body):
        url, signature = self.sign(f"{self.base}/twilio/events", json_body=body)
        headers = {"Content-Type": "application/json", "X-Twilio-Signature": signature}
        return http("POST", url, body, headers)[0]

    def post_status(self, params, token=None):
        url = f"{self.base}/twilio/status"
        _, signature = self.sign(url, form=params, token=token)
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
        }
        return http("POST", url, urllib.parse.urlencode(params).encode(), headers)[0]

    def simulate(self):
        """`tally simulate --verify`: the run's figures (requests, acknowledged, and the sums of
        tally's per-request summaries)."""
        report = self.work / "simulate.json"
        cmd = [
            self.binary, "simulate", "--target", self.base, "--token", self.token,
            "--operations", str(OPERATIONS), "--recipients", str(RECIPIENTS),
            "--kinds", "messages", "--mix", "both", "--fallback", "0.5", "--duplicates", "20%",
            "--shuffle", "--seed", "7", "--concurrency", "4", "--verify", "--quiet",
            "--report", str(report),
        ]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            fail(f"tally simulate --verify failed:\n{p.stdout}{p.stderr}")
        else:
            ok("tally simulate --verify: every operation reached the expected state")
        return json.loads(report.read_text())["run"] if report.exists() else None


def post_scenario(tally):
    """Send the traffic; return what `expected_values` needs to know of it."""
    run = tally.simulate()
    unknown = json.dumps([{"specversion": "1.0", "type": "com.example.not-a-twilio-event",
                           "source": "/scrape-test", "id": "EZ1", "data": {}}]).encode()
    code = tally.post_events(unknown)
    if code != 200:
        fail(f"POST a batch with an unknown event type: HTTP {code}, expected 200")
    forged = tally.post_status(
        [("MessageSid", "SM" + "0" * 32), ("MessageStatus", "read"), ("To", PHONE)],
        token="not-the-auth-token",
    )
    if forged != 403:
        fail(f"POST with a wrong signature: HTTP {forged}, expected 403")
    return run


def query_api_totals(tally):
    """Resources and attempts over every operation the query API lists."""
    status, raw = http("GET", f"{tally.base}/v1/Messages/Operations?pageSize=1000")
    ops = json.loads(raw)["operations"] if status == 200 else []
    return (
        len(ops),
        sum(op["stats"]["total"] for op in ops),
        sum(op["stats"]["attempts"] for op in ops),
    )


def expected_values(run, totals):
    """PromQL → the value Prometheus must return once the traffic is scraped."""
    sel = 'job="tally"'
    operations, resources, attempts = totals
    return [
        (f'up{{{sel}}}', 1),
        (f'sum(tally_events_received_total{{{sel}}})', run["received"] + 1),
        (
            f'sum(tally_events_received_total{{{sel}}}) - sum(tally_events_applied_total{{{sel}}})'
            f' - sum(tally_events_noop_total{{{sel}}}) - sum(tally_events_rejected_total{{{sel}}})',
            0,
        ),
        (f'sum(tally_events_applied_total{{{sel}}})', run["applied"]),
        (f'sum(tally_events_noop_total{{{sel}}})', run["noop"]),
        (f'tally_events_rejected_total{{{sel}, reason="unknown_type"}}', 1),
        (f'sum(tally_events_rejected_total{{{sel}}})', run["rejected"] + 1),
        (f'sum(tally_callbacks_total{{{sel}, code="200"}})', run["acked"] + 1),
        (f'tally_callbacks_total{{{sel}, route="status", code="403"}}', 1),
        (f'tally_signature_failures_total{{{sel}, route="status", reason="mismatch"}}', 1),
        (f'sum(tally_operations{{{sel}}})', operations),
        (f'tally_resources{{{sel}}}', resources),
        (f'tally_attempts{{{sel}}}', attempts),
        (f'tally_journal_healthy{{{sel}}}', 1),
        (f'tally_journal_write_errors_total{{{sel}}}', 0),
    ]


class Prometheus:
    def __init__(self, base):
        self.base = base

    def query(self, expr):
        body = urllib.parse.urlencode({"query": expr}).encode()
        status, raw = http(
            "POST",
            f"{self.base}/api/v1/query",
            body,
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        try:
            return json.loads(raw)
        except ValueError:
            return {"status": "error", "error": f"HTTP {status}: {raw[:200]!r}"}

    def scalar(self, expr):
        r = self.query(expr)
        if r.get("status") != "success":
            return None, r.get("error")
        result = r["data"]["result"]
        if r["data"]["resultType"] == "scalar":
            return float(result[1]), None
        if len(result) != 1:
            return None, f"{len(result)} series"
        return float(result[0]["value"][1]), None

    def get(self, path):
        return json.loads(http("GET", f"{self.base}{path}")[1])


def check_counters(prom, expected, heading):
    print(f"==> {heading}")
    end = time.monotonic() + DEADLINE_S
    while True:
        results = [(e, v, *prom.scalar(e)) for e, v in expected]
        wrong = [r for r in results if r[2] != r[1]]
        if not wrong or time.monotonic() > end:
            break
        time.sleep(0.5)
    for expr, want, got, err in results:
        if got == want:
            ok(f"{expr} = {want:g}")
        else:
            fail(f"{expr} = {got if err is None else err}, expected {want}")


def counter_samples(exposition):
    """(PromQL selector, value) of every counter sample and histogram count in the exposition."""
    kinds = {}
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            kinds[name] = kind.strip()
    samples = []
    for line in exposition.splitlines():
        if not line.startswith("tally_"):
            continue
        series, value = line.rsplit(" ", 1)
        name = re.split(r"[{ ]", series, maxsplit=1)[0]
        family = re.sub(r"_count$", "", name)
        if kinds.get(name) == "counter" or (name.endswith("_count") and kinds.get(family) == "histogram"):
            labels = series[len(name):] or "{}"
            selector = name + labels[:-1] + (', ' if labels != "{}" else "") + 'job="tally"}'
            samples.append((selector, float(value)))
    return samples


def check_every_counter(prom, exposition):
    check_counters(
        prom,
        counter_samples(exposition),
        "every counter tally exports reads the same in Prometheus",
    )


def check_rules(prom):
    print("==> Prometheus loaded the alert rules and evaluates them without error")
    end = time.monotonic() + DEADLINE_S
    while True:
        groups = prom.get("/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("health") == "ok" for r in rules):
            break
        if time.monotonic() > end:
            break
        time.sleep(0.5)
    if not rules:
        fail("no rule loaded")
    for r in rules:
        if r.get("health") == "ok":
            ok(f"rule {r['name']}: evaluated, state {r.get('state', '-')}")
        else:
            fail(f"rule {r['name']}: health {r.get('health')} {r.get('lastError', '')}")
    firing = [
        a["labels"]["alertname"]
        for a in prom.get("/api/v1/alerts")["data"]["alerts"]
        if a["state"] == "firing"
    ]
    if firing:
        fail(f"alerts firing against a healthy tally: {firing}")
    else:
        ok("no alert fires against a healthy tally")


def check_metrics_lint(exposition):
    print("==> promtool check metrics on tally's /metrics")
    p = subprocess.run(
        ["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True
    )
    report = (p.stdout + p.stderr).strip()
    if p.returncode == 0:
        ok("promtool check metrics: no problem" + (f" ({report})" if report else ""))
    else:
        fail(f"promtool check metrics:\n{report}")


# --- the dashboard --------------------------------------------------------------------------

SUBSTITUTIONS = [
    ("$__rate_interval", "1m"),
    ("${__rate_interval}", "1m"),
    ("$__interval", "15s"),
    ("${__interval}", "15s"),
    ("$__range", "5m"),
    ("${__range}", "5m"),
    ("${job}", "tally"),
    ("$job", "tally"),
    ("${instance}", ".*"),
    ("$instance", ".*"),
]
METRIC_NAME = re.compile(r"\btally_[a-z0-9_]+\b")
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$", re.S)


def substitute(expr):
    for var, value in SUBSTITUTIONS:
        expr = expr.replace(var, value)
    return expr


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def exported_names(exposition):
    """Metric names with a sample in the exposition, and the histogram families."""
    names, histograms = set(), set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            if kind.strip() == "histogram":
                histograms.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names, histograms


def declared_names(src):
    names = set()
    for f in pathlib.Path(src).rglob("*.rs"):
        names.update(re.findall(r'"(tally_[a-z0-9_]+)"', f.read_text()))
    return names


def check_rule_names(alerts_path, exposition, src):
    print(f"==> {alerts_path}: every metric named is tally's")
    sampled, _ = exported_names(exposition)
    declared = declared_names(src)
    text = pathlib.Path(alerts_path).read_text()
    for name in sorted(set(METRIC_NAME.findall(text))):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name in sampled or name in declared or base in declared:
            ok(name)
        else:
            fail(f"{alerts_path}: {name} is not a metric tally exports or declares")


def check_dashboard(prom, dashboard_path, exposition, src):
    print(f"==> dashboard {dashboard_path}: every expression runs, every metric is tally's")
    d = json.loads(pathlib.Path(dashboard_path).read_text())
    sampled, histograms = exported_names(exposition)
    declared = declared_names(src)

    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail("no `datasource` variable of type datasource querying prometheus")

    exprs = []
    for v in variables.values():
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = LABEL_VALUES.match(q or "")
            if not m:
                fail(f"variable {v['name']}: query {q!r} is not label_values(expr, label)")
                continue
            exprs.append((f"variable {v['name']}", m.group(1), m.group(2)))
            if v.get("datasource", {}).get("uid") != "${datasource}":
                fail(f"variable {v['name']}: datasource is not ${{datasource}}")

    for p in walk_panels(d.get("panels", [])):
        if p.get("type") == "row":
            continue
        title = p.get("title", f"panel {p.get('id')}")
        if p.get("datasource", {}).get("uid") != "${datasource}":
            fail(f"panel {title!r}: datasource is not ${{datasource}}")
        if not p.get("targets"):
            fail(f"panel {title!r}: no query")
        for t in p.get("targets", []):
            if t.get("datasource", {}).get("uid") != "${datasource}":
                fail(f"panel {title!r} {t.get('refId')}: datasource is not ${{datasource}}")
            exprs.append((f"panel {title!r} {t.get('refId')}", t.get("expr", ""), None))

    # rate() needs two samples of a series in its window: give the series the scenario created
    # a few scrapes first.
    end = time.monotonic() + DEADLINE_S
    settled = 'min(count_over_time(tally_delivery_errors_total{job="tally"}[1m])) >= 3'
    while not prom.query(settled).get("data", {}).get("result") and time.monotonic() < end:
        time.sleep(0.5)

    for where, raw, label in exprs:
        expr = substitute(raw)
        if "$" in expr:
            fail(f"{where}: unknown Grafana variable left in {expr!r}")
            continue
        all_sampled = True
        for name in sorted(set(METRIC_NAME.findall(expr))):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name in sampled or (base in histograms and name != base):
                continue
            all_sampled = False
            if name in declared:
                print(f"  note {where}: {name} is declared in {src} but has no sample yet")
            else:
                fail(f"{where}: {name} is not a metric tally exports or declares")
        while True:
            r = prom.query(expr)
            if r.get("status") != "success":
                break
            data = r["data"]
            series = len(data["result"]) if data["resultType"] in ("vector", "matrix") else 1
            if series or not all_sampled or time.monotonic() > end:
                break
            time.sleep(0.5)
        if r.get("status") != "success":
            fail(f"{where}: Prometheus refused {expr!r}: {r.get('error')}")
            continue
        if label is not None:
            values = {s["metric"].get(label) for s in r["data"]["result"]}
            if not values - {None}:
                fail(f"{where}: {expr!r} gives no value for label {label}")
            else:
                ok(f"{where}: {label} values {sorted(values - {None})}")
        elif all_sampled and series == 0:
            fail(f"{where}: {expr!r} returns no data although tally exports its metrics")
        else:
            ok(f"{where}: {series} series")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tally", required=True)
    ap.add_argument("--tally-bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--dashboard", required=True)
    ap.add_argument("--alerts", required=True)
    ap.add_argument("--src", required=True)
    args = ap.parse_args()

    wait_ok(f"{args.tally}/readyz", "tally")
    wait_ok(f"{args.tally}/readyz/queries", "tally's query API (start-up recovery)")
    wait_ok(f"{args.prometheus}/-/ready", "Prometheus")
    tally = Tally(args.tally, args.token, args.tally_bin, args.work)
    prom = Prometheus(args.prometheus)

    print("==> sending Twilio's traffic: tally simulate, then tally sign")
    run = post_scenario(tally)
    if run is None:
        sys.exit("tally simulate wrote no report")
    check_counters(
        prom,
        expected_values(run, query_api_totals(tally)),
        "the event accounting arrived in Prometheus and agrees with the traffic sent",
    )
    check_every_counter(prom, http("GET", f"{args.tally}/metrics")[1].decode())
    check_rules(prom)
    exposition = http("GET", f"{args.tally}/metrics")[1].decode()
    check_metrics_lint(exposition)
    check_dashboard(prom, args.dashboard, exposition, args.src)
    check_rule_names(args.alerts, exposition, args.src)

    finish("prometheus-check")


if __name__ == "__main__":
    main()
