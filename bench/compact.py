"""`--compact-cache` against the default cache (issue 15's "compiled cache
per additional app"), side by side in one run: what a new app adds to the
cache's disk, its first start, what a cold load costs (expanding its delta),
and its memory once loaded. Writes its table into docs/benchmarks.md
between the COMPACT markers. Run by `make bench` and `make bench-compact`,
or alone: `python3 bench/compact.py [--cold N]`.

The apps: the bench's hello and Flask apps, then a "real" variant of each,
rebuilt from a copy with another response text (bench/distinct.py), so the
variant's heap snapshot is shifted against the first app's, as another
app's would be. The first app of a kind is stored whole; the variant is
what a delta is measured on. Cold loads: one `serve` tenant of the variant
with `idle_timeout = "1s"`, asked every 2.5 s, so each request loads it
from the cache again.
"""

import argparse
import datetime
import os
import platform
import statistics
import time

import bench as b
import distinct as d

MODES = {"default": (), "compact": ("--compact-cache",)}


def first_start(component, extra):
    """ms from process start to the first 200 of `rsgi-wasm run`."""
    t = time.time()
    p = d.run(component, extra)
    try:
        b.wait_200(b.PORT, timeout=600)
        return (time.time() - t) * 1000
    finally:
        b.stop(p)


def cold_loads(component, n, extra):
    """ms of `n` requests to a tenant unloaded before each, and the
    process's PSS after the last."""
    cfg = os.path.join(d.WORK, "tenants-cold.toml")
    with open(cfg, "w") as f:
        f.write(f'[[app]]\nname = "t0"\ncomponent = "{component}"\nhosts = ["t0.test"]\n'
                'idle_timeout = "1s"\n')
    p, _ = d.serve(cfg, *extra)
    try:
        times = []
        for _ in range(n):
            time.sleep(2.5)
            status, _, ms = d.ask(0)
            assert status == 200, status
            times.append(ms)
        pss = b.rss_of(p.pid, "Pss")
    finally:
        b.stop(p)
    return times, pss


def measure(base, variant, extra, cold):
    """Start `base` on an empty cache, then `variant`: its first start and
    what it added to the cache; then its cold loads."""
    d.fresh_cache()
    first_start(base, extra)
    before = d.compiled_bytes()
    start = first_start(variant, extra)
    added = d.compiled_bytes() - before
    times, pss = cold_loads(variant, cold, extra)
    return start, added, times, pss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cold", type=int, default=10, help="cold loads measured per app and mode")
    args = ap.parse_args()
    os.makedirs(d.WORK, exist_ok=True)
    b.setup_tools()
    started = datetime.datetime.now(datetime.timezone.utc)
    kinds = {"hello": "hello:app", "Flask": "flaskapp:app"}
    out = {}
    for kind, target in kinds.items():
        base, variant = b.build(target), d.real_variant(target, 1)
        for mode, extra in MODES.items():
            out[kind, mode] = measure(base, variant, extra, args.cold)
            start, added, times, pss = out[kind, mode]
            print(f"{kind} {mode}: first start {start:.0f} ms, +{added / 1e6:.1f} MB, cold "
                  f"{statistics.median(times):.0f}/{max(times):.0f} ms, PSS {pss / 2**20:.0f} MiB",
                  flush=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               "unknown")
    rows = [
        f"Run {started:%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores ({cpu}), "
        f"{platform.system()} {platform.release()}; command: `make bench-compact` "
        f"(`python3 bench/compact.py --cold {args.cold}`); servers pinned to core 0. Each row: a "
        "real variant of the app started after the app itself, on an empty cache.",
        "",
        "| figure | default cache | `--compact-cache` | target |",
        "|---|---|---|---|",
    ]

    def row(label, f, target=""):
        rows.append(f"| {label} | " + " | ".join(
            " / ".join(f(out[k, m]) for k in kinds) for m in MODES) + f" | {target} |")

    row("compiled cache per additional app, hello / Flask", lambda r: f"{r[1] / 1e6:.1f} MB", "≤ 5 MB")
    row("first start of the new app (compiling it), hello / Flask", lambda r: f"{r[0]:,.0f} ms", "≤ 1 s")
    row(f"first request to a cold tenant ({args.cold} loads: median, max), hello / Flask",
        lambda r: f"{statistics.median(r[2]):.0f}, {max(r[2]):.0f} ms", "≤ 50 ms")
    row("`serve` PSS after the last cold load (one tenant), hello / Flask",
        lambda r: f"{r[3] / 2**20:.1f} MiB")
    text = "\n".join(rows)
    print("\n" + text)
    b.record("COMPACT", "The compact cache (`make bench-compact`, bench/compact.py)", text)


if __name__ == "__main__":
    main()
