"""hello: 14 bytes."""


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "14")])
    return [b"Hello, World!\n"]
