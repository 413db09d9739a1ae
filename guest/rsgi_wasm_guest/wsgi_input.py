"""``wsgi.input``: a file-like stream over chunks pulled from the host.

PEP 3333 asks for ``read(size)``, ``readline(size)``, ``readlines(hint)`` and
iteration; the stream never reads past ``CONTENT_LENGTH`` and returns ``b""``
at the end of the body (``wsgi.input_terminated`` is True, so apps may also
read a chunked body until ``b""``).
"""

import operator
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional

# How much to pull from the host per call when the caller did not bound it.
CHUNK = 64 * 1024


class ClientDisconnected(OSError):
    """The client went away (or sent a malformed body) mid-request."""


class BodyTooLarge(OSError):
    """The request body is over the server's ``--max-body``."""


# Werkzeug's classes for the same two failures (400 and 413). Raised as
# both, a Flask app answers them as the HTTP errors they are, as it does
# Werkzeug's own, instead of logging a 500 traceback for every client that
# leaves mid-upload; the host still decides the status (see
# `protocol.Response.check_body`).
_WERKZEUG = {ClientDisconnected: "ClientDisconnected", BodyTooLarge: "RequestEntityTooLarge"}
_BOTH: Dict[type, type] = {}


def body_error(kind: type, message: str) -> OSError:
    """A ``kind`` (``ClientDisconnected`` or ``BodyTooLarge``) saying
    ``message``; Werkzeug's class for it too, once the app imported it."""
    werkzeug = sys.modules.get("werkzeug.exceptions")
    theirs = getattr(werkzeug, _WERKZEUG[kind], None)
    if not isinstance(theirs, type) or not issubclass(theirs, Exception):
        return kind(message)
    both = _BOTH.get(kind)
    if both is None or not issubclass(both, theirs):
        both = _BOTH[kind] = type(kind.__name__, (kind, theirs), {"__module__": __name__})
    error = both(message)
    # OSError's constructor ran, not Werkzeug's: what it would have set.
    error.description = message
    error.response = None
    return error


def _ended(n: int) -> bytes:
    return b""


def _size(size: Any) -> int:
    """A size or hint argument as ``io`` takes it: ``None`` or an integer
    (anything with ``__index__``), ``-1`` for ``None``. ``read(n / 2)`` is a
    ``TypeError`` the app can catch, as with any file; the float must never
    reach the host call, whose argument is an integer."""
    if size is None:
        return -1
    try:
        return operator.index(size)
    except TypeError:
        raise TypeError(
            f"argument should be integer or None, not '{type(size).__name__}'"
        ) from None


# A request that carried this much body (or failed reading it) may have
# left temporary files behind (frameworks spool uploads to /tmp: Werkzeug
# past 500 KB, WebOb past 100 KB), held open by reference cycles between
# the request, its environ and any traceback. Collecting right after it
# gives their space back to the app's /tmp quota now, not whenever the
# cyclic collector next reaches its oldest generation: until then every
# upload could fail for want of room.
SPOOLED = 256 * 1024


class InputStream:
    """Buffered reader over ``pull(max_bytes) -> bytes`` (``b""`` = end)."""

    __slots__ = ("_pull", "_remaining", "_buf", "_eof", "_pulled", "too_large", "disconnected")

    def __init__(self, pull: Callable[[int], bytes], content_length: Optional[int]) -> None:
        self._pull = pull
        # None: length unknown (chunked); read until the host says end.
        self._remaining = content_length
        self._buf = bytearray()
        self._eof = content_length == 0
        self._pulled = 0
        # Set when the host refused the body, so the server side can answer
        # 413 (or nothing) even if the app swallowed or wrapped the error.
        self.too_large = False
        self.disconnected = False

    def _next(self, want: int) -> bytes:
        """Pull one more chunk of at most ``want`` bytes; ``b""`` at the end."""
        if self._eof:
            return b""
        want = max(want, 1)
        if self._remaining is not None:
            want = min(want, self._remaining)
        try:
            chunk = self._pull(min(want, CHUNK))
        except BodyTooLarge:
            self.too_large = self._eof = True
            raise
        except ClientDisconnected:
            self.disconnected = self._eof = True
            raise
        if not chunk:
            self._eof = True
            return b""
        self._pulled += len(chunk)
        if self._remaining is not None:
            # The host enforces the declared length too; this guards the
            # "never read past CONTENT_LENGTH" rule inside the guest as well.
            if len(chunk) > self._remaining:
                chunk = chunk[: self._remaining]
            self._remaining -= len(chunk)
            if self._remaining == 0:
                self._eof = True
        return chunk

    def _fill(self, want: int) -> bool:
        """Pull one more chunk into the buffer; False at end of body."""
        chunk = self._next(want)
        if not chunk:
            return False
        self._buf += chunk
        return True

    def _take(self, n: int) -> bytes:
        if n >= len(self._buf):
            out = bytes(self._buf)
            self._buf.clear()
            return out
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def read(self, size: Optional[int] = -1) -> bytes:
        size = _size(size)
        if size < 0:
            size = -1
        elif len(self._buf) >= size:
            return self._take(size)
        # Gather chunks in a list and join once: each byte is copied once
        # here, and a chunk that is the whole answer is not copied at all.
        parts = []
        have = len(self._buf)
        if have:
            parts.append(self._take(have))
        while size < 0 or have < size:
            chunk = self._next(CHUNK if size < 0 else size - have)
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    def readline(self, size: Optional[int] = -1) -> bytes:
        limit = max(_size(size), -1)
        scanned = 0
        while True:
            nl = self._buf.find(b"\n", scanned)
            if nl >= 0:
                end = nl + 1
                break
            if 0 <= limit <= len(self._buf):
                end = limit
                break
            scanned = len(self._buf)
            if not self._fill(CHUNK):
                end = len(self._buf)
                break
        if 0 <= limit < end:
            end = limit
        return self._take(end)

    def readlines(self, hint: Optional[int] = -1) -> List[bytes]:
        hint = _size(hint)
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                break
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def close(self) -> None:
        """Apps may close the input; the host discards what is left."""

    def end(self) -> bool:
        """The request is over: a stream the app kept (in a global, a
        thread, a cache) reads ``b""`` from now on, never the body of a
        later request. Returns whether the body was one frameworks spool
        to a temporary file (see ``SPOOLED``)."""
        self._eof = True
        self._buf.clear()
        self._pull = _ended
        return self._pulled >= SPOOLED or self.too_large or self.disconnected


class EmptyInput:
    """``wsgi.input`` of a request without a body (no Content-Length and no
    Transfer-Encoding, or a length of 0): always at its end. It has no
    state, so one instance serves every such request."""

    __slots__ = ()
    too_large = False
    disconnected = False

    def read(self, size: Optional[int] = -1) -> bytes:
        _size(size)
        return b""

    def readline(self, size: Optional[int] = -1) -> bytes:
        _size(size)
        return b""

    def readlines(self, hint: Optional[int] = -1) -> List[bytes]:
        _size(hint)
        return []

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        raise StopIteration

    def close(self) -> None:
        """Nothing to discard."""


EMPTY = EmptyInput()
