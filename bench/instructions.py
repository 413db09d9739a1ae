"""Instructions per request under callgrind: a figure that, unlike req/s,
does not drift with the load on a shared machine, so two builds can be
compared one after the other. Prints the total per request, its split
between the guest (CPython and the app, as compiled wasm), the host
(rsgi-wasm: hyper, tokio, wasmtime) and libc, and the top functions, with
wasm functions named from wasmtime's perf map. The kernel is not counted
(callgrind sees user space only); `perf record` shows that part.
Under valgrind the instance slots of `--isolation request` cannot be
reserved (it caps the address space), so that mode is profiled as mapped
afresh; `perf record` on the server shows the slots' path.

Run with `make profile` (setup included), or
`python3 bench/instructions.py [--app hello|flask-hello|...] [--isolation request]
[--world wasi-http]`.
"""

import argparse
import bisect
import collections
import glob
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the apps, the builds, wrk)

PORT = 18250


def symbols(map_file):
    """wasmtime's /tmp/perf-PID.map: start, size, name per JIT function."""
    syms = []
    try:
        with open(map_file) as f:
            for line in f:
                start, size, name = line.split(" ", 2)
                syms.append((int(start, 16), int(size, 16), name.strip()))
    except FileNotFoundError:
        pass
    syms.sort()
    return syms


def summarize(out_file, map_file, requests, top):
    syms = symbols(map_file)
    starts = [s[0] for s in syms]

    def jit_name(addr):
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and syms[i][0] <= addr < syms[i][0] + syms[i][1]:
            return syms[i][2]
        return None

    text = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", out_file],
                          capture_output=True, text=True, check=True).stdout
    total = 0
    parts = collections.Counter()
    rows = []
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(.*)", line)
        if not m:
            continue
        ir, what = int(m.group(1).replace(",", "")), m.group(2)
        if "PROGRAM TOTALS" in what:
            total = ir
            continue
        jit = re.match(r"\?\?\?:0x([0-9a-f]+)", what)
        if jit:
            name = jit_name(int(jit.group(1), 16))
            what = name or what
            part = "guest (wasm)" if name and name.startswith("wasm[") else "wasmtime stubs"
        elif "libc.so" in what or "libm.so" in what:
            part = "libc"
        else:
            part = "host (rsgi-wasm)"
        parts[part] += ir
        rows.append((ir, what))
    print(f"\n{total / requests:,.0f} instructions per request ({requests} requests)")
    for part, ir in parts.most_common():
        print(f"  {part:18} {ir / requests:>10,.0f}  {100 * ir / total:5.1f}%")
    print(f"\ntop {top} functions (self, per request):")
    for ir, what in sorted(rows, reverse=True)[:top]:
        print(f"{ir / requests:>10,.0f} {100 * ir / total:5.1f}%  {what[:110]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--app", default="hello", choices=sorted(bench.APPS))
    ap.add_argument("--isolation", default="pooled", choices=["pooled", "request"])
    ap.add_argument("--world", default="wsgi", choices=["wsgi", "wasi-http"],
                    help="the export the component is built with (rsgi-wasm build --world)")
    ap.add_argument("--conc", type=int, default=8)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        print("installing valgrind (apt)", flush=True)
        bench.sh(["apt-get", "update", "-qq"])
        bench.sh(["apt-get", "install", "-y", "-qq", "valgrind"])
    components = bench.setup()
    target, path, script = bench.APPS[args.app]
    if args.world != "wsgi":
        components[target] = bench.build(target, args.world)
        bench.warm(target, components)
    out = os.path.join(bench.WORK, f"callgrind.{args.app}.out")
    for old in glob.glob(out + "*"):
        os.remove(old)
    env = dict(os.environ, RUST_LOG="warn", RSGI_WASM_CACHE=bench.CACHE, RSGI_WASM_PERFMAP="1")
    p = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         "--smc-check=all-non-file", bench.BIN, "run", components[target],
         "--listen", f"127.0.0.1:{PORT}", "--cache-dir", bench.CACHE, "--isolation", args.isolation],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    saved_port, bench.PORT = bench.PORT, PORT
    try:
        bench.wait_200(PORT, timeout=600)
        bench.wrk(path, args.conc, 3, script)  # warm-up, not counted
        subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], check=True, capture_output=True)
        requests = bench.wrk(path, args.conc, args.duration, script)["count"]
        subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True, capture_output=True)
        map_file = f"/tmp/perf-{p.pid}.map"
        dumps = sorted(glob.glob(out + ".*"), key=os.path.getmtime)
        summarize(dumps[-1], map_file, requests, args.top)
    finally:
        bench.PORT = saved_port
        bench.stop(p)


if __name__ == "__main__":
    main()
