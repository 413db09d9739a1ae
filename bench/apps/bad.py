"""bad: a hostile tenant for the noisy-neighbour bench. /spin burns CPU
until the request times out; /bomb allocates until the memory cap refuses
(MemoryError, the instance is replaced)."""


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/spin":
        while True:
            pass
    if path == "/bomb":
        hoard = []
        while True:
            hoard.append(bytearray(16 * 1024 * 1024))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"bad\n"]
