"""A wasi:http request's parts → the CGI part of a PEP 3333 environ.

The same rules as ``host/src/runtime/environ.rs`` (which builds the environ
on our own host): latin-1 native strings, ``PATH_INFO`` percent-decoded and
``QUERY_STRING`` raw, ``HTTP_*`` names, repeated fields joined with ``, ``
(``; `` for Cookie), names with ``_`` dropped. What a wasi:http host does
not say is filled in the way a reverse proxy would: HTTP/1.1, no client
address, and the host name from the request's authority (wasi:http hosts
strip the ``Host`` header itself).

Pure Python, so it is unit-tested outside a component
(``guest/tests/test_wasi_http.py``).
"""

from typing import Iterable, List, Optional, Tuple
from urllib.parse import unquote_to_bytes


def split_host(host: str) -> Tuple[str, Optional[str]]:
    """``name[:port]`` → name and port, ``[v6]:port`` aware."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return host, None
        rest = host[end + 1 :]
        return host[: end + 1], rest[1:] if rest.startswith(":") else None
    name, colon, port = host.rpartition(":")
    return (name, port) if colon else (host, None)


def environ(
    base: dict,
    method: str,
    target: str,
    scheme: str,
    authority: str,
    headers: Iterable[Tuple[str, bytes]],
) -> dict:
    """The environ of one request, on top of a copy of ``base`` (the keys
    that are the same for every request)."""
    env = base.copy()
    if not target.isascii():
        # A host that lets raw bytes through (`wasmtime serve` does, in the
        # query) hands them over decoded as UTF-8: native strings are the
        # bytes as sent, as latin-1.
        target = target.encode("utf-8", "surrogateescape").decode("latin-1")
    path, _, query = target.partition("?")
    env["REQUEST_METHOD"] = method
    env["PATH_INFO"] = unquote_to_bytes(path.encode("latin-1")).decode("latin-1") if "%" in path else path
    env["QUERY_STRING"] = query
    env["RAW_URI"] = env["REQUEST_URI"] = target
    env["SERVER_PROTOCOL"] = "HTTP/1.1"
    env["wsgi.url_scheme"] = scheme
    seen = {}
    for name, value in headers:
        name = name.lower()
        # A `_` could collide with the `-` form once mapped to HTTP_* (the
        # request-smuggling defence of gunicorn and nginx).
        if "_" in name:
            continue
        text = value.decode("latin-1")
        if name == "content-type":
            key = "CONTENT_TYPE"
        elif name == "content-length":
            # The host already refused conflicting lengths: keep the first.
            if "CONTENT_LENGTH" not in env:
                env["CONTENT_LENGTH"] = text
            continue
        else:
            key = "HTTP_" + name.upper().replace("-", "_")
        if key in seen:
            env[key] += ("; " if name == "cookie" else ", ") + text
        else:
            seen[key] = True
            env[key] = text
    host = env.get("HTTP_HOST") or authority
    if host:
        env.setdefault("HTTP_HOST", host)
        name, port = split_host(host)
        env["SERVER_NAME"] = name
        env["SERVER_PORT"] = port or ("443" if scheme == "https" else "80")
    else:
        env["SERVER_NAME"] = "localhost"
        env["SERVER_PORT"] = "443" if scheme == "https" else "80"
    return env


def body_length(env: dict) -> Tuple[bool, Optional[int]]:
    """Whether the request may have a body, and its length if declared.
    wasi:http hosts drop ``Transfer-Encoding``, so a request without a
    ``Content-Length`` is read to the end of its body stream."""
    length = env.get("CONTENT_LENGTH")
    if length is None:
        return True, None
    if not length.isdigit():
        return False, None
    n = int(length)
    return n > 0, n


def response_headers(code: int, headers: List[Tuple[str, str]]) -> Tuple[List[Tuple[str, str]], bool]:
    """The headers to send with status ``code``, and whether the response
    carries no content (RFC 9110: 204 and 304 announce no length, a 205 a
    length of 0), as the default world's host sends them: other wasi:http
    hosts send what they are given."""
    if code not in (204, 205, 304):
        return headers, False
    kept = [(name, value) for name, value in headers if name.lower() != "content-length"]
    if code == 205:
        kept.append(("Content-Length", "0"))
    return kept, True


def unanswered_page(body: object) -> Tuple[str, str]:
    """The page for a request the app left unanswered, given its
    ``wsgi.input`` (or None): a body that could not be read (malformed
    chunked framing; ``Response.check_body`` held the app's own answer back)
    is the client's fault, 400 as from the default world's host; anything
    else (the client left, the adapter failed) a 500."""
    if getattr(body, "disconnected", False):
        return "400 Bad Request", "Bad Request: malformed or incomplete request body\n"
    return "500 Internal Server Error", "Internal Server Error\n"
