"""Cluster-mode figures on this machine, against tansu on loopback (bench/cluster runs it).

For each size in BENCH_RESOURCES (operations of 1,000 recipients, Event Streams batches of 100):

- ingest throughput: the same scenario sent by `tally simulate` to one ingest process (with one
  aggregate process folding behind it) and to one single process with its journal
  (fsync = batch), back to back; events per second and server CPU-seconds of the process that
  answered;
- end-to-end latency: one signed operation event for a fresh operation posted to the ingest
  process, timed until its record is on the operations topic (20 samples);
- failover: a second aggregate process joins and takes half the partitions; then one is killed
  with SIGKILL and a replacement started at once (as an orchestrator would); the time from the
  kill until every partition is live again, and each restore's own time from the log.

Everything talks to 127.0.0.1 only. Writes bench/results/cluster.json.
"""

import base64, hashlib, hmac, json, os, re, signal, socket, subprocess, sys, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "tally")
TANSU = os.environ["TALLY_TEST_TANSU"]
WORK = os.environ.get("BENCH_WORK", "/tmp/tally-bench-cluster")
SIZES = [int(s) for s in os.environ.get("BENCH_RESOURCES", "100000 1000000").split()]
TOKEN = "bench-token"
PARTITIONS = 8


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, within=30):
    t = time.time()
    while time.time() - t < within:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def get_json(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return json.load(r)
    except Exception:
        return None


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Proc:
    def __init__(self, name, env, port):
        self.name, self.port = name, port
        d = os.path.join(WORK, name)
        os.makedirs(d, exist_ok=True)
        self.log = os.path.join(d, "tally.log")
        full = dict(os.environ, TALLY_HTTP__LISTEN=f"127.0.0.1:{port}", TALLY_TWILIO__AUTH_TOKENS=TOKEN,
                    TALLY_HTTP__WORKERS="2", **env)
        full.pop("RUST_LOG", None)
        self.p = subprocess.Popen([BIN, "serve"], cwd=d, env=full, stdout=open(self.log, "w"),
                                  stderr=subprocess.STDOUT)
        wait_port(port)

    def kill(self, sig=signal.SIGKILL):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            self.p.wait(30)


def cluster_env(role, port, broker):
    return {"TALLY_CLUSTER__ROLE": role, "TALLY_CLUSTER__ADVERTISE_URL": f"http://127.0.0.1:{port}",
            "TALLY_KAFKA__BROKERS": broker, "TALLY_KAFKA__PARTITIONS": str(PARTITIONS),
            "TALLY_KAFKA__FLUSH_INTERVAL": "50ms",
            "TALLY_KAFKA__LIBRDKAFKA__SESSION_TIMEOUT_MS": "6000",
            "TALLY_KAFKA__LIBRDKAFKA__HEARTBEAT_INTERVAL_MS": "1000"}


def owned(port):
    d = get_json(port, "/healthz/details")
    if not d:
        return None
    return {int(k): v["state"] for k, v in d["cluster"]["owned"].items()}


def wait_all_live(ports, within=1800):
    t = time.time()
    while time.time() - t < within:
        seen, live = [], True
        for p in ports:
            o = owned(p) or {}
            seen += list(o)
            live &= bool(o) and all(s == "live" for s in o.values())
        if live and sorted(seen) == list(range(PARTITIONS)):
            return time.time() - t
        time.sleep(0.1)
    raise SystemExit(f"partitions never all live on {ports}")


def simulate(target, operations):
    out = subprocess.run([BIN, "simulate", "--target", f"http://127.0.0.1:{target}", "--token", TOKEN,
                          "--operations", str(operations), "--recipients", "1000", "--mix", "events",
                          "--quiet"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"sent \d+/\d+ requests \((\d+) events\) in ([\d.]+)s", out)
    return int(m.group(1)), float(m.group(2))


def caught_up(port, within=1800):
    """Wait until the aggregate process's lag is zero on every partition it owns."""
    t = time.time()
    while time.time() - t < within:
        d = get_json(port, "/healthz/details")
        if d and d["cluster"]["owned"] and all(v["position"] >= v["end"] and v["state"] == "live"
                                               for v in d["cluster"]["owned"].values()):
            return time.time() - t
        time.sleep(0.2)
    raise SystemExit("the aggregate process never caught up")


def latency(ingest_port, broker, samples=20):
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": broker, "group.id": f"bench-{time.time()}", "auto.offset.reset": "latest",
                  "fetch.wait.max.ms": 5})
    c.subscribe(["tally.operations"])
    deadline = time.time() + 30
    while not c.assignment() and time.time() < deadline:
        c.poll(0.2)
    out = []
    for i in range(samples):
        op = f"comms_operation_benchlatency{int(time.time()*1000)}{i}"
        body = json.dumps([{"specversion": "1.0", "type": "com.twilio.comms-api.operation.processing",
                            "source": "/v1/Messages", "id": f"EVbench{i}{time.time()}",
                            "time": "2026-01-01T00:00:00Z", "data": {"operation_id": op}}]).encode()
        sha = hashlib.sha256(body).hexdigest()
        url = f"http://127.0.0.1:{ingest_port}/twilio/events?bodySHA256={sha}"
        sig = base64.b64encode(hmac.new(TOKEN.encode(), url.encode(), hashlib.sha1).digest()).decode()
        t0 = time.time()
        req = urllib.request.Request(url, body, {"Content-Type": "application/json", "X-Twilio-Signature": sig})
        urllib.request.urlopen(req, timeout=10).read()
        acked = time.time() - t0
        while time.time() - t0 < 30:
            m = c.poll(0.05)
            if m is not None and not m.error() and m.key() and m.key().decode() == op:
                out.append((acked, time.time() - t0))
                break
    c.close()
    return out


def main():
    os.makedirs(WORK, exist_ok=True)
    results = {"machine": {"nproc": os.cpu_count(), "load_before": os.getloadavg()[0]}, "sizes": []}
    for size in SIZES:
        ops = size // 1000
        kport = free_port()
        broker = f"127.0.0.1:{kport}"
        tansu = subprocess.Popen([TANSU, "broker", "--listener-url", f"tcp://{broker}", "--advertised-listener-url",
                                  f"tcp://{broker}", "--storage-engine", "memory://tansu/"],
                                 stdout=subprocess.DEVNULL, stderr=open(os.path.join(WORK, "tansu.log"), "w"))
        wait_port(kport)
        procs = []
        try:
            ip, a1p = free_port(), free_port()
            ing = Proc(f"ingest-{size}", cluster_env("ingest", ip, broker), ip)
            a1 = Proc(f"aggregate-a-{size}", cluster_env("aggregate", a1p, broker), a1p)
            procs += [ing, a1]
            wait_all_live([a1p], 120)
            while not (get_json(ip, "/readyz") or {}).get("ready"):
                time.sleep(0.2)
            cpu0 = cpu_seconds(ing.p.pid)
            events, secs = simulate(ip, ops)
            ingest_cpu = cpu_seconds(ing.p.pid) - cpu0
            fold = caught_up(a1p)
            # The same scenario into one single process with its journal.
            sp = free_port()
            single = Proc(f"single-{size}", {"TALLY_STORAGE__DIR": os.path.join(WORK, f"single-{size}", "data"),
                                              "TALLY_STORAGE__FSYNC": "batch"}, sp)
            procs.append(single)
            while not (get_json(sp, "/readyz/queries") or {}).get("ready"):
                time.sleep(0.2)
            cpu0 = cpu_seconds(single.p.pid)
            s_events, s_secs = simulate(sp, ops)
            single_cpu = cpu_seconds(single.p.pid) - cpu0
            single.kill(signal.SIGTERM)
            lat = latency(ip, broker)
            # Failover: a second member takes half, then one is killed and replaced.
            a2p = free_port()
            t = time.time()
            a2 = Proc(f"aggregate-b-{size}", cluster_env("aggregate", a2p, broker), a2p)
            procs.append(a2)
            split = wait_all_live([a1p, a2p])
            a3p = free_port()
            t0 = time.time()
            a1.kill()
            a3 = Proc(f"aggregate-c-{size}", cluster_env("aggregate", a3p, broker), a3p)
            procs.append(a3)
            failover = wait_all_live([a2p, a3p])
            failover = time.time() - t0
            restores = [int(x) for x in re.findall(r"took_ms=(\d+)", open(a3.log).read())]
            lat_done = sorted(x[1] for x in lat)
            lat_ack = sorted(x[0] for x in lat)
            fig = {
                "resources": size, "events": events,
                "ingest_events_per_s": events / secs, "single_journal_events_per_s": s_events / s_secs,
                "ingest_events_per_cpu_s": events / ingest_cpu, "single_journal_events_per_cpu_s": s_events / single_cpu,
                "aggregate_caught_up_s_after_send": fold,
                "latency_ack_p50_ms": 1000 * lat_ack[len(lat_ack) // 2],
                "latency_to_operations_topic_p50_ms": 1000 * lat_done[len(lat_done) // 2],
                "latency_to_operations_topic_max_ms": 1000 * lat_done[-1],
                "second_member_split_s": split,
                "failover_kill_to_all_live_s": failover,
                "replacement_restore_ms": restores,
            }
            results["sizes"].append(fig)
            print(f"FIGURE cluster {size} resources ({events} events):")
            for k, v in fig.items():
                print(f"  {k}: {v:.1f}" if isinstance(v, float) else f"  {k}: {v}")
            print(f"  ratio ingest/single per second: {fig['ingest_events_per_s']/fig['single_journal_events_per_s']:.2f}, "
                  f"per CPU-second: {fig['ingest_events_per_cpu_s']/fig['single_journal_events_per_cpu_s']:.2f}")
            sys.stdout.flush()
        finally:
            for p in procs:
                p.kill()
            tansu.kill()
            tansu.wait()
    results["machine"]["load_after"] = os.getloadavg()[0]
    results["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(os.path.join(ROOT, "bench", "results", "cluster.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
