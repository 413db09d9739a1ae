"""Noisy neighbour: how much of its throughput a healthy tenant keeps while
a hostile tenant in the same `rsgi-wasm serve` process spins or allocates.
Part of `make bench` (also `make bench-noisy`); writes its table into
docs/benchmarks.md between the NOISY markers.

`good` is the hello app (1 worker); `bad` (bench/apps/bad.py, timeout 2 s,
memory 256 MiB) gets as many concurrent requests as it has workers, each
of which spins (or allocates) until the timeout (or the memory cap) ends
it, and is asked again at once. wrk -t1 -c16 measures `good` alone, then
while `bad` runs. Nothing is pinned: both tenants, the I/O and wrk share
the machine's cores, as they would in production.

Options: --duration S (default 10).
"""

import argparse
import datetime
import http.client
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (shared helpers: paths, wrk parsing, stop)

PORT = 18300
WORK = os.path.join(bench.WORK, "noisy")


def build():
    if not shutil.which("wrk"):
        print("installing wrk (apt)", flush=True)
        bench.sh(["apt-get", "update", "-qq"])
        bench.sh(["apt-get", "install", "-y", "-qq", "wrk"])
    os.makedirs(WORK, exist_ok=True)
    out = {}
    for name, target in (("good", "hello:app"), ("bad", "bad:app")):
        path = os.path.join(WORK, name + ".wasm")
        env = dict(os.environ, RSGI_WASM_CACHE=bench.CACHE)
        bench.sh([bench.BIN, "build", target, "-p", bench.APPS_DIR, "-o", path, "--no-warmup"],
                 env=env, stderr=subprocess.DEVNULL)
        out[name] = path
    return out


def serve(components, bad_workers, bad_cpu):
    toml = os.path.join(WORK, "tenants.toml")
    cpu = f"cpu = {bad_cpu}\n" if bad_cpu else ""
    with open(toml, "w") as f:
        f.write(
            f'[[app]]\nname = "good"\ncomponent = "{components["good"]}"\nhosts = ["good"]\n\n'
            f'[[app]]\nname = "bad"\ncomponent = "{components["bad"]}"\nhosts = ["bad"]\n'
            f'workers = {bad_workers}\nqueue = 64\ntimeout = "2s"\nmemory = "256MiB"\n{cpu}'
        )
    env = dict(os.environ, RUST_LOG="error", RSGI_WASM_CACHE=bench.CACHE)
    p = subprocess.Popen([bench.BIN, "serve", toml, "--listen", f"127.0.0.1:{PORT}"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
            c.request("GET", "/", headers={"Host": "good"})
            if c.getresponse().status == 200:
                return p
        except OSError:
            time.sleep(0.2)
    bench.stop(p)
    raise SystemExit("serve did not start")


def hostile(path, n, stop):
    """n clients that keep one request each running at `bad`."""
    def loop():
        while not stop.is_set():
            try:
                c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
                c.request("GET", path, headers={"Host": "bad"})
                c.getresponse().read()
                c.close()
            except OSError:
                time.sleep(0.05)
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def wrk_good(duration):
    cmd = ["wrk", "-t1", "-c16", f"-d{duration}s", "--latency", "--timeout", "10s",
           "-H", "Host: good", f"http://127.0.0.1:{PORT}/"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", out)
    v, unit = float(m.group(1)), m.group(2)
    p99 = v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    return rps, p99


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--bin", default=bench.BIN, help="the rsgi-wasm binary (to compare builds)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    bench.BIN = args.bin
    cores = os.cpu_count() or 1
    components = build()
    started = datetime.datetime.now(datetime.timezone.utc)
    scenarios = [
        ("spin", cores, None),
        ("spin", 2 * cores, None),
        ("bomb", cores, None),
        ("spin", cores, 0.25),
    ]
    if args.bin != os.path.join(bench.ROOT, "target", "release", "rsgi-wasm"):
        scenarios = scenarios[:3]  # another build may not know `cpu`
    rows = []
    for kind, workers, cpu in scenarios:
        p = serve(components, workers, cpu)
        try:
            wrk_good(2)  # warm
            alone = wrk_good(args.duration)
            stop = threading.Event()
            hostile("/" + kind, workers, stop)
            time.sleep(1)
            during = wrk_good(args.duration)
            stop.set()
        finally:
            bench.stop(p)
        rows.append((kind, workers, cpu, alone, during))
        print(f"{kind} x{workers} cpu={cpu}: alone {alone[0]:,.0f} req/s p99 {alone[1]:.1f} ms; "
              f"during {during[0]:,.0f} req/s p99 {during[1]:.1f} ms", flush=True)
    cpuname = "unknown"
    try:
        cpuname = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    what = {"spin": "`while True: pass`", "bomb": "allocate until `MemoryError` (256 MiB cap)"}
    lines = [
        f"Run {started:%Y-%m-%d %H:%M} UTC on {cores} cores ({cpuname}), {platform.system()} "
        f"{platform.release()}; command: `make bench-noisy` (`python3 bench/noisy.py`), "
        f"{args.duration} s per run, nothing pinned. `good`: hello, 1 worker; `bad`: timeout 2 s, "
        "memory 256 MiB, one request per worker kept running; wrk -t1 -c16 on `good`.",
        "",
        "| `bad` does | `bad` workers | `bad` cpu | `good` req/s alone → during | ratio | p99 ms alone → during | p99 ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, workers, cpu, alone, during in rows:
        lines.append(
            f"| {what[kind]} | {workers} | {cpu if cpu else 'no cap'} | {alone[0]:,.0f} → {during[0]:,.0f} | "
            f"{during[0] / alone[0]:.2f}× | {alone[1]:.1f} → {during[1]:.1f} | {during[1] / alone[1]:.1f}× |"
        )
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_write:
        bench.record("NOISY", "Noisy neighbour (`make bench-noisy`, part of `make bench`)", text)


if __name__ == "__main__":
    main()
