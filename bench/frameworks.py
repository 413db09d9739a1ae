"""Per-framework latency: every example in examples/ under rsgi-wasm and
under gunicorn (sync, one worker), same machine, server pinned to core 0
and this client to core 1.

For each: the first request after the server says it is ready (what a
cold worker costs a user), then the p50/p99 of 300 sequential requests on
one keep-alive connection (steady state). rsgi-wasm is also measured
without build-time warm-up, which is what the lazy-import decision in
docs/architecture.md rests on. Writes its table into docs/benchmarks.md
between the FRAMEWORKS markers. Run with `make bench-frameworks`.
"""

import datetime
import http.client
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "target", "bench")
PYDEPS = os.path.join(WORK, "fw-py")
BIN = os.path.join(ROOT, "target", "release", "rsgi-wasm")
CACHE = os.path.join(WORK, "cache")
PORT = 18300
N = 300

# name: (target, -p dir, requirements, warm-up paths, measured path)
EXAMPLES = {
    "plain": ("app:application", "examples/plain", None, ["/"], "/"),
    "bottle": ("app:app", "examples/bottle", "examples/bottle/requirements.txt", ["/"], "/"),
    "flask": ("app:app", "examples/flask", "examples/flask/requirements.txt", ["/"], "/"),
    "django": ("mysite.wsgi:application", "examples/django", "examples/django/requirements.txt",
               ["/health/", "/admin/login/"], "/"),
    "django-admin": ("mysite.wsgi:application", "examples/django", "examples/django/requirements.txt",
                     ["/health/", "/admin/login/"], "/admin/login/"),
}


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def setup():
    if not os.path.isdir(os.path.join(PYDEPS, "gunicorn")):
        print("installing gunicorn and the examples' requirements into target/bench/fw-py", flush=True)
        reqs = sorted({e[2] for e in EXAMPLES.values() if e[2]})
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
               "--root-user-action=ignore", "--target", PYDEPS, "gunicorn"]
        for r in reqs:
            cmd += ["-r", os.path.join(ROOT, r)]
        sh(cmd)
    if not os.path.exists(BIN):
        sh(["cargo", "build", "--release"], cwd=ROOT)


def env_with(**extra):
    return dict(os.environ, RSGI_WASM_CACHE=CACHE, **extra)


def build(name, warmup):
    target, pdir, req, paths, _ = EXAMPLES[name]
    out = os.path.join(WORK, f"fw-{name}-{'warm' if warmup else 'cold'}.wasm")
    cmd = [BIN, "build", target, "-p", pdir, "-o", out]
    if req:
        cmd += ["-r", req]
    if warmup:
        for p in paths:
            cmd += ["--warmup", p]
    else:
        cmd.append("--no-warmup")
    sh(cmd, cwd=ROOT, env=env_with(), stderr=subprocess.DEVNULL)
    return out


def wait_ready(port, proc, timeout=120):
    t = time.time()
    while time.time() - t < timeout:
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.connect()
            c.close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("server did not start")


def measure(port, path):
    """First request on a fresh connection, then N on one keep-alive one."""
    def one(conn):
        t = time.perf_counter()
        conn.request("GET", path, headers={"Host": "127.0.0.1"})
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"{path}: {r.status}")
        return (time.perf_counter() - t) * 1000

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    first = one(conn)
    times = sorted(one(conn) for _ in range(N))
    conn.close()
    return first, times[len(times) // 2], times[int(len(times) * 0.99) - 1]


def stop(p):
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def django_data(tmp, component=None):
    """A migrated database for the Django example, natively or in the sandbox."""
    data = os.path.join(tmp, "data")
    os.makedirs(data, exist_ok=True)
    if component:
        sh([BIN, "exec", component, "--dir", f"{data}::/data", "--", "manage.py", "migrate", "-v0"],
           cwd=ROOT, env=env_with())
        return data
    with open(os.path.join(tmp, "bench_settings.py"), "w") as f:
        f.write("from mysite.settings import *  # noqa\n"
                f"DATABASES['default']['NAME'] = {os.path.join(data, 'db.sqlite3')!r}\n")
    env = dict(os.environ, PYTHONPATH=f"{PYDEPS}:{tmp}", DJANGO_SETTINGS_MODULE="bench_settings")
    sh([sys.executable, "manage.py", "migrate", "-v0"], cwd=os.path.join(ROOT, "examples/django"), env=env)
    return data


def run_rsgi(name, warmup):
    component = build(name, warmup)
    with tempfile.TemporaryDirectory() as tmp:
        args = ["taskset", "-c", "0", BIN, "run", component, "--listen", f"127.0.0.1:{PORT}"]
        if name.startswith("django"):
            args += ["--dir", f"{django_data(tmp, component)}::/data"]
        # One start first, so the compiled artifact is cached and not timed.
        p = subprocess.Popen(args, env=env_with(), stderr=subprocess.DEVNULL)
        wait_ready(PORT, p)
        stop(p)
        p = subprocess.Popen(args, env=env_with(), stderr=subprocess.DEVNULL)
        wait_ready(PORT, p)
        try:
            return measure(PORT, EXAMPLES[name][4])
        finally:
            stop(p)


def run_gunicorn(name):
    target, pdir, _, _, path = EXAMPLES[name]
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=PYDEPS)
        if name.startswith("django"):
            django_data(tmp)
            env.update(PYTHONPATH=f"{PYDEPS}:{tmp}", DJANGO_SETTINGS_MODULE="bench_settings")
        p = subprocess.Popen(
            ["taskset", "-c", "0", sys.executable, "-m", "gunicorn", "-w", "1", "--preload", "-b", f"127.0.0.1:{PORT}",
             "--chdir", os.path.join(ROOT, pdir), target],
            env=env, stderr=subprocess.DEVNULL)
        wait_ready(PORT, p)
        try:
            return measure(PORT, path)
        finally:
            stop(p)


def main():
    setup()
    os.sched_setaffinity(0, {1})
    rows = []
    for name in EXAMPLES:
        warm = run_rsgi(name, True)
        cold = run_rsgi(name, False)
        guni = run_gunicorn(name)
        row = (name, EXAMPLES[name][4], warm, cold, guni)
        rows.append(row)
        print(fmt_row(row), flush=True)
    table = fmt_table(rows)
    print(table)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    block = (f"Recorded {stamp} on {os.cpu_count()} cores ({cpu}) with `make bench-frameworks`; "
             f"first request after the server is ready, then p50/p99 of {N} sequential keep-alive "
             "requests (ms). rsgi-wasm: pooled, 1 worker, cached artifact; gunicorn: sync, 1 worker, "
             "`--preload` (so it, too, listens only once the app is imported).\n\n"
             + table)
    path = os.path.join(ROOT, "docs", "benchmarks.md")
    text = open(path).read()
    begin, end = "<!-- FRAMEWORKS:BEGIN -->", "<!-- FRAMEWORKS:END -->"
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + begin + "\n" + block + "\n" + end + rest.split(end, 1)[1]
    else:
        text += f"\n## Frameworks: first request and steady state\n\n{begin}\n{block}\n{end}\n"
    with open(path, "w") as f:
        f.write(text)


def fmt_row(row):
    name, path, warm, cold, guni = row
    f = lambda t: f"{t[0]:.1f} | {t[1]:.2f} / {t[2]:.2f}"
    return f"| {name} `{path}` | {f(warm)} | {cold[0]:.1f} | {f(guni)} |"


def fmt_table(rows):
    head = ("| app (path) | rsgi-wasm first | rsgi-wasm p50 / p99 | rsgi-wasm first, no warm-up | "
            "gunicorn first | gunicorn p50 / p99 |\n|---|---|---|---|---|---|\n")
    return head + "\n".join(fmt_row(r) for r in rows) + "\n"


if __name__ == "__main__":
    if not shutil.which("taskset"):
        sys.exit("taskset (util-linux) is required")
    main()
