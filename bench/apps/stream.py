"""stream-64k: 64 KiB in 4 KiB chunks from a generator."""

CHUNK = b"x" * 4096


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return (CHUNK for _ in range(16))
