"""A plain WSGI app: no framework, no dependencies, a tiny router."""

import json
from urllib.parse import parse_qs


def respond(start_response, status, body, content_type="text/plain; charset=utf-8", headers=()):
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers])
    return [body]


def index(environ, start_response):
    return respond(start_response, "200 OK", b"Hello from a plain WSGI app!\n")


def echo(environ, start_response):
    if environ["REQUEST_METHOD"] != "POST":
        return respond(start_response, "405 Method Not Allowed", b"POST only\n", headers=[("Allow", "POST")])
    # PEP 3333: read no more than CONTENT_LENGTH. A chunked request has none;
    # then the body may be read to its end only if the server says the
    # stream is terminated (wsgi.input_terminated, which rsgi-wasm sets).
    length = environ.get("CONTENT_LENGTH")
    if length:
        body = environ["wsgi.input"].read(int(length))
    elif environ.get("wsgi.input_terminated"):
        body = environ["wsgi.input"].read()
    else:
        body = b""
    content_type = environ.get("CONTENT_TYPE") or "application/octet-stream"
    return respond(start_response, "200 OK", body, content_type)


def hello_json(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    name = query.get("name", ["world"])[0]
    body = json.dumps({"hello": name, "query": query}).encode()
    return respond(start_response, "200 OK", body, "application/json")


def stream(environ, start_response):
    # No Content-Length: the server streams each chunk as it is yielded.
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return (f"chunk {i}\n".encode() for i in range(5))


ROUTES = {"/": index, "/echo": echo, "/json": hello_json, "/stream": stream}


def application(environ, start_response):
    view = ROUTES.get(environ.get("PATH_INFO") or "/")
    if view is None:
        return respond(start_response, "404 Not Found", b"Not Found\n")
    return view(environ, start_response)
