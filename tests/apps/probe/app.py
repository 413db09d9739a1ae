"""Echo how the request was parsed, for the gunicorn request corpus
(`tests/gunicorn_corpus.py`): every path answers JSON with the method,
target, protocol, header variables and body the app saw. The same file runs
natively under gunicorn for the side-by-side figures."""

import json


def application(environ, start_response):
    body = environ["wsgi.input"].read()
    seen = {
        "method": environ["REQUEST_METHOD"],
        "raw_uri": environ.get("RAW_URI", ""),
        "path": environ.get("PATH_INFO", ""),
        "query": environ.get("QUERY_STRING", ""),
        "protocol": environ["SERVER_PROTOCOL"],
        "headers": {
            k: v
            for k, v in environ.items()
            if k.startswith("HTTP_") or k in ("CONTENT_TYPE", "CONTENT_LENGTH")
        },
        # latin-1 keeps every byte as one code point.
        "body": body.decode("latin-1"),
    }
    out = json.dumps(seen).encode()
    # An app that cannot tunnel refuses CONNECT, but still says what it saw.
    status = "405 Method Not Allowed" if seen["method"] == "CONNECT" else "200 OK"
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]
