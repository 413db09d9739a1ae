"""The ``_ssl`` C extension for CPython on WASI, over the rsgi-wasm host's TLS engine.

CPython for WASI is built without OpenSSL, so the stdlib's ``ssl.py`` has no
``_ssl`` to import; ``guest/_ssl.py`` re-exports this module as that
``_ssl``. The host runs rustls in memory, the way OpenSSL runs over memory
BIOs (WIT interface ``tls`` in wit/wsgi.wit): the guest keeps its own socket,
so the sandbox's allow-list applies at connect as for plain TCP, hands the
host's ``client`` the records it reads and writes the records the host
gives back. ``ssl.SSLSocket``, ``ssl.SSLObject`` and what is built on them
(http.client, urllib, urllib3/requests, httpx, asyncio) run unmodified.

Where it differs from OpenSSL, and why:

- Client side only: rsgi-wasm terminates inbound TLS in the host.
- TLS 1.2 and 1.3 only, with rustls' own cipher suites and key-exchange
  groups (``set_ciphers`` and ``set_ecdh_curve`` are accepted and ignored).
- The name check never falls back to the subject's common name, so
  ``hostname_checks_common_name`` is False; CRL flags are not enforced.
- Contexts hold plain values and each connection sends them as
  ``settings``: a host resource made while the build-time snapshot is taken
  would not exist at run time.
- No session objects, key log, message callback, tls-unique binding or
  post-handshake authentication, and ``get_verified_chain`` is the chain as
  the server sent it: the host engine does not expose more.
- Client keys must be unencrypted PEM: nothing here can decrypt them.

Certificates are decoded here, in pure Python, into the same dicts as the C
module's (``getpeercert``, ``get_ca_certs``).
"""

import binascii
import operator
import os
import re
import warnings
import weakref
from typing import Dict, List, NamedTuple, Optional, Tuple

import _socket

try:
    from componentize_py_types import Err
    from wit_world.imports import tls as host
except ImportError:
    # Outside a wsgi-app component (the unit tests, the wasi-http world) the
    # pure parts still load; `_ssl` imports the binding itself, so `import
    # ssl` fails there as it does without TLS.
    Err = host = None

# urllib3 2 warns (NotOpenSSLWarning) whenever OPENSSL_VERSION does not start
# with "OpenSSL ", which an honest version string cannot; the warning tells
# an app nothing it could act on, so exactly that one is silenced.
warnings.filterwarnings("ignore", message=r"urllib3 v2 only supports OpenSSL 1\.1\.1\+", module="urllib3")

# Honest about the engine, numbered as OpenSSL 1.1.1: the floor libraries
# require (urllib3, pip) before they use `ssl` at all.
OPENSSL_VERSION = "rustls (rsgi-wasm host TLS)"
OPENSSL_VERSION_INFO = (1, 1, 1, 0, 15)
OPENSSL_VERSION_NUMBER = 0x1010100F
_OPENSSL_API_VERSION = OPENSSL_VERSION_INFO
# CPython's default cipher string, for ssl.py; rustls picks its own suites.
_DEFAULT_CIPHERS = "@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"

PROTOCOL_SSLv23 = PROTOCOL_TLS = 2
PROTOCOL_TLSv1 = 3
PROTOCOL_TLSv1_1 = 4
PROTOCOL_TLSv1_2 = 5
PROTOCOL_TLS_CLIENT = 0x10
PROTOCOL_TLS_SERVER = 0x11

PROTO_MINIMUM_SUPPORTED = -2
PROTO_MAXIMUM_SUPPORTED = -1
PROTO_SSLv3 = 0x300
PROTO_TLSv1 = 0x301
PROTO_TLSv1_1 = 0x302
PROTO_TLSv1_2 = 0x303
PROTO_TLSv1_3 = 0x304

# OpenSSL's option bits, as CPython exports them.
OP_ALL = 0x80000050
OP_NO_SSLv2 = 0
OP_NO_SSLv3 = 0x2000000
OP_NO_TLSv1 = 0x4000000
OP_NO_TLSv1_1 = 0x10000000
OP_NO_TLSv1_2 = 0x8000000
OP_NO_TLSv1_3 = 0x20000000
OP_NO_COMPRESSION = 0x20000
OP_NO_TICKET = 0x4000
OP_NO_RENEGOTIATION = 0x40000000
OP_CIPHER_SERVER_PREFERENCE = 0x400000
OP_SINGLE_DH_USE = 0
OP_SINGLE_ECDH_USE = 0
OP_ENABLE_MIDDLEBOX_COMPAT = 0x100000
OP_IGNORE_UNEXPECTED_EOF = 0x80
OP_LEGACY_SERVER_CONNECT = 0x4
OP_ENABLE_KTLS = 0x8

ALERT_DESCRIPTION_CLOSE_NOTIFY = 0
ALERT_DESCRIPTION_UNEXPECTED_MESSAGE = 10
ALERT_DESCRIPTION_BAD_RECORD_MAC = 20
ALERT_DESCRIPTION_RECORD_OVERFLOW = 22
ALERT_DESCRIPTION_DECOMPRESSION_FAILURE = 30
ALERT_DESCRIPTION_HANDSHAKE_FAILURE = 40
ALERT_DESCRIPTION_BAD_CERTIFICATE = 42
ALERT_DESCRIPTION_UNSUPPORTED_CERTIFICATE = 43
ALERT_DESCRIPTION_CERTIFICATE_REVOKED = 44
ALERT_DESCRIPTION_CERTIFICATE_EXPIRED = 45
ALERT_DESCRIPTION_CERTIFICATE_UNKNOWN = 46
ALERT_DESCRIPTION_ILLEGAL_PARAMETER = 47
ALERT_DESCRIPTION_UNKNOWN_CA = 48
ALERT_DESCRIPTION_ACCESS_DENIED = 49
ALERT_DESCRIPTION_DECODE_ERROR = 50
ALERT_DESCRIPTION_DECRYPT_ERROR = 51
ALERT_DESCRIPTION_PROTOCOL_VERSION = 70
ALERT_DESCRIPTION_INSUFFICIENT_SECURITY = 71
ALERT_DESCRIPTION_INTERNAL_ERROR = 80
ALERT_DESCRIPTION_USER_CANCELLED = 90
ALERT_DESCRIPTION_NO_RENEGOTIATION = 100
ALERT_DESCRIPTION_UNSUPPORTED_EXTENSION = 110
ALERT_DESCRIPTION_CERTIFICATE_UNOBTAINABLE = 111
ALERT_DESCRIPTION_UNRECOGNIZED_NAME = 112
ALERT_DESCRIPTION_BAD_CERTIFICATE_STATUS_RESPONSE = 113
ALERT_DESCRIPTION_BAD_CERTIFICATE_HASH_VALUE = 114
ALERT_DESCRIPTION_UNKNOWN_PSK_IDENTITY = 115

SSL_ERROR_SSL = 1
SSL_ERROR_WANT_READ = 2
SSL_ERROR_WANT_WRITE = 3
SSL_ERROR_WANT_X509_LOOKUP = 4
SSL_ERROR_SYSCALL = 5
SSL_ERROR_ZERO_RETURN = 6
SSL_ERROR_WANT_CONNECT = 7
SSL_ERROR_EOF = 8
SSL_ERROR_INVALID_ERROR_CODE = 10

VERIFY_DEFAULT = 0
VERIFY_CRL_CHECK_LEAF = 0x4
VERIFY_CRL_CHECK_CHAIN = 0xC
VERIFY_X509_STRICT = 0x20
VERIFY_ALLOW_PROXY_CERTS = 0x40
VERIFY_X509_TRUSTED_FIRST = 0x8000
VERIFY_X509_PARTIAL_CHAIN = 0x80000

CERT_NONE = 0
CERT_OPTIONAL = 1
CERT_REQUIRED = 2

HOSTFLAG_ALWAYS_CHECK_SUBJECT = 0x1
HOSTFLAG_NO_WILDCARDS = 0x2
HOSTFLAG_NO_PARTIAL_WILDCARDS = 0x4
HOSTFLAG_MULTI_LABEL_WILDCARDS = 0x8
HOSTFLAG_SINGLE_LABEL_SUBDOMAINS = 0x10
HOSTFLAG_NEVER_CHECK_SUBJECT = 0x20

ENCODING_PEM = 1
ENCODING_DER = 2

HAS_SNI = True
HAS_ECDH = True
HAS_ALPN = True
HAS_NPN = False
HAS_SSLv2 = False
HAS_SSLv3 = False
HAS_TLSv1 = False
HAS_TLSv1_1 = False
HAS_TLSv1_2 = True
HAS_TLSv1_3 = True
HAS_TLS_UNIQUE = False
HAS_PSK = False
HAS_PHA = False

# What a fresh context has, as CPython sets it up.
_DEFAULT_OPTIONS = OP_ALL | OP_NO_SSLv3 | OP_NO_COMPRESSION | OP_CIPHER_SERVER_PREFERENCE | OP_ENABLE_MIDDLEBOX_COMPAT
_OP_NO_VERSIONS = OP_NO_SSLv3 | OP_NO_TLSv1 | OP_NO_TLSv1_1 | OP_NO_TLSv1_2 | OP_NO_TLSv1_3
# The protocols a client context may name (the others were never TLS or
# are server-only), and the deprecated ones' names.
_CLIENT_PROTOCOLS = {
    PROTOCOL_TLS: "PROTOCOL_TLS",
    PROTOCOL_TLSv1: "PROTOCOL_TLSv1",
    PROTOCOL_TLSv1_1: "PROTOCOL_TLSv1_1",
    PROTOCOL_TLSv1_2: "PROTOCOL_TLSv1_2",
    PROTOCOL_TLS_CLIENT: "PROTOCOL_TLS_CLIENT",
}
_FIXED_VERSION = {PROTOCOL_TLSv1: PROTO_TLSv1, PROTOCOL_TLSv1_1: PROTO_TLSv1_1, PROTOCOL_TLSv1_2: PROTO_TLSv1_2}
_OLD_VERSIONS = {PROTO_SSLv3: "SSLv3", PROTO_TLSv1: "TLSv1", PROTO_TLSv1_1: "TLSv1_1"}

# Records are read 16 KiB (one full record) at a time. Plaintext crosses in
# pieces of at most 64 KiB: what the host buffers before `transmit`, and the
# most one `read` returns.
_RECV_SIZE = 16 * 1024
_PIECE = 64 * 1024

# rustls reports IANA names; OpenSSL's are what `cipher()` has always shown
# (the TLS 1.3 suites have the same name in both).
_OPENSSL_CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}

# OpenSSL's (NID, short name, long name) of the OIDs certificates name their
# attributes with, plus the two purposes ssl.py asks for.
_OBJECTS: Dict[str, Tuple[int, str, str]] = {
    "2.5.4.3": (13, "CN", "commonName"),
    "2.5.4.4": (100, "SN", "surname"),
    "2.5.4.5": (105, "serialNumber", "serialNumber"),
    "2.5.4.6": (14, "C", "countryName"),
    "2.5.4.7": (15, "L", "localityName"),
    "2.5.4.8": (16, "ST", "stateOrProvinceName"),
    "2.5.4.9": (660, "street", "streetAddress"),
    "2.5.4.10": (17, "O", "organizationName"),
    "2.5.4.11": (18, "OU", "organizationalUnitName"),
    "2.5.4.12": (106, "title", "title"),
    "2.5.4.13": (107, "description", "description"),
    "2.5.4.15": (860, "businessCategory", "businessCategory"),
    "2.5.4.17": (661, "postalCode", "postalCode"),
    "2.5.4.41": (173, "name", "name"),
    "2.5.4.42": (99, "GN", "givenName"),
    "2.5.4.43": (101, "initials", "initials"),
    "2.5.4.44": (509, "generationQualifier", "generationQualifier"),
    "2.5.4.46": (174, "dnQualifier", "dnQualifier"),
    "2.5.4.65": (510, "pseudonym", "pseudonym"),
    "2.5.4.97": (1089, "organizationIdentifier", "organizationIdentifier"),
    "1.2.840.113549.1.9.1": (48, "emailAddress", "emailAddress"),
    "0.9.2342.19200300.100.1.1": (458, "UID", "userId"),
    "0.9.2342.19200300.100.1.25": (391, "DC", "domainComponent"),
    "1.3.6.1.4.1.311.60.2.1.1": (955, "jurisdictionL", "jurisdictionLocalityName"),
    "1.3.6.1.4.1.311.60.2.1.2": (956, "jurisdictionST", "jurisdictionStateOrProvinceName"),
    "1.3.6.1.4.1.311.60.2.1.3": (957, "jurisdictionC", "jurisdictionCountryName"),
    "1.3.6.1.5.5.7.3.1": (129, "serverAuth", "TLS Web Server Authentication"),
    "1.3.6.1.5.5.7.3.2": (130, "clientAuth", "TLS Web Client Authentication"),
}
_DOTTED = re.compile(r"\d+(\.\d+)+")


class SSLError(OSError):
    """An error occurred in the SSL implementation."""

    __module__ = "ssl"

    def __str__(self) -> str:
        # As the C module: the message alone, not OSError's "[Errno n] ...".
        return self.strerror if isinstance(self.strerror, str) else str(self.args)


class SSLZeroReturnError(SSLError):
    """SSL/TLS session closed cleanly."""

    __module__ = "ssl"


class SSLWantReadError(SSLError):
    """Non-blocking SSL socket needs to read more data before the requested operation can be completed."""

    __module__ = "ssl"


class SSLWantWriteError(SSLError):
    """Non-blocking SSL socket needs to write more data before the requested operation can be completed."""

    __module__ = "ssl"


class SSLSyscallError(SSLError):
    """System error when attempting SSL operation."""

    __module__ = "ssl"


class SSLEOFError(SSLError):
    """SSL/TLS connection terminated abruptly."""

    __module__ = "ssl"


class SSLCertVerificationError(SSLError, ValueError):
    """A certificate could not be verified."""

    __module__ = "ssl"


def _error(
    cls: type,
    text: str,
    reason: Optional[str] = None,
    library: Optional[str] = "SSL",
    code: int = SSL_ERROR_SSL,
) -> SSLError:
    """An exception shaped like the C module's: args ``(code, message)``,
    ``library`` and ``reason``, the message worded as OpenSSL's."""
    if library and reason:
        text = f"[{library}: {reason}] {text}"
    elif library:
        text = f"[{library}] {text}"
    # CPython ends every message with its C source position; a fixed one
    # keeps the shape people and log filters know.
    error = cls(code, text + " (_ssl.c:1000)")
    error.library, error.reason = library, reason
    return error


def _want_read() -> SSLError:
    """What a non-blocking transport with no records yet raises."""
    return _error(SSLWantReadError, "The operation did not complete (read)", library=None, code=SSL_ERROR_WANT_READ)


def _want_write() -> SSLError:
    """What a non-blocking socket that is full raises."""
    return _error(SSLWantWriteError, "The operation did not complete (write)", library=None, code=SSL_ERROR_WANT_WRITE)


def _eof_error() -> SSLError:
    """The transport ended without close_notify (``suppress_ragged_eofs`` turns it into b'')."""
    return _error(SSLEOFError, "EOF occurred in violation of protocol", "UNEXPECTED_EOF_WHILE_READING", code=SSL_ERROR_EOF)


def _server_side_error() -> SSLError:
    """What asking for server-side TLS raises."""
    return _error(
        SSLError,
        "server-side TLS is not available in the sandbox: rsgi-wasm terminates "
        "inbound TLS in the host (rsgi-wasm serve --certfile/--keyfile)",
        library=None,
    )


def _host_error(err, eof: bool) -> SSLError:
    """The ``ssl`` exception for the host's ``error`` variant ``err``; once
    the transport reached its end, a protocol error is that early end."""
    if isinstance(err, host.Error_Certificate):
        message = err.value.message
        error = _error(SSLCertVerificationError, "certificate verify failed: " + message, "CERTIFICATE_VERIFY_FAILED")
        error.verify_code, error.verify_message = err.value.code, message
        return error
    if eof and isinstance(err, host.Error_Protocol):
        return _eof_error()
    return _error(SSLError, err.value)


def _deprecated(message: str, depth: int) -> None:
    """The DeprecationWarning CPython gives, pointing at the app's line
    ``depth`` frames above the caller (past ssl.py's wrappers)."""
    warnings.warn(message, DeprecationWarning, stacklevel=depth + 1)


# --- DER and X.509 -----------------------------------------------------

_SEQUENCE, _BOOLEAN = 0x30, 0x01
_UTC_TIME = 0x17
_DIR_NAME, _IP_ADDRESS, _REGISTERED_ID, _URI = 0xA4, 0x87, 0x88, 0x86
_STRING_NAMES = {0x81: "email", 0x82: "DNS", _URI: "URI"}
_UNSUPPORTED_NAMES = {0xA0: "othername", 0xA3: "X400Name", 0xA5: "EdiPartyName"}
# The otherName types OpenSSL 3 prints, and the string type each must have.
_OTHER_NAMES = {
    "1.3.6.1.5.5.7.8.9": ("SmtpUTF8Mailbox", 0x0C),
    "1.3.6.1.5.5.7.8.5": ("XmppAddr", 0x0C),
    "1.3.6.1.5.5.7.8.7": ("SRVName", 0x16),
    "1.3.6.1.4.1.311.20.2.3": ("UPN", 0x0C),
    "1.3.6.1.5.5.7.8.8": ("NAIRealm", 0x0C),
}
# ASN.1 string types that are not one byte per character; OpenSSL reads the
# rest (Printable, IA5, T61, ...) as latin-1.
_CODECS = {0x0C: "utf-8", 0x1C: "utf-32-be", 0x1E: "utf-16-be"}
_SAN, _KEY_USAGE, _BASIC_CONSTRAINTS, _CRL_POINTS = "2.5.29.17", "2.5.29.15", "2.5.29.19", "2.5.29.31"
_AUTHORITY_INFO, _OCSP, _CA_ISSUERS = "1.3.6.1.5.5.7.1.1", "1.3.6.1.5.5.7.48.1", "1.3.6.1.5.5.7.48.2"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _tlv(data: bytes, pos: int) -> Tuple[int, int, int]:
    """The DER element at ``pos``: its tag and where its content starts and ends."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        # DER has no indefinite lengths, and nothing here is 4 GiB.
        if not 0 < size <= 4 or pos + size > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + size], "big")
        pos += size
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _content(der: bytes) -> bytes:
    """The content of the DER element that starts ``der``."""
    _, start, end = _tlv(der, 0)
    return der[start:end]


def _children(content: bytes) -> List[Tuple[int, bytes]]:
    """The elements a constructed DER value holds, as (tag, content)."""
    items, pos = [], 0
    while pos < len(content):
        tag, start, end = _tlv(content, pos)
        items.append((tag, content[start:end]))
        pos = end
    return items


def _split_der(data: bytes) -> List[bytes]:
    """Concatenated DER certificates, one ``bytes`` each (ValueError if
    something else is in between)."""
    certs, pos = [], 0
    while pos < len(data):
        tag, _, end = _tlv(data, pos)
        if tag != _SEQUENCE:
            raise ValueError("not a DER certificate")
        certs.append(data[pos:end])
        pos = end
    return certs


def _oid(content: bytes) -> str:
    """An OBJECT IDENTIFIER's content as dotted text."""
    arcs, value = [], 0
    for byte in content:
        value = value << 7 | byte & 0x7F
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs:
        raise ValueError("empty OID")
    top = min(arcs[0] // 40, 2)
    return ".".join(map(str, [top, arcs[0] - 40 * top] + arcs[1:]))


def _object_name(oid: str) -> str:
    """OpenSSL's long name for ``oid``, or the OID itself when it has none."""
    known = _OBJECTS.get(oid)
    return known[2] if known else oid


def _text(tag: int, content: bytes) -> str:
    """An ASN.1 string's characters."""
    return content.decode(_CODECS.get(tag, "latin-1"), "replace")


def _name(content: bytes) -> tuple:
    """An X.509 Name as the C module shows it: per RDN, (attribute, value) pairs."""
    rdns = []
    for _, rdn in _children(content):
        pairs = []
        for _, attribute in _children(rdn):
            (_, oid), (tag, value) = _children(attribute)
            pairs.append((_object_name(_oid(oid)), _text(tag, value)))
        rdns.append(tuple(pairs))
    return tuple(rdns)


def _time(tag: int, content: bytes) -> str:
    """An X.509 time as OpenSSL's ``ASN1_TIME_print`` writes it (``Jun  1 12:00:00 2026 GMT``)."""
    year_digits = 2 if tag == _UTC_TIME else 4
    match = re.fullmatch(rf"(\d{{{year_digits}}})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\.\d+)?Z", content.decode("latin-1"))
    if match is None or not 1 <= int(match[2]) <= 12:
        return "Bad time value"
    year, month, day, hour, minute, second = map(int, match.groups()[:6])
    if year_digits == 2:  # RFC 5280: UTCTime years 50..99 are 19xx
        year += 1900 if year >= 50 else 2000
    return f"{_MONTHS[month - 1]} {day:2d} {hour:02d}:{minute:02d}:{second:02d}{match[7] or ''} {year} GMT"


def _serial(content: bytes) -> str:
    """An INTEGER as OpenSSL's ``i2a_ASN1_INTEGER``: upper-case hex, whole bytes, ``-`` if negative."""
    value = int.from_bytes(content, "big", signed=True)
    digits = format(abs(value), "X")
    return ("-" if value < 0 else "") + digits.zfill(len(digits) + len(digits) % 2)


def _ip(content: bytes) -> str:
    """An iPAddress name as the C module writes it (IPv6 unabridged, upper-case)."""
    if len(content) == 4:
        return ".".join(map(str, content))
    if len(content) == 16:
        return ":".join("%X" % int.from_bytes(content[i : i + 2], "big") for i in range(0, 16, 2))
    return "<invalid>"


def _general_name(tag: int, content: bytes) -> Tuple[str, object]:
    """One GeneralName (a subjectAltName entry) as the C module renders it."""
    if tag in _STRING_NAMES:
        return _STRING_NAMES[tag], _text(tag, content)
    if tag == _IP_ADDRESS:
        return "IP Address", _ip(content)
    if tag == _DIR_NAME:
        return "DirName", _name(_content(content))
    if tag == _REGISTERED_ID:
        return "Registered ID", _object_name(_oid(content))
    if tag == 0xA0:  # otherName: type-id, [0] EXPLICIT value
        (_, type_id), (_, value) = _children(content)
        label, string_type = _OTHER_NAMES.get(_oid(type_id), (None, None))
        value_type, text = _children(value)[0]
        if label and value_type == string_type:
            return "othername", f"{label}:{_text(value_type, text)}"
    return _UNSUPPORTED_NAMES.get(tag, "othername"), "<unsupported>"


def _crl_uris(content: bytes) -> Tuple[str, ...]:
    """The URIs of a cRLDistributionPoints value's full names."""
    uris = []
    for _, point in _children(content):
        for tag, name in _children(point):
            if tag != 0xA0:  # distributionPoint (not reasons, cRLIssuer)
                continue
            for kind, full_name in _children(name):
                if kind == 0xA0:  # fullName (not nameRelativeToCRLIssuer)
                    uris += [_text(t, uri) for t, uri in _children(full_name) if t == _URI]
    return tuple(uris)


class _Tbs(NamedTuple):
    """What ``getpeercert`` shows of a certificate's TBSCertificate, as DER contents."""

    version: int
    serial: bytes
    issuer: bytes
    validity: List[Tuple[int, bytes]]
    subject: bytes
    extensions: Dict[str, bytes]


def _tbs(der: bytes) -> _Tbs:
    """The parts of certificate ``der`` (SSLError if it is not one)."""
    try:
        fields = _children(_children(_content(der))[0][1])
        version = 1
        if fields[0][0] == 0xA0:  # [0] EXPLICIT version, absent for v1
            version = int.from_bytes(_content(fields[0][1]), "big") + 1
            fields = fields[1:]
        extensions = {}
        for tag, value in fields[6:]:
            if tag == 0xA3:  # [3] EXPLICIT extensions
                for _, extension in _children(_content(value)):
                    parts = _children(extension)  # id, critical (optional), value
                    extensions[_oid(parts[0][1])] = parts[-1][1]
        serial, _, issuer, validity, subject = (content for _, content in fields[:5])
        validity = _children(validity)
        if len(validity) != 2:
            raise ValueError("bad validity")
        return _Tbs(version, serial, issuer, validity, subject, extensions)
    except (ValueError, IndexError) as e:
        raise _error(SSLError, f"not a valid X.509 certificate: {e}", library="X509") from None


def _decode_cert(der: bytes) -> dict:
    """Certificate ``der`` as ``getpeercert()`` shows it, key for key as CPython's C module."""
    tbs = _tbs(der)
    try:
        info = {
            "subject": _name(tbs.subject),
            "issuer": _name(tbs.issuer),
            "version": tbs.version,
            "serialNumber": _serial(tbs.serial),
            "notBefore": _time(*tbs.validity[0]),
            "notAfter": _time(*tbs.validity[1]),
        }
        extensions = tbs.extensions
        if _SAN in extensions:
            info["subjectAltName"] = tuple(_general_name(*name) for name in _children(_content(extensions[_SAN])))
        if _AUTHORITY_INFO in extensions:
            access = [_children(item) for _, item in _children(_content(extensions[_AUTHORITY_INFO]))]
            for method, key in ((_OCSP, "OCSP"), (_CA_ISSUERS, "caIssuers")):
                uris = tuple(_text(tag, where) for (_, how), (tag, where) in access if tag == _URI and _oid(how) == method)
                if uris:
                    info[key] = uris
        if _CRL_POINTS in extensions:
            uris = _crl_uris(_content(extensions[_CRL_POINTS]))
            if uris:
                info["crlDistributionPoints"] = uris
        return info
    except (ValueError, IndexError) as e:
        raise _error(SSLError, f"not a valid X.509 certificate: {e}", library="X509") from None


def _is_ca(der: bytes) -> bool:
    """Whether OpenSSL's ``X509_check_ca`` counts ``der`` as a CA (``get_ca_certs``)."""
    tbs = _tbs(der)
    usage = tbs.extensions.get(_KEY_USAGE)
    if usage is not None:
        bits = _content(usage)  # BIT STRING: unused-bit count, then bits
        if len(bits) < 2 or not bits[1] & 0x04:  # keyCertSign
            return False
    constraints = tbs.extensions.get(_BASIC_CONSTRAINTS)
    if constraints is not None:
        fields = _children(_content(constraints))  # cA (DEFAULT FALSE), pathLen
        return bool(fields) and fields[0] == (_BOOLEAN, b"\xff")
    # Without basicConstraints: a key usage allowing certificate signing, or
    # a self-signed version 1 root.
    return usage is not None or (tbs.version == 1 and tbs.subject == tbs.issuer)


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)
_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----.*?-----END \1-----", re.S)


def _pem_certs(data: bytes) -> List[bytes]:
    """The DER certificates in PEM text; other blocks (CRLs, keys) are skipped."""
    certs = []
    for body in _PEM_CERT.findall(data):
        try:
            der = binascii.a2b_base64(body)
            if _split_der(der) != [der]:
                raise ValueError
        except ValueError:
            raise _error(SSLError, "a CERTIFICATE block does not hold one DER certificate", library="PEM") from None
        certs.append(der)
    return certs


def _pem(der: bytes) -> str:
    """``der`` as a PEM CERTIFICATE block, 64 columns like OpenSSL's."""
    text = binascii.b2a_base64(der, newline=False).decode("ascii")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def _read(path) -> bytes:
    """A file's bytes (``path``: str, bytes or os.PathLike, as the C module takes)."""
    with open(os.fspath(path), "rb") as f:
        return f.read()


# --- Module functions --------------------------------------------------


def RAND_status() -> bool:
    """Whether the random generator is seeded: always (the host's randomness)."""
    return True


def RAND_add(string, entropy) -> None:
    """Accepted and ignored: ``os.urandom`` is the host's randomness and needs no seeding."""


def RAND_bytes(n: int) -> bytes:
    """``n`` cryptographically strong random bytes."""
    if n < 0:
        raise ValueError("num must be positive")
    return os.urandom(n)


def txt2obj(txt: str, name: bool = False) -> Tuple[int, str, str, str]:
    """(NID, short name, long name, OID) for a dotted OID, or with ``name`` also a short or long name."""
    for oid, (nid, short, long) in _OBJECTS.items():
        if txt == oid or name and txt in (short, long):
            return nid, short, long, oid
    raise ValueError("Unknown object" if _DOTTED.fullmatch(txt) else f"unknown object '{txt}'")


def nid2obj(nid: int) -> Tuple[int, str, str, str]:
    """(NID, short name, long name, OID) for an OpenSSL NID."""
    if nid < 0:
        raise ValueError("NID must be positive.")
    for oid, known in _OBJECTS.items():
        if known[0] == nid:
            return known + (oid,)
    raise ValueError(f"unknown NID {nid}")


def get_default_verify_paths() -> Tuple[str, str, str, str]:
    """The variables that move OpenSSL's default CA locations, and the
    locations: none here (the host's roots are not files)."""
    return "SSL_CERT_FILE", "", "SSL_CERT_DIR", ""


def _test_decode_cert(path) -> dict:
    """The first certificate of PEM file ``path``, decoded (CPython's test helper)."""
    try:
        data = _read(path)
    except OSError:
        raise SSLError("Can't open file") from None
    certs = _pem_certs(data)
    if not certs:
        raise SSLError("Error decoding PEM-encoded file")
    return _decode_cert(certs[0])


# --- Objects -----------------------------------------------------------


class MemoryBIO:
    """A byte buffer between TLS and a transport the app moves itself (``ssl.MemoryBIO``)."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._eof = False

    @property
    def pending(self) -> int:
        """Bytes waiting to be read."""
        return len(self._data)

    @property
    def eof(self) -> bool:
        """``write_eof`` was called and every byte has been read."""
        return self._eof and not self._data

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all of them when negative)."""
        if size < 0 or size > len(self._data):
            size = len(self._data)
        data = bytes(self._data[:size])
        del self._data[:size]
        return data

    def write(self, b) -> int:
        """Append the bytes-like ``b``; returns its length."""
        view = memoryview(b)
        if self._eof:
            raise SSLError("cannot write() after write_eof()")
        self._data += view
        return view.nbytes

    def write_eof(self) -> None:
        """Mark the end of the stream: once drained, reads see end of file."""
        self._eof = True


class SSLSession:
    """A TLS session to resume (``ssl.SSLSession``): the host engine does
    not resume sessions (a session cache would be state shared between an
    app's instances), so none is ever handed out."""


class Certificate:
    """One certificate of a peer's chain (``get_verified_chain`` and ``get_unverified_chain``)."""

    def __init__(self, der: bytes) -> None:
        self._der = der

    def public_bytes(self, format: int = ENCODING_PEM):
        """The certificate as DER bytes, or PEM text."""
        if format == ENCODING_DER:
            return self._der
        if format == ENCODING_PEM:
            return _pem(self._der)
        raise ValueError("Unsupported format")

    def get_info(self) -> dict:
        """The certificate decoded as ``getpeercert()`` shows it."""
        return _decode_cert(self._der)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Certificate):
            return NotImplemented
        return self._der == other._der

    def __hash__(self) -> int:
        return hash(self._der)


class _SSLContext:
    """The C module's ``_SSLContext``: what one ``ssl.SSLContext`` asks of its
    connections, kept as plain values and sent with each connection."""

    def __new__(cls, protocol: int):
        protocol = operator.index(protocol)
        if protocol == PROTOCOL_TLS_SERVER:
            raise _server_side_error()
        if protocol not in _CLIENT_PROTOCOLS:
            raise ValueError(f"invalid or unsupported protocol version {protocol}")
        if protocol != PROTOCOL_TLS_CLIENT:
            _deprecated(f"ssl.{_CLIENT_PROTOCOLS[protocol]} is deprecated", 3)
        self = super().__new__(cls)
        client = protocol == PROTOCOL_TLS_CLIENT
        self._protocol = protocol
        self._verify_mode = CERT_REQUIRED if client else CERT_NONE
        self._check_hostname = client
        self._options = _DEFAULT_OPTIONS
        self._minimum_version = PROTO_MINIMUM_SUPPORTED if protocol in _FIXED_VERSION else PROTO_TLSv1_2
        self._maximum_version = PROTO_MAXIMUM_SUPPORTED
        self._verify_flags = VERIFY_X509_TRUSTED_FIRST
        self._message_callback = None
        self._alpn: List[str] = []
        self._ca_certs: Dict[bytes, None] = {}  # DER, in load order, without repeats
        self._default_roots = False
        self._client_chain = self._client_key = b""
        # Read by ssl.py's hostname_checks_common_name: the host's name check
        # never uses the common name.
        self._host_flags = HOSTFLAG_NO_PARTIAL_WILDCARDS | HOSTFLAG_NEVER_CHECK_SUBJECT
        self.post_handshake_auth = False
        # Kept for apps that read it back; the host does not export secrets.
        self.keylog_filename = None
        return self

    @property
    def protocol(self) -> int:
        """The PROTOCOL_* the context was made with."""
        return self._protocol

    @property
    def verify_mode(self) -> int:
        """CERT_NONE, CERT_OPTIONAL or CERT_REQUIRED (a client verifies for both of the last two)."""
        return self._verify_mode

    @verify_mode.setter
    def verify_mode(self, value) -> None:
        value = operator.index(value)
        if value not in (CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED):
            raise ValueError("invalid value for verify_mode")
        if value == CERT_NONE and self._check_hostname:
            raise ValueError("Cannot set verify_mode to CERT_NONE when check_hostname is enabled.")
        self._verify_mode = value

    @property
    def check_hostname(self) -> bool:
        """Require the certificate to name ``server_hostname``; turning it on requires verification."""
        return self._check_hostname

    @check_hostname.setter
    def check_hostname(self, value) -> None:
        if value and self._verify_mode == CERT_NONE:
            self._verify_mode = CERT_REQUIRED
        self._check_hostname = bool(value)

    @property
    def options(self) -> int:
        """OP_* bits; of those that change anything here, OP_NO_TLSv1_2 and OP_NO_TLSv1_3."""
        return self._options

    @options.setter
    def options(self, value) -> None:
        value = operator.index(value)
        if value & ~self._options & _OP_NO_VERSIONS:
            _deprecated("ssl.OP_NO_SSL*/ssl.OP_NO_TLS* options are deprecated", 3)
        self._options = value

    @property
    def verify_flags(self) -> int:
        """VERIFY_* bits, kept: rustls always verifies like VERIFY_X509_PARTIAL_CHAIN and checks no CRLs."""
        return self._verify_flags

    @verify_flags.setter
    def verify_flags(self, value) -> None:
        self._verify_flags = operator.index(value)

    @property
    def minimum_version(self) -> int:
        """The oldest TLS version allowed (PROTO_*); below TLS 1.2 means TLS 1.2."""
        return self._minimum_version

    @minimum_version.setter
    def minimum_version(self, value) -> None:
        value = self._checked_version(value)
        self._minimum_version = PROTO_TLSv1_3 if value == PROTO_MAXIMUM_SUPPORTED else value

    @property
    def maximum_version(self) -> int:
        """The newest TLS version allowed (PROTO_*); below TLS 1.2 makes connecting fail."""
        return self._maximum_version

    @maximum_version.setter
    def maximum_version(self, value) -> None:
        value = self._checked_version(value)
        self._maximum_version = PROTO_TLSv1_2 if value == PROTO_MINIMUM_SUPPORTED else value

    def _checked_version(self, value) -> int:
        """A version bound as the C module accepts it."""
        if self._protocol in _FIXED_VERSION:
            raise ValueError("The context's protocol doesn't support modification of highest and lowest version.")
        value = operator.index(value)
        if value in _OLD_VERSIONS:
            _deprecated(f"ssl.TLSVersion.{_OLD_VERSIONS[value]} is deprecated", 4)
        elif value not in (PROTO_MINIMUM_SUPPORTED, PROTO_MAXIMUM_SUPPORTED, PROTO_TLSv1_2, PROTO_TLSv1_3):
            raise ValueError(f"Unsupported TLS/SSL version 0x{value:x}")
        return value

    @property
    def _msg_callback(self):
        """Kept for ssl.py, never called: the host engine does not report TLS messages."""
        return self._message_callback

    @_msg_callback.setter
    def _msg_callback(self, callback) -> None:
        self._message_callback = callback

    @property
    def sni_callback(self) -> None:
        """Always None: SNI callbacks serve server-side TLS."""
        return None

    @sni_callback.setter
    def sni_callback(self, callback) -> None:
        if callback is None:
            return
        if self._protocol == PROTOCOL_TLS_CLIENT:
            raise ValueError("sni_callback cannot be set on TLS_CLIENT context")
        if not callable(callback):
            raise TypeError("not a callable object")
        raise _server_side_error()

    @property
    def security_level(self) -> int:
        """OpenSSL's security level 2, which rustls' suites and key sizes exceed."""
        return 2

    @property
    def num_tickets(self) -> int:
        """Session tickets a server sends: a server-side setting."""
        return 2

    @num_tickets.setter
    def num_tickets(self, value: int) -> None:
        if value < 0:
            raise ValueError("value must be non-negative")
        raise ValueError("SSLContext is not a server context.")

    def set_ciphers(self, cipherlist: str) -> None:
        """Accepted and ignored: rustls offers only its own modern AEAD suites."""
        if not isinstance(cipherlist, str):
            raise TypeError(f"set_ciphers() argument must be str, not {type(cipherlist).__name__}")

    def set_ecdh_curve(self, name) -> None:
        """Accepted and ignored: rustls picks the key-exchange group (X25519, P-256, P-384)."""

    def _set_alpn_protocols(self, protos) -> None:
        """Offer these ALPN protocols (length-prefixed names, as ssl.py packs them)."""
        data = bytes(protos)
        names, pos = [], 0
        while pos < len(data):
            names.append(data[pos + 1 : pos + 1 + data[pos]].decode("ascii"))
            pos += 1 + data[pos]
        self._alpn = names

    def _set_npn_protocols(self, protos) -> None:
        """NPN was replaced by ALPN and rustls never had it (HAS_NPN is False)."""
        raise NotImplementedError("The NPN extension is not available; use ALPN")

    def load_verify_locations(self, cafile=None, capath=None, cadata=None) -> None:
        """Trust the CA certificates in ``cadata`` (PEM text, or DER bytes), ``cafile`` (PEM) and every PEM file in ``capath``."""
        if cafile is None and capath is None and cadata is None:
            raise TypeError("cafile, capath and cadata cannot be all omitted")
        if cadata is not None:
            self._ca_certs.update(dict.fromkeys(_cadata_certs(cadata)))
        if cafile is not None:
            self._load_cafile(cafile)
        if capath is not None:
            self._load_capath(capath)

    def _load_cafile(self, cafile) -> None:
        """Trust the certificates of PEM file ``cafile``."""
        certs = _pem_certs(_read(cafile))
        if not certs:
            raise _error(SSLError, "no certificate or crl found", "NO_CERTIFICATE_OR_CRL_FOUND", library="X509")
        self._ca_certs.update(dict.fromkeys(certs))

    def _load_capath(self, capath) -> None:
        """Trust the certificates of every PEM file in directory ``capath``."""
        # OpenSSL only looks certificates up there during handshakes, so a
        # missing directory or a file that is not PEM never fails this call.
        try:
            names = sorted(os.listdir(capath))
        except OSError:
            return
        for name in names:
            try:
                self._ca_certs.update(dict.fromkeys(_pem_certs(_read(os.path.join(capath, name)))))
            except OSError:
                continue

    def set_default_verify_paths(self) -> None:
        """Trust the host's roots (Mozilla's), and like OpenSSL the files
        ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` name."""
        self._default_roots = True
        cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
        if cafile:
            try:
                self._load_cafile(cafile)
            except OSError:
                pass  # as OpenSSL: a default location it cannot read is skipped
        if capath:
            self._load_capath(capath)

    def load_cert_chain(self, certfile, keyfile=None, password=None) -> None:
        """Present the PEM chain in ``certfile`` and its unencrypted PEM key
        (``keyfile``, else also ``certfile``) when the server asks."""
        if password is not None and not callable(password) and not isinstance(password, (str, bytes, bytearray)):
            raise TypeError("password should be a string or callable")
        chain_pem = _read(certfile)
        chain = _pem_certs(chain_pem)
        if not chain:
            raise _error(SSLError, "PEM lib: no certificate in certfile")
        key = _PEM_KEY.search(chain_pem if keyfile is None else _read(keyfile))
        if key is None:
            raise _error(SSLError, "PEM lib: no private key found")
        if key[1].startswith(b"ENCRYPTED") or b"Proc-Type: 4,ENCRYPTED" in key[0]:
            # The key crosses to the host as PEM and rustls cannot decrypt
            # it; nothing in the guest can either (no OpenSSL).
            raise _error(
                SSLError,
                "encrypted private keys are not supported by the host TLS engine; "
                "decrypt it first (openssl pkey -in KEY -out PLAIN.key)",
            )
        self._client_chain = "".join(map(_pem, chain)).encode("ascii")
        self._client_key = key[0]

    def cert_store_stats(self) -> Dict[str, int]:
        """How many certificates ``load_verify_locations`` added, and how many of them are CAs."""
        return {"x509": len(self._ca_certs), "crl": 0, "x509_ca": sum(map(_is_ca, self._ca_certs))}

    def get_ca_certs(self, binary_form: bool = False) -> list:
        """The loaded CA certificates, decoded (or DER with ``binary_form``); not the host's roots."""
        return [der if binary_form else _decode_cert(der) for der in self._ca_certs if _is_ca(der)]

    def session_stats(self) -> Dict[str, int]:
        """OpenSSL's session-cache counters: all zero, the host keeps the cache."""
        keys = ("number", "connect", "connect_good", "connect_renegotiate", "accept", "accept_good")
        keys += ("accept_renegotiate", "hits", "misses", "timeouts", "cache_full")
        return dict.fromkeys(keys, 0)

    def _settings(self) -> dict:
        """The host ``settings`` record's fields for one connection (SSLError
        when the version bounds leave neither TLS 1.2 nor 1.3)."""
        fixed = _FIXED_VERSION.get(self._protocol)
        low = max(fixed or self._minimum_version, PROTO_TLSv1_2)
        high = fixed or (PROTO_TLSv1_3 if self._maximum_version == PROTO_MAXIMUM_SUPPORTED else self._maximum_version)
        if self._options & OP_NO_TLSv1_2:
            low = max(low, PROTO_TLSv1_3)
        if self._options & OP_NO_TLSv1_3:
            high = min(high, PROTO_TLSv1_2)
        if low > high:
            raise _error(SSLError, "no protocols available: only TLS 1.2 and 1.3 exist here", "NO_PROTOCOLS_AVAILABLE")
        return {
            "verify": self._verify_mode != CERT_NONE,
            "check_hostname": self._check_hostname,
            "default_roots": self._default_roots,
            "ca_certs": list(self._ca_certs),
            "alpn": list(self._alpn),
            "min_version": low,
            "max_version": high,
            "client_chain": self._client_chain,
            "client_key": self._client_key,
        }

    def _wrap_socket(self, sock, server_side, server_hostname=None, *, owner=None, session=None) -> "_SSLSocket":
        """A TLS session over ``sock`` (the ``ssl.SSLSocket``), reading and writing it itself."""
        return _SSLSocket(self, _SocketRecords(sock), server_side, server_hostname, owner, session)

    def _wrap_bio(self, incoming, outgoing, server_side, server_hostname=None, *, owner=None, session=None) -> "_SSLSocket":
        """A TLS session over a MemoryBIO pair the caller moves (``ssl.SSLObject``)."""
        return _SSLSocket(self, _BioRecords(incoming, outgoing), server_side, server_hostname, owner, session)


def _cadata_certs(cadata) -> List[bytes]:
    """The DER certificates in ``load_verify_locations``' ``cadata``: PEM
    text, or one or more concatenated DER certificates."""
    if isinstance(cadata, str):
        try:
            certs = _pem_certs(cadata.encode("ascii"))
        except UnicodeEncodeError:
            raise TypeError("cadata should be an ASCII string or a bytes-like object") from None
        if not certs:
            raise _error(SSLError, "no start line: cadata does not contain a certificate", library=None)
        return certs
    try:
        data = bytes(memoryview(cadata))
    except TypeError:
        raise TypeError("cadata should be an ASCII string or a bytes-like object") from None
    try:
        certs = _split_der(data)
    except ValueError as e:
        raise _error(SSLError, f"cadata is not DER certificates: {e}", library="ASN1") from None
    if not certs:
        raise _error(SSLError, "not enough data: cadata does not contain a certificate", library=None)
    return certs


class _SocketRecords:
    """Records over the ``ssl.SSLSocket`` itself, through ``_socket.socket``'s
    methods (SSLSocket overrides ``recv``/``send`` to go through TLS), so the
    socket's timeout applies: TimeoutError past it, and SSLWantReadError /
    SSLWantWriteError when it is non-blocking, as with the C module."""

    def __init__(self, sock) -> None:
        self._sock = weakref.ref(sock)  # the socket owns the session, not the reverse
        self._unsent = bytearray()  # what a full non-blocking socket did not take

    @property
    def socket(self):
        """The socket; what ``shutdown`` returns."""
        sock = self._sock()
        if sock is None:
            raise _error(SSLError, "Underlying socket connection gone", library=None, code=0)
        return sock

    def read(self) -> bytes:
        """Up to 16 KiB of records; b'' at end of file."""
        try:
            return _socket.socket.recv(self.socket, _RECV_SIZE)
        except BlockingIOError:
            raise _want_read() from None

    def write(self, records: bytes) -> None:
        """Send what is left from last time, then ``records``."""
        self._unsent += records
        while self._unsent:
            try:
                sent = _socket.socket.send(self.socket, self._unsent)
            except BlockingIOError:
                raise _want_write() from None
            del self._unsent[:sent]


class _BioRecords:
    """Records through the MemoryBIO pair of an ``ssl.SSLObject``."""

    socket = None  # what `shutdown` returns here

    def __init__(self, incoming: MemoryBIO, outgoing: MemoryBIO) -> None:
        self._incoming = incoming
        self._outgoing = outgoing

    def read(self) -> bytes:
        """Up to 16 KiB of records; b'' after ``write_eof``; SSLWantReadError until the caller writes more."""
        data = self._incoming.read(_RECV_SIZE)
        if not data and not self._incoming.eof:
            raise _want_read()
        return data

    def write(self, records: bytes) -> None:
        """Queue ``records`` for the caller to send."""
        if records:
            self._outgoing.write(records)


class _SSLSocket:
    """One client TLS session (the C module's ``_SSLSocket``): the host's
    engine, moved along through a socket or a MemoryBIO pair."""

    def __init__(self, context: _SSLContext, records, server_side, server_hostname, owner, session) -> None:
        if server_side:
            raise _server_side_error()
        if server_hostname is None:
            if context.check_hostname:
                raise ValueError("check_hostname requires server_hostname")
        elif not server_hostname or server_hostname.startswith("."):
            raise ValueError("server_hostname cannot be an empty string or start with a leading dot.")
        if session is not None and not isinstance(session, SSLSession):
            raise TypeError("Value is not a SSLSession.")
        settings = host.Settings(**context._settings())
        try:
            # Empty name: no SNI, allowed only without check_hostname.
            self._tls = host.Client.connect(settings, server_hostname or "")
        except Err as e:
            raise _host_error(e.value, False) from None
        self._context = context
        self._records = records
        self.server_hostname = server_hostname
        self._owner = None if owner is None else weakref.ref(owner)
        self._backlog = b""  # records read that the host has not taken yet
        self._retry_offset = 0  # bytes of an unfinished `write` the host took
        self._eof = False  # the transport's end of file was handed to the host
        self._info = None  # what the handshake agreed, once it is done
        self._closing = False

    @property
    def context(self) -> _SSLContext:
        """The context; replacing it changes what ``getpeercert`` reports, not the session."""
        return self._context

    @context.setter
    def context(self, context: _SSLContext) -> None:
        if not isinstance(context, _SSLContext):
            raise TypeError("The value must be a SSLContext")
        self._context = context

    @property
    def owner(self):
        """The SSLSocket or SSLObject this belongs to (held weakly)."""
        return None if self._owner is None else self._owner()

    @owner.setter
    def owner(self, owner) -> None:
        self._owner = weakref.ref(owner)

    @property
    def server_side(self) -> bool:
        """Always False: client side only."""
        return False

    @property
    def session(self) -> None:
        """Always None: the host engine does not resume sessions."""
        return None

    @session.setter
    def session(self, session) -> None:
        if not isinstance(session, SSLSession):
            raise TypeError("Value is not a SSLSession.")
        if self._info is not None:
            raise ValueError("Cannot set session after handshake.")

    @property
    def session_reused(self) -> bool:
        """Whether a session was resumed, as far as the guest can tell: never."""
        return False

    def do_handshake(self) -> None:
        """Run the handshake to its end; SSLWantReadError/SSLWantWriteError
        when a non-blocking transport must wait first (then call again)."""
        try:
            self._flush()  # the ClientHello, or what a full socket left
            while self._tls.handshaking():
                self._pull()
        except Err as e:
            raise self._fail(e.value) from None
        if self._info is None:
            self._info = self._tls.info()

    def read(self, size: int = 1024, buffer=None):
        """Up to ``size`` decrypted bytes, b'' once the peer closed cleanly;
        with ``buffer``, fill it instead and return the count."""
        if buffer is None:
            if size < 0:
                raise ValueError("size should not be negative")
            return self._receive(size) if size else b""
        view = memoryview(buffer).cast("B")
        if size <= 0 or size > len(view):
            size = len(view)
        data = self._receive(size) if size else b""
        view[: len(data)] = data
        return len(data)

    def write(self, data) -> int:
        """Encrypt and send all of ``data`` and return its length. When a
        non-blocking socket fills up this raises SSLWantWriteError, and as
        with OpenSSL the caller calls again with the same data: what the
        host already took is then skipped, not sent twice."""
        view = memoryview(data).cast("B")
        if self._info is None:
            self.do_handshake()
        done = self._retry_offset
        if done > len(view):
            raise _error(SSLError, "bad write retry", "BAD_WRITE_RETRY")
        try:
            while True:
                self._flush()
                if done == len(view):
                    break
                done += self._tls.send(bytes(view[done : done + _PIECE]))
                self._retry_offset = done
        except Err as e:
            raise self._fail(e.value) from None
        self._retry_offset = 0
        return done

    def pending(self) -> int:
        """Decrypted bytes ``read`` can return without more records."""
        return self._tls.pending()

    def shutdown(self):
        """Send close_notify and wait for the peer's; returns the socket, or
        None over MemoryBIOs. Data arriving first is an error, as in OpenSSL."""
        if self._info is None:
            raise _error(SSLError, "shutdown while in init", "SHUTDOWN_WHILE_IN_INIT")
        if not self._closing:
            self._closing = True
            self._tls.close()
        self._flush()
        if self._receive(_RECV_SIZE):
            raise _error(SSLError, "application data after close notify", "APPLICATION_DATA_AFTER_CLOSE_NOTIFY")
        return self._records.socket

    def getpeercert(self, binary_form: bool = False):
        """The server's certificate: a dict ({} when not verified), DER with
        ``binary_form``, None if it sent none."""
        if self._info is None:
            raise ValueError("handshake not done yet")
        if not self._info.peer_chain:
            return None
        leaf = self._info.peer_chain[0]
        if binary_form:
            return leaf
        return _decode_cert(leaf) if self._context.verify_mode != CERT_NONE else {}

    def get_unverified_chain(self) -> Optional[List[Certificate]]:
        """The certificates the server sent, leaf first (None before the handshake)."""
        if self._info is None:
            return None
        return [Certificate(der) for der in self._info.peer_chain]

    def get_verified_chain(self) -> Optional[List[Certificate]]:
        """The same as ``get_unverified_chain``: the host verified that chain
        but does not report the path it built to a root."""
        return self.get_unverified_chain()

    def selected_alpn_protocol(self) -> Optional[str]:
        """The protocol ALPN chose, if any."""
        return None if self._info is None else self._info.alpn

    def cipher(self) -> Optional[Tuple[str, str, int]]:
        """(suite, TLS version, secret bits), with OpenSSL's suite names."""
        if self._info is None:
            return None
        return _OPENSSL_CIPHERS.get(self._info.cipher, self._info.cipher), self._info.version, self._info.bits

    def shared_ciphers(self) -> None:
        """None: the host does not report the suites both sides offered."""
        return None

    def compression(self) -> None:
        """None: TLS compression is never used."""
        return None

    def version(self) -> Optional[str]:
        """``TLSv1.2`` or ``TLSv1.3`` once the handshake is done."""
        return None if self._info is None else self._info.version

    def get_channel_binding(self, cb_type: str = "tls-unique") -> None:
        """None: the host engine does not expose the Finished message
        ``tls-unique`` is made of (and TLS 1.3 has none)."""
        if cb_type != "tls-unique":
            raise ValueError(f"'{cb_type}' channel binding type not implemented")
        return None

    def verify_client_post_handshake(self) -> None:
        """Fails as OpenSSL does on a client: asking for a certificate after the handshake is a server's move."""
        raise _error(SSLError, "not server", "NOT_SERVER")

    def _flush(self) -> None:
        """Hand the transport the records the host has ready."""
        self._records.write(self._tls.transmit())

    def _pull(self) -> None:
        """Hand the host more records, then send what they produced.
        SSLWantReadError: the transport has none yet; SSLEOFError: it ended
        while the host still waits for more."""
        if not self._backlog:
            if self._eof:
                raise _eof_error()
            self._backlog = self._records.read()
            self._eof = not self._backlog
        # The host takes less when its buffer of received plaintext is full;
        # the rest is offered again once `read` has drained it.
        taken = self._tls.receive(self._backlog)
        self._backlog = self._backlog[taken:]
        self._flush()

    def _receive(self, size: int) -> bytes:
        """Up to ``size`` decrypted bytes (``size`` > 0); b'' after the peer's close_notify."""
        if self._info is None:
            self.do_handshake()
        try:
            while True:
                got = self._tls.read(min(size, _PIECE))
                if isinstance(got, host.Received_Data):
                    return got.value
                if isinstance(got, host.Received_Closed):
                    return b""
                self._pull()
        except Err as e:
            raise self._fail(e.value) from None

    def _fail(self, err) -> SSLError:
        """The exception for host error ``err``, once the alert the host
        queued is sent (as OpenSSL sends it)."""
        try:
            self._flush()
        except OSError:
            pass  # the peer may be gone already; the error at hand matters more
        return _host_error(err, self._eof)


_CONSTANT_PREFIXES = (
    "PROTOCOL_",
    "PROTO_",
    "OP_",
    "ALERT_DESCRIPTION_",
    "SSL_ERROR_",
    "VERIFY_",
    "CERT_",
    "HOSTFLAG_",
    "ENCODING_",
    "HAS_",
    "OPENSSL_",
)
# What `_ssl` re-exports with `import *`; it imports the private names
# ssl.py needs (`_SSLContext`, ...) by name.
__all__ = [name for name in list(globals()) if name.startswith(_CONSTANT_PREFIXES)] + [
    "SSLError",
    "SSLZeroReturnError",
    "SSLWantReadError",
    "SSLWantWriteError",
    "SSLSyscallError",
    "SSLEOFError",
    "SSLCertVerificationError",
    "MemoryBIO",
    "SSLSession",
    "Certificate",
    "RAND_status",
    "RAND_add",
    "RAND_bytes",
    "txt2obj",
    "nid2obj",
    "get_default_verify_paths",
]
