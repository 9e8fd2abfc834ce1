#!/usr/bin/env python3
"""bench-cluster: cluster mode against its targets, on a 3-member etcd cluster on loopback.

    bench/cluster_bench.py [BUILD_DIR]     MES=100000 APPLIES=1000 NODES=3

1. Apply throughput: MES resources (and one HostnameGenerator) in one `mesctl apply` on node
   A, written to etcd in transactions; then the time until every node serves all of them
   (its mesd_vips_in_use reaches MES and the last name answers).
2. Propagation: APPLIES single-MES applies on node A; for each, the time from `mesctl apply`
   returning to an answer from nodes B and C (UDP queries every 0.5 ms); p50, p99, max.
3. Memory: node B's RSS serving MES in cluster mode, and a single-node mesd serving the same
   MES from its own store.

Kuma's control plane allocates VIPs on a 5 s tick and ships them over xDS: a new
MeshExternalService takes seconds to resolve. Targets: p99 propagation < 1 s, MES applied in
< 60 s and served by every node < 10 s after, node RSS within 10% of single-node mode.
"""
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

BUILD = sys.argv[1] if len(sys.argv) > 1 else "build"
MESD = os.path.join(BUILD, "cmd", "mesd")
MESCTL = os.path.join(BUILD, "cmd", "mesctl")
MES = int(os.environ.get("MES", "100000"))
APPLIES = int(os.environ.get("APPLIES", "1000"))
NODES = int(os.environ.get("NODES", "3"))
POOL = "10.64.0.0/10"  # room for MES; redirect mode binds no address of it

procs = []


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def spawn(argv, log):
    p = subprocess.Popen(argv, stdout=open(log + ".out", "w"), stderr=open(log, "w"))
    procs.append(p)
    return p


def stop_all():
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def wait(what, check, limit=30.0, every=0.05):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    sys.exit(f"bench-cluster: {what} did not happen within {limit:.0f} s")


def start_etcd(work):
    ports = free_ports(6)
    names = [f"e{i}" for i in range(3)]
    initial = ",".join(f"{n}=http://127.0.0.1:{ports[3 + i]}" for i, n in enumerate(names))
    endpoints = []
    for i, n in enumerate(names):
        client, peer = ports[i], ports[3 + i]
        endpoints.append(f"http://127.0.0.1:{client}")
        spawn(["etcd", "--name", n, "--data-dir", os.path.join(work, n),
               "--listen-client-urls", endpoints[-1], "--advertise-client-urls", endpoints[-1],
               "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
               f"http://127.0.0.1:{peer}", "--initial-cluster", initial, "--initial-cluster-state", "new",
               "--quota-backend-bytes", str(4 << 30), "--logger", "zap", "--log-level", "error"],
              os.path.join(work, n + ".log"))

    def healthy():
        try:
            urllib.request.urlopen(endpoints[0] + "/health", timeout=1).read()
            return True
        except Exception:
            return False
    wait("etcd start", healthy)
    return endpoints


def write_config(path, data_dir, endpoints=None, node=None):
    text = (f"dataDir: {data_dir}\nvip:\n  ipv4: {POOL}\nadmin:\n  listen: 127.0.0.1:0\n"
            "dns:\n  listen: [\"127.0.0.1:0\"]\n  forward: {enabled: false}\n"
            "proxy:\n  mode: redirect\n  redirectListen: 127.0.0.1:0\n")
    if endpoints:
        text += f"cluster:\n  nodeName: {node}\n  etcd:\n    endpoints: [{', '.join(endpoints)}]\n"
    with open(path, "w") as f:
        f.write(text)
    return path


class Node:
    def __init__(self, work, name, endpoints=None, data_dir=None):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.config = write_config(os.path.join(self.dir, "mesd.yaml"), data_dir or os.path.join(self.dir, "data"),
                                   endpoints, name)
        self.log = os.path.join(self.dir, "mesd.log")
        self.proc = spawn([MESD, "--config", self.config], self.log)
        wait(f"{name} ready", lambda: "msg=ready" in open(self.log).read())
        text = open(self.log).read()
        self.dns = int(text.split("sys=dns msg=listening addr=")[1].split()[0].rsplit(":", 1)[1])
        self.admin = int(text.split("sys=admin msg=listening addr=")[1].split()[0].rsplit(":", 1)[1])

    def metric(self, name):
        page = urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5).read().decode()
        for line in page.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return -1.0

    def rss_mb(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        return 0.0


def query(name):
    qid = random.randrange(65536)
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        packet += bytes([len(label)]) + label.encode()
    return qid, packet + b"\x00" + struct.pack(">HH", 1, 1)


def answered(sock, port, name):
    """One A query; True when the answer section is not empty."""
    qid, packet = query(name)
    sock.sendto(packet, ("127.0.0.1", port))
    try:
        while True:
            data, _ = sock.recvfrom(4096)
            rid, flags, _, ancount = struct.unpack(">HHHH", data[:8])
            if rid == qid:
                return ancount > 0
    except socket.timeout:
        return False


def mes_yaml(names):
    return "".join(f"---\ntype: MeshExternalService\nname: {n}\nspec:\n  match: {{port: 80, protocol: tcp}}\n"
                   f"  endpoints: [{{address: 127.0.0.1, port: 9}}]\n" for n in names)


GENERATOR = ("---\ntype: HostnameGenerator\nname: bench\nspec:\n  selector:\n    meshExternalService:\n"
             "      matchLabels: {}\n  template: \"{{ .Name }}.mesh\"\n")


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def main():
    for tool in ("etcd",):
        if not shutil.which(tool):
            sys.exit(f"bench-cluster: {tool} is missing (make deps)")
    work = tempfile.mkdtemp(prefix="mesd-bench-cluster-")
    try:
        endpoints = start_etcd(work)
        nodes = [Node(work, f"node-{i}", endpoints) for i in range(NODES)]
        print(f"bench-cluster: etcd 3 members, {NODES} mesd nodes, {MES} MES, {APPLIES} single applies")

        # 1. Throughput
        big = os.path.join(work, "big.yaml")
        with open(big, "w") as f:
            f.write(GENERATOR + mes_yaml(f"mes-{i}" for i in range(MES)))
        began = time.monotonic()
        r = subprocess.run([MESCTL, "--config", nodes[0].config, "apply", "-f", big], capture_output=True, text=True)
        applied = time.monotonic() - began
        if r.returncode != 0:
            sys.exit("bench-cluster: apply failed: " + r.stderr[-2000:])
        served = {}
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.settimeout(0.05)
        last_name = f"mes-{MES - 1}.mesh"
        for i, n in enumerate(nodes):
            # Every VIP in the node's store, and the last name in its DNS index.
            wait(f"node-{i} serving {MES} MES",
                 lambda n=n: n.metric("mesd_vips_in_use") >= MES and answered(probe, n.dns, last_name),
                 limit=600, every=0.01)
            served[i] = time.monotonic() - began - applied
        last = max(served.values())
        print(f"apply:        {MES} MES in {applied:.1f} s = {MES / applied:,.0f} MES/s (target < 60 s: "
              f"{'met' if applied < 60 else 'NOT met'})")
        print(f"served:       every node {last:.2f} s after the apply returned (target < 10 s: "
              f"{'met' if last < 10 else 'NOT met'}); " +
              ", ".join(f"node-{i} {t:.2f} s" for i, t in served.items()))

        # 3. Memory, while the big state is loaded: cluster node against single-node mesd.
        single_dir = os.path.join(work, "single")
        os.makedirs(single_dir)
        single_config = write_config(os.path.join(single_dir, "mesd.yaml"), os.path.join(single_dir, "data"))
        r = subprocess.run([MESCTL, "--config", single_config, "apply", "-f", big], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit("bench-cluster: single-node apply failed: " + r.stderr[-2000:])
        single = Node(work, "single-node", None, os.path.join(single_dir, "data"))
        wait("single-node serving", lambda: single.metric("mesd_vips_in_use") >= MES, limit=120)
        time.sleep(1)
        rss_cluster = nodes[1].rss_mb()
        rss_single = single.rss_mb()
        ratio = rss_cluster / rss_single if rss_single else 0
        print(f"memory:       node RSS {rss_cluster:.1f} MiB in cluster mode, {rss_single:.1f} MiB single-node "
              f"({ratio:.2f}x; target within 10%: {'met' if ratio <= 1.10 else 'NOT met'})")
        single.proc.send_signal(signal.SIGTERM)

        # 2. Propagation
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(0.05)
        one = os.path.join(work, "one.yaml")
        latencies = {i: [] for i in range(1, NODES)}
        began_all = time.monotonic()
        for k in range(APPLIES):
            name = f"prop-{k}"
            with open(one, "w") as f:
                f.write(mes_yaml([name]))
            r = subprocess.run([MESCTL, "--config", nodes[0].config, "apply", "-f", one], capture_output=True, text=True)
            t0 = time.monotonic()
            if r.returncode != 0:
                sys.exit("bench-cluster: apply failed: " + r.stderr[-2000:])
            pending = set(latencies)
            while pending and time.monotonic() - t0 < 10:
                for i in list(pending):
                    if answered(sock, nodes[i].dns, name + ".mesh"):
                        latencies[i].append((time.monotonic() - t0) * 1000)
                        pending.discard(i)
                if pending:
                    time.sleep(0.0005)
            for i in pending:
                latencies[i].append(10_000.0)
        took = time.monotonic() - began_all
        all_ms = [v for vs in latencies.values() for v in vs]
        p99 = pct(all_ms, 99)
        print(f"propagation:  {APPLIES} applies on node-0 in {took:.0f} s; answered on " +
              ", ".join(f"node-{i}" for i in latencies) +
              f": p50 {pct(all_ms, 50):.1f} ms, p99 {p99:.1f} ms, max {max(all_ms):.1f} ms "
              f"(target p99 < 1 s: {'met' if p99 < 1000 else 'NOT met'}; Kuma's tick is 5 s: "
              f"{5000 / p99 if p99 else 0:.0f}x sooner)")
        for i, vs in latencies.items():
            print(f"              node-{i}: p50 {pct(vs, 50):.1f} ms, p99 {pct(vs, 99):.1f} ms")
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
