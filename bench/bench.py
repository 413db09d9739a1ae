"""Side-by-side benchmark: rsgi-wasm vs Granian (WSGI), gunicorn sync and
gunicorn gthread, on the same apps, one worker each, server pinned to core
0 and wrk to core 1. Prints a table and writes it into docs/benchmarks.md
between the BENCH markers. Run with `make bench` (setup included).

Options: --quick (3 s runs, c=32 only: a smoke run), --duration S.
"""

import argparse
import datetime
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS_DIR = os.path.join(ROOT, "bench", "apps")
WORK = os.path.join(ROOT, "target", "bench")
PYDEPS = os.path.join(WORK, "py")
BIN = os.environ.get("RSGI_WASM_BIN") or os.path.join(ROOT, "target", "release", "rsgi-wasm")
CACHE = os.path.join(WORK, "cache")
PORT = 18200
SERVER_CPU = "0"
LOAD_CPU = "1"

# name: (module:callable, path, method, body-script)
APPS = {
    "hello": ("hello:app", "/", None),
    "flask-hello": ("flaskapp:app", "/", None),
    "flask-json": ("flaskapp:app", "/json", "json"),
    "stream-64k": ("stream:app", "/", None),
    "upload-1m": ("upload:app", "/", "upload"),
}
LUA = {
    "json": 'wrk.method = "POST"\nwrk.body = \'{"a": 1, "b": [1, 2, 3], "c": {"d": "e"}, "f": "%s"}\'\n'
    'wrk.headers["Content-Type"] = "application/json"\n' % ("x" * 200),
    "upload": 'wrk.method = "POST"\nwrk.body = string.rep("u", 1048576)\n'
    'wrk.headers["Content-Type"] = "application/octet-stream"\n',
}
SERVERS = ["rsgi-wasm", "granian", "gunicorn-sync", "gunicorn-gthread"]


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def setup():
    """Install wrk, the competitors and Flask (native), build components."""
    setup_tools()
    os.makedirs(WORK, exist_ok=True)
    built = {target: build(target) for target in sorted({a[0] for a in APPS.values()})}
    # Start each once so measured runs load the cached artifact instead of
    # compiling (Cranelift's memory would also dominate peak RSS).
    for target in built:
        warm(target, built)
    return built


def setup_tools():
    """Install wrk and the competitors (Granian, gunicorn, Flask: native)."""
    if not shutil.which("wrk"):
        print("installing wrk (apt)", flush=True)
        sh(["apt-get", "update", "-qq"])
        sh(["apt-get", "install", "-y", "-qq", "wrk"])
    if not os.path.isdir(os.path.join(PYDEPS, "granian")):
        print("installing granian, gunicorn, flask into target/bench/py", flush=True)
        sh([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
            "--root-user-action=ignore", "--target", PYDEPS,
            "granian==2.8.*", "gunicorn", "flask==3.1.*"])
    if not os.path.exists(BIN):
        sh(["cargo", "build", "--release"], cwd=ROOT)


def build(target, world="wsgi"):
    """Build one bench app (`--world` as given) into WORK; returns the path."""
    suffix = "" if world == "wsgi" else f"-{world}"
    out = os.path.join(WORK, target.split(":")[0] + suffix + ".wasm")
    cmd = [BIN, "build", target, "-p", APPS_DIR, "-o", out, "--world", world]
    if target.startswith("flask"):
        cmd += ["-r", os.path.join(APPS_DIR, "requirements.txt")]
    sh(cmd, env=dict(os.environ, RSGI_WASM_CACHE=CACHE), stderr=subprocess.DEVNULL)
    return out


def warm(target, components):
    """Start a component once, so its compiled artifact is cached."""
    p = start("rsgi-wasm", target, components)
    wait_200(PORT)
    stop(p)


def wait_port(port, timeout=120):
    t = time.time()
    while time.time() - t < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.01)
    raise SystemExit(f"server on {port} did not start")


def wait_200(port, path="/", timeout=120):
    import urllib.request
    t = time.time()
    while time.time() - t < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.002)
    raise SystemExit(f"no 200 from {port}{path}")


def start(server, target, components, workers=1, port=PORT, extra=()):
    env = dict(os.environ, PYTHONPATH=PYDEPS + ":" + APPS_DIR, RUST_LOG="warn", RSGI_WASM_CACHE=CACHE)
    pin = ["taskset", "-c", SERVER_CPU]
    py = sys.executable
    if server == "rsgi-wasm":
        cmd = [BIN, "run", components[target], "--listen", f"127.0.0.1:{port}",
               "--workers", str(workers), "--cache-dir", CACHE, *extra]
    elif server == "granian":
        cmd = [py, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), target]
    elif server == "gunicorn-sync":
        cmd = [py, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", str(workers), "-k", "sync", target]
    else:
        cmd = [py, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", str(workers), "-k", "gthread",
               "--threads", "8", target]
    p = subprocess.Popen(pin + cmd, cwd=APPS_DIR, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    return p


def stop(p):
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def tree_pids(pid):
    pids = [pid]
    i = 0
    while i < len(pids):
        try:
            for t in os.listdir(f"/proc/{pids[i]}/task"):
                with open(f"/proc/{pids[i]}/task/{t}/children") as f:
                    pids += [int(c) for c in f.read().split()]
        except OSError:
            pass
        i += 1
    return pids


def rss_of(pid, field="VmHWM"):
    """Sum of a /proc status field over the process tree; field "Pss" reads
    smaps_rollup (shared pages split between processes and mappings)."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup" if field == "Pss" else f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def wrk(path, conc, duration, script):
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conc}", f"-d{duration}s", "--latency",
           "--timeout", "10s"]
    if script:
        lua = os.path.join(WORK, script + ".lua")
        with open(lua, "w") as f:
            f.write(LUA[script])
        cmd += ["-s", lua]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{PORT}{path}"], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    count = int(re.search(r"(\d+) requests in", out).group(1))

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "count": count,
        "p50": pct(50),
        "p99": pct(99),
        "errors": (int(errors.group(1)) if errors else 0),
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def run_matrix(components, concs, duration, warm):
    rows = []
    for app, (target, path, script) in APPS.items():
        for server in SERVERS:
            p = start(server, target, components)
            try:
                wait_200(PORT, path if not script else "/")
                wrk(path, 32, warm, script)  # warm-up
                for c in concs:
                    r = wrk(path, c, duration, script)
                    r.update(app=app, server=server, conc=c, rss=rss_of(p.pid))
                    rows.append(r)
                    print(f"{app:12} {server:17} c={c:<4} {r['rps']:>10.0f} req/s  p50 {r['p50']:.2f} ms"
                          f"  p99 {r['p99']:.2f} ms  rss {r['rss'] / 2**20:.0f} MiB"
                          + (f"  non-2xx {r['errors']}" if r["errors"] else ""), flush=True)
            finally:
                stop(p)
    return rows


def cold_start(components):
    out = []
    for app, target in (("hello", "hello:app"), ("flask-hello", "flaskapp:app")):
        for label, clear in (("cold cache", True), ("warm cache", False)):
            times = []
            for _ in range(3 if not clear else 1):
                if clear:
                    shutil.rmtree(CACHE, ignore_errors=True)
                    os.makedirs(CACHE)
                t = time.time()
                p = start("rsgi-wasm", target, components)
                wait_200(PORT)
                times.append((time.time() - t) * 1000)
                stop(p)
            out.append((app, label, min(times)))
        for server in ("granian", "gunicorn-sync"):
            t = time.time()
            p = start(server, target, components)
            wait_200(PORT)
            out.append((app, server, (time.time() - t) * 1000))
            stop(p)
    return out


def fresh_instance(components, duration):
    """Per-request cost of `--isolation request`: the latency it adds at
    c=1, and the req/s one core sustains at c=32 (the CPU per instance)."""
    out = []
    for app, target in (("hello", "hello:app"), ("flask-hello", "flaskapp:app")):
        res = {}
        for iso in ("pooled", "request"):
            p = start("rsgi-wasm", target, components, extra=("--isolation", iso))
            wait_200(PORT)
            wrk("/", 1, 2, None)
            res[iso] = wrk("/", 1, duration, None)
            if iso == "request":
                res["request-32"] = wrk("/", 32, duration, None)
            stop(p)
        out.append((app, res["pooled"]["p50"], res["request"]["p50"], res["request"]["rps"],
                    res["request-32"]["rps"]))
    return out


def density(components):
    out = []
    for app, target in (("hello", "hello:app"), ("flask-hello", "flaskapp:app")):
        rss = {}
        for w in (1, 9):
            p = start("rsgi-wasm", target, components, workers=w)
            wait_200(PORT)
            wrk("/", 2 * w, 2, None)  # every instance serves requests
            rss[w] = rss_of(p.pid, "Pss")
            stop(p)
        out.append((app, (rss[9] - rss[1]) / 8))
    return out


def serve_tenants(component, n, expect):
    """Load n tenants of one component in one `serve` process; returns
    (how many answered with `expect`, PSS in bytes, seconds to load)."""
    cfg = os.path.join(WORK, "tenants.toml")
    with open(cfg, "w") as f:
        for i in range(n):
            f.write(f'[[app]]\nname = "t{i}"\ncomponent = "{component}"\nhosts = ["t{i}.test"]\n\n')
    env = dict(os.environ, RUST_LOG="warn", RSGI_WASM_CACHE=CACHE)
    t = time.time()
    p = subprocess.Popen(["taskset", "-c", SERVER_CPU, BIN, "serve", cfg, "--listen", f"127.0.0.1:{PORT}",
                          "--cache-dir", CACHE, "--max-loaded", "1000000"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(PORT, timeout=900)
        load_s = time.time() - t
        import http.client
        ok = 0
        for i in range(n):
            c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
            c.request("GET", "/", headers={"Host": f"t{i}.test"})
            r = c.getresponse()
            ok += r.status == 200 and expect in r.read()
            c.close()
        rss = rss_of(p.pid, "Pss")
    finally:
        stop(p)
    return ok, rss, load_s


def tenants(components, probe):
    """How many tenants of hello and of Flask one process holds in 2 GiB:
    the marginal PSS per tenant from 1 and `probe` tenants, then a real
    run with that many tenants, each answering, checked against 2 GiB."""
    budget = 2 * 2**30
    out = []
    for app, target, expect in (("hello", "hello:app", b"Hello, World!"),
                                ("flask-hello", "flaskapp:app", b"Hello, World!")):
        _, base, _ = serve_tenants(components[target], 1, expect)
        _, rss, _ = serve_tenants(components[target], probe, expect)
        per = (rss - base) / (probe - 1)
        n = int((budget - base) / per)
        for _ in range(4):
            ok, rss, load_s = serve_tenants(components[target], n, expect)
            if rss <= budget:
                break
            n = int(n * budget / rss * 0.98)
        print(f"tenants {app}: {n} loaded in {load_s:.1f} s, {ok} answered, PSS {rss / 2**20:.0f} MiB "
              f"({per / 2**20:.2f} MiB each)", flush=True)
        out.append((app, n, ok, rss, load_s, per))
    return out


def scaling(components, duration):
    out = []
    for server in SERVERS:
        for w in (1, 2, 4, 8):
            p = start(server, "hello:app", components, workers=w)
            try:
                wait_200(PORT)
                wrk("/", 32, 2, None)
                out.append((server, w, wrk("/", 32, duration, None)["rps"]))
            finally:
                stop(p)
    return out


def fmt_table(rows):
    lines = ["| app | c | server | req/s | p50 ms | p99 ms | peak RSS MiB | rsgi-wasm ÷ this |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next(x for x in rows if x["app"] == r["app"] and x["conc"] == r["conc"] and x["server"] == "rsgi-wasm")
        ratio = base["rps"] / r["rps"] if r["rps"] else float("nan")
        note = f" ({r['errors']} non-2xx)" if r["errors"] else ""
        lines.append(f"| {r['app']} | {r['conc']} | {r['server']} | {r['rps']:,.0f}{note} | {r['p50']:.2f} | "
                     f"{r['p99']:.2f} | {r['rss'] / 2**20:.0f} | {ratio:.2f}× |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="3 s runs at c=32 only")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--tenants", type=int, default=100, help="tenants in the probe run of the density figure")
    args = ap.parse_args()
    duration = 3 if args.quick else args.duration
    concs = [32] if args.quick else [1, 32, 256]
    components = setup()
    started = datetime.datetime.now(datetime.timezone.utc)

    rows = run_matrix(components, concs, duration, 2)
    cold = cold_start(components)
    fresh = fresh_instance(components, duration)
    dens = density(components)
    ten = tenants(components, args.tenants)
    scale = scaling(components, duration)

    cpu = "unknown"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    report = [
        f"Run {started:%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores ({cpu}), "
        f"{platform.system()} {platform.release()}; command: `make bench` "
        f"(`python3 bench/bench.py{' --quick' if args.quick else ''}`), {duration} s per run.",
        "Each server: 1 worker (gunicorn gthread: 8 threads), pinned to core 0; wrk -t1 pinned to core 1; "
        "keep-alive on; rsgi-wasm with RUST_LOG=warn (no access log, like the others' defaults).",
        "",
        "### Throughput and latency",
        "",
        fmt_table(rows),
        "",
        "### Start-up (process start to first 200)",
        "",
        "| app | how | ms |",
        "|---|---|---|",
        *[f"| {a} | {how} | {ms:.0f} |" for a, how, ms in cold],
        "",
        "### Fresh instance (`--isolation request`)",
        "",
        "| app | pooled p50 ms | request p50 ms | fresh-instance cost ms | req/s in request mode, c=1 | "
        "req/s in request mode, c=32 (one core) |",
        "|---|---|---|---|---|---|",
        *[f"| {a} | {p:.3f} | {r:.3f} | {r - p:.3f} | {rps:,.0f} | {rps32:,.0f} |" for a, p, r, rps, rps32 in fresh],
        "",
        "### Density",
        "",
        "| app | memory per extra warm instance (PSS, 1 → 9 workers, each having served requests) |",
        "|---|---|",
        *[f"| {a} | {b / 2**20:.1f} MiB |" for a, b in dens],
        "",
        "Tenants in 2 GiB (one `serve` process, one component per app shared by all its tenants, one warm "
        "instance each, every tenant asked once and checked): the per-tenant PSS from a run with 1 and one with "
        f"{args.tenants} tenants, then a run with as many tenants as that allows in 2 GiB.",
        "",
        "| app | tenants loaded | answered | PSS MiB | per tenant MiB | load time s |",
        "|---|---|---|---|---|---|",
        *[f"| {a} | {n} | {ok} | {rss / 2**20:.0f} | {per / 2**20:.2f} | {ls:.1f} |" for a, n, ok, rss, ls, per in ten],
        "",
        "### Scaling (hello, c=32, workers 1/2/4/8 on one core)",
        "",
        "| server | 1 | 2 | 4 | 8 |",
        "|---|---|---|---|---|",
        *[f"| {s} | " + " | ".join(f"{r:,.0f}" for srv, w, r in scale if srv == s) + " |" for s in SERVERS],
    ]
    text = "\n".join(report)
    print("\n" + text)
    record("BENCH", "Side-by-side (`make bench`)", text)


def record(marker, heading, text):
    """Put `text` between the MARKER comments of docs/benchmarks.md (a new
    section with `heading` at the end if they are not there yet)."""
    path = os.path.join(ROOT, "docs", "benchmarks.md")
    doc = open(path).read()
    begin, end = f"<!-- {marker}:BEGIN -->", f"<!-- {marker}:END -->"
    if begin in doc:
        doc = doc[: doc.index(begin) + len(begin)] + "\n" + text + "\n" + doc[doc.index(end):]
    else:
        doc += f"\n## {heading}\n\n{begin}\n{text}\n{end}\n"
    open(path, "w").write(doc)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
