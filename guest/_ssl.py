"""CPython's ``_ssl`` C extension, which CPython for WASI lacks: here the
rsgi-wasm host's TLS engine, through ``rsgi_wasm_guest.tls``."""

# Only a wsgi-app component has the host's `tls` import; elsewhere (the
# wasi-http world) this raises ImportError, so `import ssl` fails as it
# would without `_ssl`.
from wit_world.imports import tls as _host  # noqa: F401

from rsgi_wasm_guest.tls import *  # noqa: F401,F403
from rsgi_wasm_guest.tls import _DEFAULT_CIPHERS, _OPENSSL_API_VERSION, _SSLContext, _test_decode_cert  # noqa: F401
