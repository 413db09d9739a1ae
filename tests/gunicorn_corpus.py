"""Send gunicorn's request-parser corpus over real sockets to a running
server that serves the probe app (`tests/apps/probe/app.py`), and check what
the app saw against gunicorn's expected parse.

The corpus (`tests/requests/{valid,invalid}` of gunicorn's sdist, MIT
licensed) is not copied into this repository: `--fetch DIR` downloads the
pinned sdist from PyPI with pip into DIR once and prints where the corpus
is. Each case is sent twice: with the client's side kept open, and
half-closed (`shutdown(SHUT_WR)` right after the request, as `nc -N`, some
health checkers and HTTP/1.0 tools do).

    python3 tests/gunicorn_corpus.py --fetch target/gunicorn-corpus
    python3 tests/gunicorn_corpus.py --corpus DIR --addr 127.0.0.1:8000 \
        [--server rsgi-wasm|gunicorn] [--mode open|half-closed|both]

A valid case passes when every request it holds is answered by the app
with what gunicorn's parser expects (method, target, version, header
variables, body); an invalid one when it is refused (a 4xx answer, or the
connection closed without an answer) and the app never ran. Cases that
configure a gunicorn-only setting are skipped, each with its reason.
Where rsgi-wasm differs from gunicorn on purpose, `DIFFERENCES` below says
so case by case (docs/conformance.md has the same list); those
expectations apply with `--server rsgi-wasm` only, so the same run against
gunicorn gives its own figures. Exits 1 if any case fails.
"""

import argparse
import importlib.machinery
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import types
import urllib.parse

GUNICORN = "gunicorn==27.0.1"

# Where rsgi-wasm answers differently from gunicorn on purpose:
# case -> (outcome, why). Outcomes: "refused" (4xx, 501 or closed, app
# never ran), "accepted" (the app answers what gunicorn's parser would have
# seen, had it accepted the request). HTTP/1.1 requests without Host are
# found by `expectation` itself (see NO_HOST).
DIFFERENCES = {
    "valid/014": (
        "refused",
        'a `"` in the request target: not allowed by RFC 3986 and refused '
        "by hyper's URI parser (the http crate) before any request exists; "
        "browsers and curl send it percent-encoded",
    ),
    **{
        case: (
            "refused",
            "a transfer coding other than chunked (gzip, identity) gets 501 "
            "(RFC 9112 §6.1), as h11 and uvicorn answer; gunicorn hands the "
            "app a body still encoded",
        )
        for case in (
            "valid/025", "valid/025_line", "valid/029", "valid/030",
            "valid/rfc9112_smuggle_gzip_chunked_01",
            "valid/rfc9112_smuggle_te_identity_chunked_01",
        )
    },
    "valid/rfc9112_target_absolute_userinfo_01": (
        "refused",
        "user information in an absolute target gets 400, as RFC 9110 §4.2.4 "
        "asks a recipient to treat it as an error",
    ),
    "valid/099": (
        "refused",
        "half-closed after fewer body bytes than Content-Length declares: "
        "refused as an incomplete request (RFC 9112 §8) rather than handing "
        "the app a truncated body as gunicorn does",
    ),
    "invalid/006": (
        "accepted",
        "a 4,500-byte request line: rsgi-wasm takes targets up to 65,534 "
        "bytes (414 above), gunicorn's default limit is 4,094",
    ),
    "invalid/007": (
        "accepted",
        "a header line over gunicorn's 8,190-byte field limit: rsgi-wasm "
        "bounds the whole head instead (64 KiB, 431 above)",
    ),
    "invalid/008": (
        "accepted",
        "a header line over gunicorn's 8,190-byte field limit: rsgi-wasm "
        "bounds the whole head instead (64 KiB, 431 above)",
    ),
    "invalid/rfc9110_trailer_forbidden_cl_01": (
        "accepted",
        "trailer fields are read and discarded, never merged into the "
        "environ (RFC 9110 §6.5.1 allows that), so a Content-Length trailer "
        "changes nothing",
    ),
    "invalid/rfc9110_trailer_forbidden_host_01": (
        "accepted",
        "trailer fields are read and discarded, never merged into the "
        "environ, so a Host trailer cannot change routing",
    ),
    "invalid/rfc9110_trailer_forbidden_te_01": (
        "accepted",
        "trailer fields are read and discarded, never merged into the "
        "environ, so a Transfer-Encoding trailer changes nothing",
    ),
    "invalid/rfc9112_smuggle_cl_te_chunked_01": (
        "accepted",
        "Content-Length with Transfer-Encoding: chunked wins, Content-Length "
        "is removed before the app sees it and the connection is closed "
        "after the answer (RFC 9112 §6.3), so nothing can be smuggled after it",
    ),
    "invalid/rfc9112_bare_lf_01": (
        "accepted",
        "a bare LF ends a head line, as RFC 9112 §2.2 allows and as nginx, "
        "HAProxy and hyper do; see docs/conformance.md for the smuggling "
        "argument",
    ),
    "invalid/rfc9112_leading_crlf_02": (
        "accepted",
        "empty lines before the request line are skipped, as RFC 9112 §2.2 "
        "asks for at least one; more cannot change where a message starts "
        "or ends",
    ),
}

# Requests that stop short of their own framing: with the client's side
# open, a server can only wait for the rest (then time out, or refuse);
# half-closed, the EOF tells it the request is incomplete.
INCOMPLETE = {
    "valid/099": "sends 8,599 of the 17,914 body bytes its Content-Length declares",
    "invalid/001": "the head never ends",
    "invalid/rfc9112_chunked_missing_final_crlf_01": "the last chunk lacks its final CRLF",
}

NO_HOST = (
    "refused",
    "an HTTP/1.1 request without Host gets 400 (RFC 9112 §3.2 MUST); "
    "gunicorn accepts it",
)

# gunicorn settings a case may set, and why such cases are skipped here.
SKIP_SETTINGS = {
    "proxy_protocol": "PROXY protocol (a gunicorn-only listener mode)",
}


# -- the corpus ------------------------------------------------------------


def fetch(dest):
    """Download the pinned gunicorn sdist into `dest` (once) and return the
    directory holding `valid/` and `invalid/`."""
    corpus = os.path.join(dest, "requests")
    if os.path.isdir(os.path.join(corpus, "valid")):
        return corpus
    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", "-d", tmp, GUNICORN],
            check=True,
        )
        (sdist,) = [f for f in os.listdir(tmp) if f.endswith(".tar.gz")]
        unpacked = os.path.join(tmp, "unpacked")
        with tarfile.open(os.path.join(tmp, sdist)) as tar:
            members = [m for m in tar.getmembers() if "/tests/requests/" in m.name and m.isfile()]
            tar.extractall(unpacked, members=members, filter="data")
        (top,) = os.listdir(unpacked)
        os.rename(os.path.join(unpacked, top, "tests", "requests"), corpus)
    return corpus


class _Config:
    """Stands in for gunicorn.config.Config: records what a case sets."""

    def __init__(self):
        self.settings = {}

    def set(self, name, value):
        self.settings[name] = value


def _shim_modules():
    """Just enough of `gunicorn` for the cases' .py files to load: config
    settings are recorded, error classes are named placeholders."""
    pkg = types.ModuleType("gunicorn")
    pkg.__path__ = []
    config = types.ModuleType("gunicorn.config")
    config.Config = _Config
    http = types.ModuleType("gunicorn.http")
    http.__path__ = []
    errors = types.ModuleType("gunicorn.http.errors")
    errors.__getattr__ = lambda name: type(name, (Exception,), {})
    sys.modules.update({
        "gunicorn": pkg, "gunicorn.config": config,
        "gunicorn.http": http, "gunicorn.http.errors": errors,
    })


def uri(raw):
    """gunicorn's `uri()` helper: the parts of a request target."""
    target = raw
    if target.startswith("//"):
        # Like gunicorn's split_request_uri: a path, not a network location.
        parts = urllib.parse.urlsplit("." + target)
        path = parts.path[1:]
    else:
        parts = urllib.parse.urlsplit(target)
        path = parts.path
    return {"raw": raw, "path": path or "", "query": parts.query or "",
            "fragment": parts.fragment or ""}


def decode_http(data):
    """The wire bytes of a `.http` file (the escapes gunicorn's tests use)."""
    data = data.replace(b"\n", b"").replace(b"\\r\\n", b"\r\n")
    data = data.replace(b"\\0", b"\0").replace(b"\\n", b"\n").replace(b"\\t", b"\t")
    return re.sub(rb"\\x([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), data)


class Case:
    def __init__(self, corpus, kind, stem):
        self.name = f"{kind}/{stem}"
        self.kind = kind
        with open(os.path.join(corpus, kind, stem + ".http"), "rb") as f:
            self.data = decode_http(f.read())
        mod = types.ModuleType("__case__")
        mod.uri = uri
        mod.cfg = _Config()
        loader = importlib.machinery.SourceFileLoader(
            "__case__", os.path.join(corpus, kind, stem + ".py"))
        loader.exec_module(mod)
        self.settings = mod.cfg.settings
        expect = mod.request
        self.requests = expect if isinstance(expect, list) else [expect]

    def expectation(self, server, mode):
        """(outcome, why): "skip", "valid", "refused", "accepted" or
        "incomplete"."""
        for name, value in self.settings.items():
            why = SKIP_SETTINGS.get(name, f"sets gunicorn's {name} = {value!r}")
            return "skip", why
        if mode == "open" and self.name in INCOMPLETE:
            return "incomplete", ""
        if server == "rsgi-wasm":
            if self.name in DIFFERENCES:
                return DIFFERENCES[self.name]
            if self.kind == "valid" and any(refused_here(r) for r in self.requests):
                return NO_HOST
        return ("valid", "") if self.kind == "valid" else ("refused", "")


    def with_host(self):
        """The same single request with a Host header added, and its
        expected parse: so a case refused for lacking Host still checks
        the parse of everything else in it."""
        if len(self.requests) != 1:
            return None
        end = self.data.find(b"\n") + 1
        data = self.data[:end] + b"Host: corpus.test\r\n" + self.data[end:]
        expected = dict(self.requests[0])
        expected["headers"] = [("HOST", "corpus.test"), *expected["headers"]]
        return data, [expected]


def load(corpus):
    _shim_modules()
    cases = []
    for kind in ("valid", "invalid"):
        for f in sorted(os.listdir(os.path.join(corpus, kind))):
            if f.endswith(".http"):
                cases.append(Case(corpus, kind, f[: -len(".http")]))
    return cases


# -- the wire --------------------------------------------------------------


class Closed(Exception):
    pass


class Reader:
    """HTTP/1.x responses read off one socket, one after another."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _more(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Closed()
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exactly(self, n):
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, head_only=False):
        """(status, headers, body) of the next final response."""
        while True:
            status_line = self._line()
            status = int(status_line.split(b" ")[1])
            headers = {}
            while True:
                line = self._line()
                if not line:
                    break
                k, _, v = line.partition(b":")
                headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
            if status >= 200:
                break
        if head_only or status in (204, 304):
            return status, headers, b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    return status, headers, body
                body += self._exactly(size)
                self._line()
        if "content-length" in headers:
            return status, headers, self._exactly(int(headers["content-length"]))
        body = self.buf
        try:
            while True:
                self._more()
        except Closed:
            pass
        return status, headers, self.buf


def exchange(addr, data, mode, count, timeout):
    """Send `data`, half-closing after it in "half-closed" mode, and read up
    to `count` responses: a list of (status, headers, body) or, in its
    place, "closed" (the server closed first) or "timeout"."""
    out = []
    with socket.create_connection(addr, timeout=timeout) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may refuse and close before reading it all
        if mode == "half-closed":
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        reader = Reader(sock)
        while len(out) < count:
            try:
                out.append(reader.response())
            except Closed:
                out.append("closed")
                break
            except (socket.timeout, TimeoutError):
                out.append("timeout")
                break
            except ConnectionResetError:
                out.append("closed")
                break
            if out[-1][1].get("connection", "").lower() == "close":
                break
    return out


# -- checking --------------------------------------------------------------


def environ_key(name):
    name = name.upper()
    if name in ("CONTENT-TYPE", "CONTENT-LENGTH"):
        return name.replace("-", "_")
    return "HTTP_" + name.replace("-", "_")


def items(value):
    """A header value as its comma/semicolon separated items: servers may
    join repeated fields with "," or ", " (and Cookie with "; ")."""
    return [p.strip() for p in re.split(r"[,;]", value)]


def mismatch(expected, seen):
    """What differs between gunicorn's expected parse and what the app
    saw, or None."""
    problems = []
    if seen["method"] != expected["method"]:
        problems.append(f"method {seen['method']!r} != {expected['method']!r}")
    target = expected["uri"]
    if expected["method"] == "CONNECT":
        # The authority form has no path or query, only host:port.
        if seen["raw_uri"] != target["raw"]:
            problems.append(f"RAW_URI {seen['raw_uri']!r} != {target['raw']!r}")
    elif target["path"]:
        want = urllib.parse.unquote_to_bytes(target["path"]).decode("latin-1")
        if seen["path"] != want:
            problems.append(f"PATH_INFO {seen['path']!r} != {want!r}")
    elif seen["raw_uri"] != target["raw"]:
        problems.append(f"RAW_URI {seen['raw_uri']!r} != {target['raw']!r}")
    if expected["method"] != "CONNECT" and seen["query"] != target["query"]:
        problems.append(f"QUERY_STRING {seen['query']!r} != {target['query']!r}")
    want_protocol = "HTTP/%d.%d" % expected["version"]
    if seen["protocol"] != want_protocol:
        problems.append(f"SERVER_PROTOCOL {seen['protocol']!r} != {want_protocol!r}")
    want_headers = {}
    for name, value in expected["headers"]:
        want_headers.setdefault(environ_key(name), []).extend(items(value))
    got_headers = {k: items(v) for k, v in seen["headers"].items()}
    if got_headers != want_headers:
        problems.append(f"headers {seen['headers']!r} != {expected['headers']!r}")
    body = expected.get("body", b"")
    if seen["body"].encode("latin-1") != body:
        problems.append(f"body {seen['body'][:80]!r} != {body[:80]!r}")
    return "; ".join(problems) or None


def refused_here(request):
    """An HTTP/1.1 request without Host (refused on its own)."""
    return request["version"] == (1, 1) and not any(h[0] == "HOST" for h in request["headers"])


def answered_by_app(response):
    return (
        response[0] in (200, 405)
        and response[1].get("content-type") == "application/json"
    )


def check(requests, outcome, got):
    """None if `got` (the responses) is what `outcome` asks for the
    expected `requests`, else why not."""
    if outcome == "refused" and len(requests) > 1:
        # Pipelined: those before the first refused one are answered.
        cut = next((i for i, r in enumerate(requests) if refused_here(r)), 0)
        if cut:
            problem = check(requests[:cut], "valid", got[:cut])
            return problem or check(requests[cut:], "refused", got[cut:])
    if outcome == "refused":
        first = got[0] if got else "closed"
        if first == "closed":
            return None
        if first == "timeout":
            return "no answer and the connection stayed open"
        if (400 <= first[0] < 500 or first[0] == 501) and not answered_by_app(first):
            return None
        return f"expected a refusal, got {first[0]} {first[2][:120]!r}"
    if outcome == "incomplete":
        # Waiting for the rest is right; so is a timeout or refusal.
        first = got[0] if got else "closed"
        if isinstance(first, str) or first[0] >= 400:
            return None
        return f"answered {first[0]} to an incomplete request"
    if outcome == "accepted":
        # An invalid case gunicorn refuses: there is no expected parse to
        # compare, only that the app answered.
        if got and not isinstance(got[0], str) and answered_by_app(got[0]):
            return None
        return f"expected the app's answer, got {got[0] if got else 'nothing'!r}"
    for i, expected in enumerate(requests):
        if i >= len(got) or isinstance(got[i], str):
            state = got[i] if i < len(got) else "closed"
            return f"request {i + 1} of {len(requests)}: no answer ({state})"
        status, headers, body = got[i]
        if not answered_by_app(got[i]):
            return f"request {i + 1}: answered {status} by the server: {body[:120]!r}"
        problem = mismatch(expected, json.loads(body))
        if problem:
            return f"request {i + 1}: {problem}"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fetch", metavar="DIR", help="download the corpus into DIR and print its path")
    ap.add_argument("--corpus", metavar="DIR")
    ap.add_argument("--addr", metavar="HOST:PORT")
    ap.add_argument("--server", choices=("rsgi-wasm", "gunicorn"), default="rsgi-wasm")
    ap.add_argument("--mode", choices=("open", "half-closed", "both"), default="both")
    ap.add_argument("--timeout", type=float, default=10.0,
                    help="seconds to wait for an answer (keep it above the server's header timeout)")
    args = ap.parse_args()
    if args.fetch:
        print(fetch(args.fetch))
        return 0
    if not (args.corpus and args.addr):
        ap.error("--corpus and --addr are required (or --fetch)")
    host, port = args.addr.rsplit(":", 1)
    addr = (host, int(port))
    cases = load(args.corpus)
    modes = ("open", "half-closed") if args.mode == "both" else (args.mode,)
    failed = 0
    for mode in modes:
        counts = {"passed": 0, "failed": 0, "skipped": 0, "different": 0}
        for case in cases:
            outcome, why = case.expectation(args.server, mode)
            if outcome == "skip":
                counts["skipped"] += 1
                if mode == modes[0]:
                    print(f"skip  {case.name}: {why}")
                continue
            got = exchange(addr, case.data, mode, len(case.requests), args.timeout)
            problem = check(case.requests, outcome, got)
            variant = case.with_host() if (outcome, why) == NO_HOST else None
            if variant and not problem:
                data, requests = variant
                got = exchange(addr, data, mode, 1, args.timeout)
                problem = check(requests, "valid", got)
                if problem:
                    problem = f"with a Host header added: {problem}"
            if problem:
                counts["failed"] += 1
                print(f"FAIL  {case.name} [{mode}]: {problem}")
            else:
                counts["passed"] += 1
                if why:
                    counts["different"] += 1
                    if mode == modes[0]:
                        print(f"diff  {case.name}: {outcome}: {why}")
        failed += counts["failed"]
        print(
            f"{mode}: {counts['passed']} of {counts['passed'] + counts['failed']} as expected "
            f"({counts['different']} of them deliberate differences from gunicorn), "
            f"{counts['failed']} failed, {counts['skipped']} skipped"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
