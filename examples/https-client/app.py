"""An app that calls HTTPS APIs: the same `GET` through requests, httpx,
urllib.request and http.client, plus a raw TCP exchange by host name.

The API's base URL comes from the environment (`API_URL`), as a real app
would take it; `/fetch?lib=...&path=...` fetches `API_URL + path` and
answers what came back, or the exception it raised (type and message), so a
refusal by the sandbox or a certificate failure reads plainly.
"""

import http.client
import json
import os
import socket
import ssl
import urllib.parse
import urllib.request

import httpx
import requests



def api_url():
    # Read per request, not at import: the import runs at build time, in
    # an empty environment, and its globals are what `run --env` finds.
    return os.environ.get("API_URL", "https://api.example.com")


def via_requests(url, verify):
    r = requests.get(url, timeout=10, verify=verify)
    return r.status_code, r.text


def via_httpx(url, verify):
    with httpx.Client(timeout=10, verify=verify) as client:
        r = client.get(url)
        return r.status_code, r.text


def via_urllib(url, verify):
    context = None if verify else ssl._create_unverified_context()
    with urllib.request.urlopen(url, timeout=10, context=context) as r:
        return r.status, r.read().decode()


def via_http_client(url, verify):
    parts = urllib.parse.urlsplit(url)
    context = ssl.create_default_context() if verify else ssl._create_unverified_context()
    conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=10, context=context)
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


LIBS = {
    "requests": via_requests,
    "httpx": via_httpx,
    "urllib": via_urllib,
    "http.client": via_http_client,
}


def failure(e):
    """The exception and the causes under it, innermost last: libraries
    wrap the `ssl` or `socket` error in their own types."""
    chain = []
    while e is not None and len(chain) < 8:
        chain.append({"type": type(e).__name__, "message": str(e)})
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return chain


def reply(start_response, status, value):
    body = json.dumps(value).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def tcp_exchange(host, port, line):
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(line.encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = s.recv(1024)
            if not chunk:
                break
            answer += chunk
        return answer.decode()


def app(environ, start_response):
    path = environ["PATH_INFO"]
    q = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
    if path == "/":
        return reply(start_response, "200 OK", {"api": api_url(), "libraries": sorted(LIBS), "ssl": ssl.OPENSSL_VERSION})
    if path == "/fetch":
        lib = LIBS.get(q.get("lib", "requests"))
        if lib is None:
            return reply(start_response, "400 Bad Request", {"error": "lib must be one of " + ", ".join(sorted(LIBS))})
        url = q.get("url") or api_url() + q.get("path", "/")
        try:
            status, text = lib(url, q.get("verify", "1") != "0")
        except Exception as e:
            return reply(start_response, "502 Bad Gateway", {"error": failure(e)})
        return reply(start_response, "200 OK", {"status": status, "body": text})
    if path == "/tcp":
        try:
            answer = tcp_exchange(q["host"], int(q["port"]), q.get("line", "ping"))
        except Exception as e:
            return reply(start_response, "502 Bad Gateway", {"error": failure(e)})
        return reply(start_response, "200 OK", {"answer": answer})
    if path == "/resolve":
        try:
            infos = socket.getaddrinfo(q["name"], int(q.get("port", "443")), type=socket.SOCK_STREAM)
        except Exception as e:
            return reply(start_response, "502 Bad Gateway", {"error": failure(e)})
        return reply(start_response, "200 OK", {"addresses": sorted({info[4][0] for info in infos})})
    return reply(start_response, "404 Not Found", {"error": "not found", "path": path})
