"""upload-1m: read the whole POST body, answer its length."""


def app(environ, start_response):
    inp = environ["wsgi.input"]
    total = 0
    while True:
        chunk = inp.read(65536)
        if not chunk:
            break
        total += len(chunk)
    body = str(total).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
