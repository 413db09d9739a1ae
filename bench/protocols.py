"""Protocols: hello on one core over HTTP/1.1, HTTP/2 (cleartext by prior
knowledge) and TLS (HTTP/1.1 and HTTP/2 by ALPN), rsgi-wasm next to
Granian; part of `make bench`, alone as `make bench-protocols`.

Installs what it needs (wrk, h2load from nghttp2-client, openssl) and
writes its table into docs/benchmarks.md. Same pinning as bench.py: the
server on core 0, the load generator on core 1, 32 requests in flight.
"""

import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (paths, apps, wrk, start/stop, record)

WORK = os.path.join(bench.WORK, "protocols")
CONC = 32


def tools():
    missing = [p for b, p in (("wrk", "wrk"), ("h2load", "nghttp2-client"), ("openssl", "openssl"))
               if not shutil.which(b)]
    if missing:
        print(f"installing {' '.join(missing)} (apt)", flush=True)
        bench.sh(["apt-get", "update", "-qq"])
        bench.sh(["apt-get", "install", "-y", "-qq", *missing])


def certificate():
    """A self-signed certificate for localhost (PKCS#8 key, which Granian needs)."""
    os.makedirs(WORK, exist_ok=True)
    cert, key = os.path.join(WORK, "cert.pem"), os.path.join(WORK, "key.pem")
    if not os.path.exists(cert):
        bench.sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-nodes", "-days", "3650", "-subj", "/CN=localhost", "-addext",
                  "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert],
                 stderr=subprocess.DEVNULL)
    return cert, key


def h2load(url, duration):
    """req/s of h2load over one stream per connection (like wrk's), CONC connections."""
    cmd = ["taskset", "-c", bench.LOAD_CPU, "h2load", "-c", str(CONC), "-m", "1", "-t", "1",
           "-D", str(duration), url]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    ok = re.search(r"(\d+) succeeded, (\d+) failed", out)
    if not m or not ok or int(ok.group(2)) > 0:
        raise SystemExit(f"h2load {url} failed:\n{out}")
    return float(m.group(1))


def wrk(url, duration):
    cmd = ["taskset", "-c", bench.LOAD_CPU, "wrk", "-t1", f"-c{CONC}", f"-d{duration}s", url]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or "Non-2xx" in out:
        raise SystemExit(f"wrk {url} failed:\n{out}")
    return float(m.group(1))


def granian(target, tls):
    env = dict(os.environ, PYTHONPATH=bench.PYDEPS + ":" + bench.APPS_DIR)
    cmd = ["taskset", "-c", bench.SERVER_CPU, sys.executable, "-m", "granian", "--interface", "wsgi",
           "--host", "127.0.0.1", "--port", str(bench.PORT), "--workers", "1", "--http", "auto"]
    if tls:
        cmd += ["--ssl-certificate", tls[0], "--ssl-keyfile", tls[1], "--ssl-protocol-min", "tls1.2"]
    cmd.append(target)
    return subprocess.Popen(cmd, cwd=bench.APPS_DIR, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def measure(server, start, tls, duration):
    p = start()
    try:
        bench.wait_port(bench.PORT)
        base = f"{'https' if tls else 'http'}://127.0.0.1:{bench.PORT}/"
        if tls:
            # Warm the first TLS handshake path, then measure.
            wrk(base, 1)
            return [(server, "HTTPS, HTTP/1.1", wrk(base, duration)),
                    (server, "HTTPS, HTTP/2 (ALPN)", h2load(base, duration))]
        wrk(base, 1)
        return [(server, "HTTP/1.1", wrk(base, duration)),
                (server, "HTTP/2 cleartext (prior knowledge)", h2load(base, duration))]
    finally:
        bench.stop(p)


def main():
    duration = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    tools()
    components = bench.setup()
    cert, key = certificate()
    target = bench.APPS["hello"][0]
    rows = []
    for tls in (None, (cert, key)):
        extra = ("--certfile", tls[0], "--keyfile", tls[1]) if tls else ()
        rows += measure("rsgi-wasm", lambda: bench.start("rsgi-wasm", target, components, extra=extra),
                        tls, duration)
        rows += measure("granian", lambda: granian(target, tls), tls, duration)
    base = {s: r for s, how, r in rows if how == "HTTP/1.1"}
    lines = [
        f"hello, one worker pinned to core 0, load on core 1, {CONC} requests in flight "
        f"(wrk -t1 -c{CONC} for HTTP/1.1; h2load -c{CONC} -m1 for HTTP/2), {duration} s per run; "
        "TLS: ECDSA P-256 self-signed certificate, TLS 1.3. Command: `make bench-protocols`.",
        "",
        "| server | protocol | req/s | vs its HTTP/1.1 |",
        "|---|---|---|---|",
        *[f"| {s} | {how} | {r:,.0f} | {r / base[s]:.2f}× |" for s, how, r in rows],
    ]
    text = "\n".join(lines)
    print("\n" + text)
    bench.record("PROTOCOLS", "Protocols: HTTP/1.1, HTTP/2, TLS (`make bench-protocols`)", text)


if __name__ == "__main__":
    main()
