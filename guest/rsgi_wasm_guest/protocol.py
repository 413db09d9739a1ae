"""PEP 3333 response side: ``start_response``, ``write``, result iteration.

Everything here is plain Python over a small *transport* (``start`` and
``write`` callables), so the same code serves real requests inside the
component and the pure-Python warm-up at build time.

Rules implemented (PEP 3333):
- ``start_response(status, headers, exc_info=None)`` validates the status
  (``NNN reason``) and headers (``str``, latin-1, token names, no CR/LF, no
  hop-by-hop) and returns ``write``; a second call needs ``exc_info``, and
  with ``exc_info`` after the head was sent the original error is re-raised.
- the head is sent together with the first non-empty body chunk;
- ``close()`` is always called on the result, also on error or disconnect;
- an exception before anything was sent answers 500 with the traceback on
  ``wsgi.errors``; after the head was sent the response is reported as cut
  short so the host aborts the connection.
"""

import errno
import io
import os
import re
import sys
import traceback
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

from .compat import file_error_hint, stdlib_hint
from .wsgi_input import BodyTooLarge, ClientDisconnected, body_error

#: The first words of an app exception's report on stderr (guest_log.rs
#: `ERROR_REPORT` must match).
ERROR_REPORT = "rsgi-wasm: error in the WSGI app serving"

#: How a failure of the adapter itself starts: the host replaces the
#: instance (protocol.rs `ADAPTER_ERROR` must match).
ADAPTER_ERROR = "rsgi-wasm adapter error"

#: What this request's reports could not say through stderr, for the host
#: to log instead (`take_lost_report`); empty on nearly every request, so
#: handlers test it before calling.
LOST_REPORTS: List[str] = []

Headers = List[Tuple[str, str]]

# The most body bytes handed to the host in one call: wasmtime traps a host
# call that copies more than 128 MiB ("fuel allocated for hostcalls").
PIECE = 16 * 1024 * 1024


def pieces(chunk: bytes) -> Iterator[bytes]:
    """``chunk`` in pieces of at most ``PIECE`` bytes (itself if it fits,
    and one empty piece for an empty chunk)."""
    if len(chunk) <= PIECE:
        yield chunk
        return
    view = memoryview(chunk)
    for at in range(0, len(chunk), PIECE):
        yield bytes(view[at : at + PIECE])

# RFC 9110 section 5.6.2: token characters allowed in a field name.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# A bare "200" is taken too, as gunicorn and wsgiref take it.
_STATUS = re.compile(r"[1-9][0-9][0-9](?: [^\r\n\x00]*)?\Z")
# RFC 9110 section 7.6.1: connection-specific fields a WSGI app must not set
# (PEP 3333: "hop-by-hop" headers are the server's business).
HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    )
)


class Transport:
    """Where a response goes: the host over WIT, or nowhere (warm-up)."""

    def start(self, status: str, headers: Headers, first_chunk: bytes) -> None:
        raise NotImplementedError

    def write(self, chunk: bytes) -> None:
        raise NotImplementedError

    def send_file(self, status: str, headers: Headers, path: str, offset: int) -> bool:
        """Let the host stream a granted file; False if it cannot."""
        return False

    def end(self) -> None:
        """The response is complete: let it go out before the app's result
        is closed (a slow ``close()`` must not keep the client waiting)."""


class _Ended(Transport):
    """A finished response's transport. The host's calls write to whichever
    request is current, so a ``write`` callable (or response) kept past its
    own request must fail, not write into the next one's response; so must
    a write from the result's ``close()``, which runs once the response is
    complete or cut."""

    def start(self, status: str, headers: Headers, first_chunk: bytes) -> None:
        self.write(first_chunk)

    def write(self, chunk: bytes) -> None:
        raise RuntimeError("write() called after its request ended")


_ENDED = _Ended()


# Validation results, cached: apps send the same few statuses and headers
# on every request, so each distinct string (or header pair) is checked
# once. Bounded: a cache that fills up (varying values such as
# Content-Length or Set-Cookie) is emptied and refilled.
_VALID_STATUS: set = set()
_VALID_NAMES: dict = {}  # name -> its lower-case form
_VALID_ITEMS: dict = {}  # (name, value) -> whether it is a Content-Length
_CACHE_MAX = 512
_CONTENT_LENGTH = "content-length"


def _native(text: Any) -> Any:
    """``text`` as an exact ``str`` when it is a subclass: frameworks pass
    ``markupsafe.Markup``, Django's ``SafeString`` and ``StrEnum`` members
    as header values, which gunicorn accepts; anything else unchanged."""
    return str.__str__(text) if isinstance(text, str) and type(text) is not str else text


def check_status(status: Any) -> str:
    status = _native(status)
    if type(status) is not str:
        raise TypeError(f"status must be a str, got {type(status).__name__}: {status!r}")
    if not _STATUS.match(status):
        raise ValueError(f"status {status!r} is not of the form 'NNN Reason'")
    try:
        status.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"status {status!r} is not latin-1 encodable") from None
    if len(_VALID_STATUS) >= _CACHE_MAX:
        _VALID_STATUS.clear()
    _VALID_STATUS.add(status)
    return status


def _check_name(name: Any) -> str:
    """Validate a header name; returns it lower-cased."""
    if type(name) is not str:
        raise TypeError(f"response header name {name!r} must be str, got {type(name).__name__}")
    lower = _VALID_NAMES.get(name)
    if lower is not None:
        return lower
    if not _TOKEN.match(name):
        raise ValueError(f"response header name {name!r} is not a valid HTTP token")
    lower = name.lower()
    if lower in HOP_BY_HOP:
        raise ValueError(f"response header {name!r} is hop-by-hop: the server manages it, a WSGI app must not set it")
    if len(_VALID_NAMES) >= _CACHE_MAX:
        _VALID_NAMES.clear()
    _VALID_NAMES[name] = lower
    return lower


def _check_item(item: Any) -> Tuple[Tuple[str, str], bool]:
    """Validate one ``(name, value)``; returns it as a tuple of exact
    ``str`` and whether it is a Content-Length. A named tuple or a
    two-item list is taken as gunicorn takes it."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise TypeError(f"response header {item!r} is not a (name, value) tuple")
    name, value = _native(item[0]), _native(item[1])
    lower = _check_name(name)
    if type(value) is not str:
        raise TypeError(f"response header {name!r}: the value must be str, got {type(value).__name__}")
    if len(value) > MAX_HEAD:
        raise ValueError(_too_large(len(name) + len(value)))
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError(f"response header {name!r} has a CR, LF or NUL in its value (header injection)")
    if not value.isascii():
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"response header {name!r} value {value!r} is not latin-1 encodable (PEP 3333 native string)") from None
    is_length = lower == _CONTENT_LENGTH
    if len(_VALID_ITEMS) >= _CACHE_MAX:
        _VALID_ITEMS.clear()
    pair = (name, value)
    _VALID_ITEMS[pair] = is_length
    return pair, is_length


# What the host lets a response's status and headers take (the packed
# form, `MAX_RESPONSE_HEADERS` in host/src/runtime/wsgi.rs): checked here
# before the head is copied for the host, since copies of a header of
# hundreds of megabytes would end the instance by memory before the host
# could refuse it.
MAX_HEAD = 256 * 1024


def _too_large(size: int) -> str:
    return f"response status and headers take {size} bytes, over the {MAX_HEAD // 1024} KiB a response may have"


def check_headers(headers: Any) -> Tuple[Headers, bool]:
    """Validate response headers; returns a copy of them and whether one
    is a Content-Length."""
    if not isinstance(headers, (list, tuple)):
        raise TypeError(f"response headers must be a list of (name, value) tuples, got {type(headers).__name__}")
    out: Headers = list(headers)
    has_length = False
    size = 0
    for i, item in enumerate(out):
        # Only exact tuples take the cached answer, so a named tuple or a
        # list equal to a cached pair is still copied as a plain tuple.
        try:
            is_length = _VALID_ITEMS.get(item) if type(item) is tuple else None
        except TypeError:  # unhashable, so not a (str, str) pair
            is_length = None
        if is_length is None:
            item, is_length = _check_item(item)
            out[i] = item
        if is_length:
            has_length = True
        size += len(item[0]) + len(item[1]) + 2
    if size > MAX_HEAD:
        raise ValueError(_too_large(size))
    return out, has_length


class Response:
    """One request's response state: what ``start_response`` set and sent."""

    __slots__ = ("transport", "status", "headers", "has_length", "sent", "body_input")

    def __init__(self, transport: Transport, body_input: Any = None) -> None:
        self.transport = transport
        self.status: Optional[str] = None
        self.headers: Headers = []
        self.has_length = False
        self.sent = False
        # The request body as the server made it (middleware may replace
        # environ["wsgi.input"]).
        self.body_input = body_input

    def check_body(self) -> None:
        """Before the head goes out: a body the host refused as too large
        is answered 413 whatever the app made of the error (frameworks
        catch it and answer 500, or carry on), and one that could not be
        read (malformed framing, a client that stalled or left) is left to
        the host, which answers 400 or 408, or no one."""
        body = self.body_input
        if getattr(body, "too_large", False):
            raise body_error(BodyTooLarge, "request body exceeds the server's --max-body")
        if getattr(body, "disconnected", False):
            raise body_error(ClientDisconnected, "the request body could not be read")

    def start_response(self, status: str, headers: Headers, exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.sent:
                    # PEP 3333: too late to change the response; re-raise.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise RuntimeError("start_response() called a second time without exc_info")
        self.headers, self.has_length = check_headers(headers)
        self.status = status if type(status) is str and status in _VALID_STATUS else check_status(status)
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write`` callable returned by ``start_response``."""
        if self.status is None:
            raise RuntimeError("write() called before start_response()")
        self.send(data)

    def send(self, data: Any) -> None:
        if type(data) is not bytes:
            if isinstance(data, (bytes, bytearray, memoryview)):
                data = bytes(data)
            else:
                raise TypeError(f"response body chunks must be bytes, got {type(data).__name__}")
        if not data:
            return
        if self.sent:
            self.transport.write(data)
            return
        if self.status is None:
            raise RuntimeError("the app produced body data before calling start_response()")
        self.check_body()
        self.sent = True
        self.transport.start(self.status, self.headers, data)

    def finish(self) -> None:
        if self.sent:
            return
        if self.status is None:
            raise RuntimeError("the app returned without calling start_response()")
        self.check_body()
        self.sent = True
        self.transport.start(self.status, self.headers, b"")


def error_page(transport: Transport, status: str, text: str) -> None:
    """A plain-text page the adapter answers with itself."""
    body = text.encode()
    try:
        transport.start(
            status,
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
            body,
        )
    except ClientDisconnected:
        pass


def _end(transport: Transport) -> None:
    try:
        transport.end()
    except Exception:  # the client left: close() runs all the same
        pass


def _report(errors: Any, environ: dict, what: str, exc: BaseException) -> None:
    """Write an app exception's report in one write: the host knows a
    report by its first line and logs it whole, as an error, past the app's
    log rate (clipped), so a noisy app cannot hide its own errors."""
    method = environ.get("REQUEST_METHOD", "?")
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    report = _formatted(exc)
    hint = file_error_hint(exc) or stdlib_hint(exc) or _call_hint(exc)
    if hint:
        report += f"({hint})\n"
    text = _clipped(f"{ERROR_REPORT} {method} {path}{what}:\n{report}")
    try:
        errors.write(text)
        errors.flush()
    except (OSError, ValueError) as e:
        # The app closed its stderr (os.close(2)): every later report and
        # line of output of this instance would be lost too.
        LOST_REPORTS.append(f"{ADAPTER_ERROR}: the app's stderr cannot be written ({type(e).__name__}: {e}); its report:\n{text}")
        return
    # The descriptors only when the exception says one was bad: a request
    # that raises nothing pays nothing.
    closed = closed_stdio(descriptors=isinstance(exc, OSError) and exc.errno == errno.EBADF)
    if closed:
        LOST_REPORTS.append(f"{ADAPTER_ERROR}: the app closed its {closed}, so its output fails from now on")


def _formatted(exc: BaseException) -> str:
    """The traceback of ``exc``, as Python prints it. A message of
    hundreds of MiB (a ``__str__`` that builds one) is clipped as soon as
    it is built: formatting copies it several times over, and running out
    of memory there lost the whole report. Should memory run out all the
    same, the report is made without the message."""
    try:
        shown = traceback.TracebackException.from_exception(exc)
        seen, todo = set(), [shown]
        while todo:
            each = todo.pop()
            if id(each) in seen:
                continue
            seen.add(id(each))
            # CPython's own attribute (3.11 on); without it, as it is.
            message = getattr(each, "_str", None)
            if isinstance(message, str) and len(message) > MESSAGE_MAX:
                each._str = _clipped(message, MESSAGE_MAX)
            todo.extend(e for e in (each.__cause__, each.__context__, *(each.exceptions or ())) if e is not None)
        return "".join(shown.format())
    except MemoryError:
        pass
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ in ("builtins", "__main__") else f"{kind.__module__}.{kind.__qualname__}"
    last = f"{name}: <its message could not be built: out of memory>\n"
    try:
        return "Traceback (most recent call last):\n" + "".join(traceback.format_tb(exc.__traceback__)) + last
    except MemoryError:
        return last


def _call_hint(exc: BaseException) -> Optional[str]:
    """For an app that could not even be called with ``(environ,
    start_response)``: an app factory named without its call."""
    tb = exc.__traceback__
    if isinstance(exc, TypeError) and tb is not None and tb.tb_next is None and "positional argument" in str(exc):
        return "the app takes other arguments than (environ, start_response): if it names an app factory, build with its call, `module:create_app()`"
    return None


#: The most characters of a report written: the host logs 16 KiB of it
#: (its start and its end), and takes 4 MiB per write, past which the rest
#: of one write would arrive as plain output. (guest_log.rs `guest_left_out`
#: reads the count this leaves.)
REPORT_MAX = 256 * 1024


#: The most characters of an exception's message kept in its report: room
#: is left for the traceback.
MESSAGE_MAX = REPORT_MAX - 16 * 1024


def _clipped(text: str, most: int = REPORT_MAX) -> str:
    if len(text) <= most:
        return text
    half = most // 2
    left = len(text) - 2 * half
    return f"{text[:half]}\n[{left} characters of the report left out]\n{text[-half:]}"


def closed_stdio(descriptors: bool = True) -> str:
    """Which of the app's standard output streams is closed: as an object
    (``sys.stdout.close()``), or, with ``descriptors``, as a descriptor
    (``os.close(1)``)."""
    closed = [
        f"sys.{name}"
        for name in ("stdout", "stderr")
        if getattr(getattr(sys, name, None), "closed", False) is True
    ]
    if descriptors:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            try:
                os.fstat(fd)
            except OSError as e:
                if e.errno == errno.EBADF:
                    closed.append(f"{name} (fd {fd})")
    return " and ".join(closed)


def take_lost_report() -> Optional[str]:
    """What this request's reports could not say through stderr, if
    anything: the handler fails with it, so the host logs it and replaces
    the instance."""
    if not LOST_REPORTS:
        return None
    lost = "\n".join(LOST_REPORTS)
    LOST_REPORTS.clear()
    return lost


def _close(result: Any, errors: Any, environ: dict) -> None:
    try:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    except BaseException as exc:
        _report(errors, environ, " (the result's close() raised)", exc)


#: Why a response is cut short when the app stopped at its request body.
BODY_FAILED_AFTER_HEAD = (
    "the request body could not be read after the response had started "
    "(the client stalled, left or sent malformed framing)"
)


#: The same when the body went over ``--max-body`` after the head.
BODY_TOO_LARGE_AFTER_HEAD = (
    "the request body went over the server's --max-body after the response had started"
)


def _body_failed(body_input: Any) -> Optional[str]:
    """Why the request body failed, if it did (the head has gone out by
    then: ``check_body`` refuses to send one after)."""
    if getattr(body_input, "disconnected", False):
        return BODY_FAILED_AFTER_HEAD
    if getattr(body_input, "too_large", False):
        return BODY_TOO_LARGE_AFTER_HEAD
    return None


def run(app: Callable[..., Iterable[bytes]], environ: dict, transport: Transport) -> Optional[str]:
    """Serve one request; never raises. Returns None when the response is
    complete, or why it was cut short after its head was sent."""
    body_input = environ.get("wsgi.input")
    resp = Response(transport, body_input)
    errors = environ["wsgi.errors"]
    result: Any = None
    complete = False
    try:
        result = app(environ, resp.start_response)
        status = resp.status
        if status is not None and not resp.sent:
            kind = type(result)
            if (kind is list or kind is tuple) and len(result) == 1 and type(result[0]) is bytes:
                # The common shape, answered in one call to the host. PEP
                # 3333 lets the server add Content-Length for a one-item
                # sequence: it keeps HTTP/1.0 and HEAD responses exact.
                body = result[0]
                if not resp.has_length:
                    resp.headers.append(("Content-Length", str(len(body))))
                resp.check_body()
                resp.sent = True
                transport.start(status, resp.headers, body)
                return None
            if kind is FileWrapper and _send_file(result, resp):
                complete = True
                return None
        if callable(result) and not hasattr(result, "__iter__"):
            # `module:create_app`, a factory named without its call: Python
            # would say only "'function' object is not iterable".
            raise TypeError(
                f"the app returned {result!r}, a callable, where WSGI wants an iterable of bytes: "
                "if it names an app factory, build with its call, `module:create_app()`"
            )
        for chunk in result:
            resp.send(chunk)
        resp.finish()
        failed = _body_failed(body_input)
        if failed:
            # The app caught its body's failure and carried on after the
            # head: what it sent is not the whole answer to the request.
            return failed
        complete = True
        return None
    except ClientDisconnected:
        failed = _body_failed(body_input)
        if resp.sent and failed:
            # The app gave up on a request body that failed after its
            # response started: a client that stalled or garbled the body
            # is still there, and must not take what it got for the whole.
            return failed
        # The client went away mid-request: nobody to answer, nothing to log.
        return None
    except BaseException as exc:
        # BaseException on purpose: SystemExit or KeyboardInterrupt raised by
        # an app must not escape the component export either.
        return _failed(exc, environ, resp, transport, errors)
    finally:
        if result is not None and type(result) is not list:
            if complete:
                _end(transport)
            resp.transport = _ENDED
            _close(result, errors, environ)
        resp.transport = _ENDED
        try:
            errors.flush()
        except Exception:
            pass
        # A request that closed `sys.stdout` or `sys.stderr` (an attribute
        # read each: free) leaves an instance whose next request fails at
        # its first print: replaced now, once its own response is out.
        closed = closed_stdio(descriptors=False)
        if closed and not LOST_REPORTS:
            LOST_REPORTS.append(f"{ADAPTER_ERROR}: the app closed its {closed}, so its output fails from now on")


# What the host may send from disk itself: binary files whose `read` gives
# the bytes on disk. Exact types only: a subclass may override `read`, as
# GzipFile and text files (which have a `name` too) transform what they read.
_RAW_FILES = (io.FileIO, io.BufferedReader, io.BufferedRandom)


def _raw_file(f: Any) -> Any:
    """The binary file that `f` reads unchanged: `f` itself, or the file a
    proxy's `read` belongs to (Django's `File`, as
    `FileResponse(instance.field.open())` passes it; tempfile's wrapper), or
    None: anything else is iterated through its own `read`."""
    read = getattr(f, "read", None)
    for candidate in (f, getattr(read, "__self__", None), getattr(getattr(read, "__wrapped__", None), "__self__", None)):
        if _reads_unchanged(candidate):
            return candidate
    return None


def _reads_unchanged(f: Any) -> bool:
    """Whether `f` is a file of an exact built-in type, reading through an
    exact `FileIO`, with no reading method replaced on either instance."""
    raw = getattr(f, "raw", f) if type(f) is not io.FileIO else f
    return (
        type(f) in _RAW_FILES
        and type(raw) is io.FileIO
        and not any(name in getattr(obj, "__dict__", ()) for obj in (f, raw) for name in _READS)
    )


# What reading a file goes through: one replaced on the instance (`f.read =
# ...`) changes what the app would send.
_READS = ("read", "readinto", "readall", "read1", "readinto1", "peek")


def _send_file(wrapper: "FileWrapper", resp: Response) -> bool:
    """Hand a real file to the host instead of copying it through Python."""
    f = _raw_file(wrapper.filelike)
    path = getattr(f, "name", None)
    if type(path) is not str or not path.startswith("/"):
        return False
    try:
        if not f.readable():
            return False
        offset = f.tell()
        # The host opens the path again: it must still name the file the
        # app opened, not one moved or linked there since.
        opened, named = os.fstat(f.fileno()), os.stat(path)
    except (OSError, ValueError):
        return False
    if (opened.st_dev, opened.st_ino) != (named.st_dev, named.st_ino):
        return False
    resp.check_body()
    if resp.transport.send_file(resp.status or "", resp.headers, path, offset):
        resp.sent = True
        return True
    return False


def _failed(exc: BaseException, environ: dict, resp: Response, transport: Transport, errors: Any) -> Optional[str]:
    body_input = resp.body_input
    if getattr(body_input, "too_large", False) or isinstance(exc, BodyTooLarge):
        if not resp.sent:
            error_page(transport, "413 Content Too Large", "Request body too large\n")
            return None
        return "request body too large"
    if getattr(body_input, "disconnected", False):
        return None
    _report(errors, environ, "", exc)
    if not resp.sent:
        error_page(transport, "500 Internal Server Error", "Internal Server Error\n")
        return None
    said = f": {exc}" if str(exc) else ""
    return f"app raised after the response head was sent: {type(exc).__name__}{said}"


class FileWrapper:
    """``wsgi.file_wrapper``: iterate a file-like object in blocks."""

    __slots__ = ("filelike", "blksize", "close")

    def __init__(self, filelike: Any, blksize: int = 64 * 1024) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> "FileWrapper":
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


def base_environ(errors: Any = None) -> dict:
    """The keys that are the same for every request of this instance."""
    return {
        "SCRIPT_NAME": "",
        # As gunicorn and waitress name themselves; the same as the
        # import's `os.environ` had, and each instance's has.
        "SERVER_SOFTWARE": "rsgi-wasm",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": errors if errors is not None else sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": FileWrapper,
    }
