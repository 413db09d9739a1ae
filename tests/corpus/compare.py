"""Send the raw request corpus to gunicorn and waitress serving the same
router app natively, and print each server's status next to rsgi-wasm's
expected one. Used to write docs/conformance.md; not part of `make test`.

    python3 -m pip install --target target/compare gunicorn waitress
    PYTHONPATH=target/compare python3 tests/corpus/compare.py
"""

import os
import re
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROUTER = os.path.join(HERE, "..", "apps", "router")


def unescape(raw):
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        n = raw[i + 1]
        if n == "x":
            out.append(int(raw[i + 2 : i + 4], 16))
            i += 4
            continue
        out += {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\"}[n]
        i += 2
    return bytes(out)


def corpus():
    cases = []
    lines = open(os.path.join(HERE, "requests.txt")).read().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("### ") and not lines[i].startswith("### expect"):
            name = lines[i][4:]
            expect = int(lines[i + 1].split()[-1])
            raw = ""
            i += 2
            while i < len(lines) and lines[i] and not lines[i].startswith("### "):
                raw += lines[i][:-1] if lines[i].endswith("\\") else lines[i]
                i += 1
            raw = re.sub(r"\{LONG:(\d+)\}", lambda m: "a" * int(m.group(1)), raw)
            cases.append((name, expect, unescape(raw)))
        else:
            i += 1
    return cases


def status(port, request):
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    try:
        s.sendall(request)
    except OSError:
        pass
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    for line in data.split(b"\r\n"):
        m = re.match(rb"HTTP/1\.\d (\d{3})", line)
        if m and int(m.group(1)) >= 200:
            return int(m.group(1))
    return "close" if not data else "?"


def serve(cmd, port):
    p = subprocess.Popen(cmd, cwd=ROUTER, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return p
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{cmd[0]} did not start")


def main():
    py = sys.executable
    servers = {
        "gunicorn": serve([py, "-m", "gunicorn", "-b", "127.0.0.1:18101", "app:application"], 18101),
        "waitress": serve([py, "-m", "waitress", "--listen=127.0.0.1:18102", "app:application"], 18102),
    }
    ports = {"gunicorn": 18101, "waitress": 18102}
    try:
        print("| case | rsgi-wasm | gunicorn | waitress |")
        print("|---|---|---|---|")
        for name, expect, req in corpus():
            got = {k: status(ports[k], req) for k in servers}
            mark = "" if all(v == expect for v in got.values()) else " *"
            print(f"| {name}{mark} | {expect} | {got['gunicorn']} | {got['waitress']} |")
    finally:
        for p in servers.values():
            p.terminate()


if __name__ == "__main__":
    main()
