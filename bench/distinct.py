"""Many *different* apps in one process (issue 15): what each additional
distinct app costs to compile, store, map and start, and what thousands of
listed tenants cost at rest. Writes its table into docs/benchmarks.md
between the DISTINCT markers. Run by `make bench` and `make bench-distinct`, or alone:
`python3 bench/distinct.py [--apps N] [--flask-apps N] [--listed N]`.

The apps are distinct components, not one component shared by tenants:
- "real" variants are built by `rsgi-wasm build` from copies of the bench
  app with another response text (a build takes 10-20 s here);
- the density runs need hundreds (1,000 hello and 60 Flask by default,
  the issue's figure measured rather than extrapolated: about 45 GB of
  disk for the variants and their artifacts, so fewer are made, and the
  report says how many, where the disk has less room), so those are made
  from the built hello (or Flask) component by changing its response
  string inside the pre-initialised heap snapshot ("Hello, World!" -> "Hello, 000042"): every
  variant has its own snapshot module (its own hash, compiled, cached and
  mapped for it alone), exactly what a rebuild with another text gives,
  and each answers with its own text, which the run checks.
"""

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
import http.client
import statistics

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as b  # noqa: E402

WORK = os.path.join(b.WORK, "distinct")
CACHE = os.path.join(WORK, "cache")
TEXT = b"Hello, World!"


def du(path, skip=()):
    total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in skip]
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def fresh_cache():
    shutil.rmtree(CACHE, ignore_errors=True)
    os.makedirs(CACHE, mode=0o700)


def compiled_bytes():
    """The compiled artifacts in the cache (not the unpacked app files)."""
    return du(CACHE, skip={os.path.join(CACHE, "files")})


def real_variant(target, n):
    """Build a copy of the bench app whose response says another text."""
    src = b.APPS_DIR
    dst = os.path.join(WORK, f"src-{target.split(':')[0]}-{n}")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    module = target.split(":")[0]
    path = os.path.join(dst, module + ".py")
    text = open(path).read().replace("Hello, World!", f"Hello, Real {n}!")
    open(path, "w").write(text)
    out = os.path.join(WORK, f"{module}-real{n}.wasm")
    cmd = [b.BIN, "build", target, "-p", dst, "-o", out]
    if target.startswith("flask"):
        cmd += ["-r", os.path.join(b.APPS_DIR, "requirements.txt")]
    b.sh(cmd, env=dict(os.environ, RSGI_WASM_CACHE=b.CACHE), stderr=subprocess.DEVNULL)
    return out


def patched_variants(component, n, tag):
    """n distinct components: the response text changed in the snapshot."""
    data = open(component, "rb").read()
    # Every occurrence is in the heap snapshot: the response string, and in
    # Flask's case docstrings quoting the same words; the density run checks
    # that every variant answers with its own text.
    if data.find(TEXT) < 0:
        raise SystemExit(f"{component}: the response text is not in the snapshot")
    out = []
    d = os.path.join(WORK, f"variants-{tag}")
    os.makedirs(d, exist_ok=True)
    for i in range(n):
        path = os.path.join(d, f"{i}.wasm")
        if not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(component):
            new = b"Hello, %06d" % i
            with open(path, "wb") as f:
                f.write(data.replace(TEXT, new))
        out.append(path)
    return out


def apps_that_fit(hello, apps, flask_apps):
    """How many hello variants the disk holds, with their artifacts (about
    20 MB each) and 5 GB to spare: `apps` or fewer, said if fewer."""
    d = os.path.join(WORK, "variants-hello")
    made = {f"{i}.wasm" for i in range(apps)} & set(os.listdir(d) if os.path.isdir(d) else ())
    each = os.path.getsize(hello) + 20e6
    room = shutil.disk_usage(WORK).free - 5e9 - flask_apps * 30e6 + len(made) * os.path.getsize(hello)
    fit = max(1, min(apps, int(room // each)))
    if fit < apps:
        print(f"only {fit} of {apps} hello variants fit on this disk ({each / 1e6:.0f} MB each "
              "with its artifacts); measuring those", flush=True)
    return fit


def run(component, extra=()):
    """`rsgi-wasm run component` on the bench port, with the bench cache."""
    env = dict(os.environ, RUST_LOG="warn")
    return subprocess.Popen(["taskset", "-c", b.SERVER_CPU, b.BIN, "run", component, "--listen",
                             f"127.0.0.1:{b.PORT}", "--cache-dir", CACHE, *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def first_200(component):
    """ms from process start to the first 200 of `rsgi-wasm run`."""
    t = time.time()
    p = run(component)
    try:
        b.wait_200(b.PORT, timeout=600)
        return (time.time() - t) * 1000
    finally:
        b.stop(p)


def new_app_start(base, real):
    """Start `base` on an empty cache, then the never-seen `real` variant."""
    fresh_cache()
    first = first_200(base)
    before = compiled_bytes()
    files_before = du(os.path.join(CACHE, "files"))
    second = first_200(real)
    return first, second, compiled_bytes() - before, du(os.path.join(CACHE, "files")) - files_before


def write_tenants(path, components, listed=None, idle="0"):
    listed = listed or len(components)
    with open(path, "w") as f:
        for i in range(listed):
            f.write(f'[[app]]\nname = "t{i}"\ncomponent = "{components[i % len(components)]}"\n'
                    f'hosts = ["t{i}.test"]\nidle_timeout = "{idle}"\n\n')


def serve(cfg, *extra):
    env = dict(os.environ, RUST_LOG="warn")
    t = time.time()
    p = subprocess.Popen(["taskset", "-c", b.SERVER_CPU, b.BIN, "serve", cfg, "--listen",
                          f"127.0.0.1:{b.PORT}", "--cache-dir", CACHE, "--max-loaded", "1000000", *extra],
                         env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    b.wait_port(b.PORT, timeout=600)
    return p, time.time() - t


def ask(i):
    c = http.client.HTTPConnection("127.0.0.1", b.PORT, timeout=600)
    t = time.time()
    c.request("GET", "/", headers={"Host": f"t{i}.test"})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body, (time.time() - t) * 1000


def density(components, label):
    """Every distinct app in one `serve`, each asked once and checked:
    PSS just after compiling them all, then on a restart from the cache."""
    cfg = os.path.join(WORK, f"tenants-{label}.toml")
    write_tenants(cfg, components)
    out = {}
    for phase in ("compiled", "cached"):
        p, _ = serve(cfg)
        try:
            t = time.time()
            ok = 0
            for i in range(len(components)):
                status, body, _ = ask(i)
                ok += status == 200 and (b"%06d" % i) in body
            secs = time.time() - t
            out[phase] = (ok, b.rss_of(p.pid, "Pss"), secs)
        finally:
            b.stop(p)
        print(f"{label} {phase}: {ok}/{len(components)} answered in {secs:.0f} s, "
              f"PSS {out[phase][1] / 2**20:.0f} MiB", flush=True)
    return out


def listed(components, n):
    """`serve` with n listed tenants over the distinct components: start
    time, RSS at rest, the first requests to cold tenants, and the size of
    a metrics scrape after them."""
    cfg = os.path.join(WORK, "tenants-listed.toml")
    write_tenants(cfg, components, listed=n, idle="5m")
    metrics = b.PORT + 1
    p, start_s = serve(cfg, "--metrics", f"127.0.0.1:{metrics}")
    try:
        time.sleep(1)
        idle_rss = b.rss_of(p.pid, "VmRSS")
        idle_pss = b.rss_of(p.pid, "Pss")
        cold = []
        for i in range(0, n, max(1, n // 20)):
            status, _, ms = ask(i)
            assert status == 200, status
            cold.append(ms)
        c = http.client.HTTPConnection("127.0.0.1", metrics, timeout=600)
        c.request("GET", "/metrics")
        scrape = len(c.getresponse().read())
        c.close()
    finally:
        b.stop(p)
    return start_s, idle_rss, idle_pss, cold, scrape


def paced_p50(n=200, gap=0.02):
    """p50 ms of `n` requests on one connection, one every `gap` seconds:
    a server at low load, where the next fresh instance is made between
    requests (wrk measures back to back, where it cannot be)."""
    c = http.client.HTTPConnection("127.0.0.1", b.PORT, timeout=60)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        c.request("GET", "/")
        r = c.getresponse()
        r.read()
        times.append((time.perf_counter() - t) * 1000)
        assert r.status == 200, r.status
        time.sleep(gap)
    c.close()
    return statistics.median(times)


def fresh_instance(component, duration):
    """`--isolation request`: p50 back to back and paced at c=1, req/s at c=32;
    and a pooled instance paced, for what the client and kernel add."""
    p = run(component, ("--isolation", "request"))
    try:
        b.wait_200(b.PORT)
        b.wrk("/", 1, 2, None)
        one = b.wrk("/", 1, duration, None)
        many = b.wrk("/", 32, duration, None)
        paced = paced_p50()
    finally:
        b.stop(p)
    p = run(component)
    try:
        b.wait_200(b.PORT)
        pooled = paced_p50()
    finally:
        b.stop(p)
    return one["p50"], many["rps"], paced, pooled


def private_snapshot_pages(component, duration):
    """kB of the heap snapshot one pooled instance has written (its private
    copies), after `duration` seconds of requests at c=1."""
    p = run(component)
    try:
        b.wait_200(b.PORT)
        b.wrk("/", 1, duration, None)
        private, head = 0, ""
        for line in open(f"/proc/{p.pid}/smaps"):
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                head = line
            elif fields[0] == "Anonymous:" and " rw-p " in head and "/modules/" in head:
                private += int(fields[1])
        return private
    finally:
        b.stop(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--apps", type=int, default=1000, help="distinct hello apps in the density run")
    ap.add_argument("--flask-apps", type=int, default=60, help="distinct Flask apps in the density run")
    ap.add_argument("--listed", type=int, default=10000, help="tenants listed in the start/idle run")
    ap.add_argument("--duration", type=int, default=5)
    args = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)
    b.setup_tools()
    started = datetime.datetime.now(datetime.timezone.utc)
    hello = b.build("hello:app")
    flask = b.build("flaskapp:app")
    real = {t: real_variant(t, 1) for t in ("hello:app", "flaskapp:app")}

    starts = {
        "hello": new_app_start(hello, real["hello:app"]),
        "flask-hello": new_app_start(flask, real["flaskapp:app"]),
    }
    for app, (first, second, comp, files) in starts.items():
        print(f"{app}: first app {first:.0f} ms, a new one after it {second:.0f} ms, "
              f"+{comp / 1e6:.1f} MB compiled, +{files / 1e6:.1f} MB files", flush=True)

    fresh = {
        "hello": fresh_instance(hello, args.duration),
        "flask-hello": fresh_instance(flask, args.duration),
    }

    private = {
        "hello": private_snapshot_pages(hello, args.duration),
        "flask-hello": private_snapshot_pages(flask, args.duration),
    }

    fresh_cache()
    args.apps = apps_that_fit(hello, args.apps, args.flask_apps)
    hello_vs = patched_variants(hello, max(args.apps, 1), "hello")
    flask_vs = patched_variants(flask, max(args.flask_apps, 1), "flask")
    dens = {"hello": density(hello_vs, "hello"), "flask-hello": density(flask_vs, "flask")}
    per_app_disk = compiled_bytes() / (len(hello_vs) + len(flask_vs))
    start_s, idle_rss, idle_pss, cold, scrape = listed(hello_vs, args.listed)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               "unknown")
    mib = 2**20
    h, f = dens["hello"], dens["flask-hello"]
    report = [
        f"Run {started:%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores ({cpu}), "
        f"{platform.system()} {platform.release()}; command: `make bench` "
        f"(`python3 bench/distinct.py --apps {args.apps} --flask-apps {args.flask_apps} "
        f"--listed {args.listed}`); servers pinned to core 0. Every app is a distinct component "
        "(see the script's docstring for how the variants are made); \"before\" is the issue's "
        "measurement of the build before core modules were shared and tenants loaded lazily.",
        "",
        "| figure | before | now | target |",
        "|---|---|---|---|",
        f"| distinct hello apps answering in one `serve` | ~90 in 2 GiB (estimated) | "
        f"{h['cached'][0]} of {len(hello_vs)} in {h['cached'][1] / mib:,.0f} MiB PSS "
        f"({h['cached'][1] / len(hello_vs) / mib:.2f} MiB each; "
        f"{h['compiled'][1] / mib:,.0f} MiB just after compiling them) | ≥ 1,000 in 2 GiB |",
        f"| distinct Flask apps answering in one `serve` | 96 MiB each just compiled, 22 MiB cached | "
        f"{f['cached'][0]} of {len(flask_vs)} in {f['cached'][1] / mib:,.0f} MiB PSS "
        f"({f['cached'][1] / len(flask_vs) / mib:.2f} MiB each) | |",
        f"| first start of a never-seen hello app (another started before) | 7-19 s | "
        f"{starts['hello'][1]:,.0f} ms (the very first app on an empty cache: {starts['hello'][0]:,.0f} ms) "
        "| ≤ 1 s |",
        f"| the same, Flask | 7-19 s | {starts['flask-hello'][1]:,.0f} ms "
        f"(first: {starts['flask-hello'][0]:,.0f} ms) | ≤ 1 s |",
        f"| compiled cache per additional app (real variant: hello / Flask) | 47-70 MB | "
        f"{starts['hello'][2] / 1e6:.1f} MB / {starts['flask-hello'][2] / 1e6:.1f} MB "
        f"(unpacked files: +{starts['hello'][3] / 1e6:.1f} MB / +{starts['flask-hello'][3] / 1e6:.1f} MB) | ≤ 5 MB |",
        f"| compiled cache per app over the {len(hello_vs) + len(flask_vs)} density variants | | "
        f"{per_app_disk / 1e6:.1f} MB | |",
        f"| fresh instance, hello / Flask (`run --isolation request`, from instance slots; `serve` maps afresh; p50 at c=1) | ~2 ms / ~5.5 ms | "
        f"{fresh['hello'][0]:.2f} ms / {fresh['flask-hello'][0]:.2f} ms | ≤ 0.3 ms / ≤ 1 ms |",
        f"| the same, one request every 20 ms (the next instance made between requests), p50 | | "
        f"{fresh['hello'][2]:.2f} ms / {fresh['flask-hello'][2]:.2f} ms (a pooled instance the same way: "
        f"{fresh['hello'][3]:.2f} ms / {fresh['flask-hello'][3]:.2f} ms) | |",
        f"| isolated hello req/s on one core (c=32, `run`) | 495 | {fresh['hello'][1]:,.0f} | ≥ 3,000 |",
        f"| snapshot pages a pooled instance made private, after {args.duration} s of requests, "
        f"hello / Flask | — | {private['hello']:,} kB / {private['flask-hello']:,} kB | |",
        f"| `serve` with {args.listed:,} listed tenants: start, idle RSS (PSS) | all loaded at start | "
        f"{start_s * 1000:,.0f} ms, {idle_rss / mib:.0f} MiB ({idle_pss / mib:.0f} MiB) | ≤ 2 s, ≤ 200 MiB |",
        f"| first request to a cold tenant, artifact cached ({len(cold)} tenants: median, max) | — | "
        f"{statistics.median(cold):.0f} ms, {max(cold):.0f} ms | ≤ 50 ms |",
        f"| `/metrics` scrape with {args.listed:,} listed tenants, {len(cold)} of them asked | 36 MB "
        f"(measured 2026-12-03) | {scrape / 1e3:,.0f} kB | |",
    ]
    text = "\n".join(report)
    print("\n" + text)
    b.record("DISTINCT", "Many distinct apps (`make bench`, bench/distinct.py)", text)


if __name__ == "__main__":
    main()
