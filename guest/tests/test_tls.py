"""Unit tests of the guest's `_ssl` (`rsgi_wasm_guest.tls`): its pure parts,
outside a component. Certificates are made with the `openssl` command and
decoded by this CPython's own `_ssl` too, which is the reference; the TLS
sessions themselves need the host and are tested in tests/*.rs."""

import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import types
import unittest
import warnings
from unittest import mock

from rsgi_wasm_guest import tls

GUEST = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def host_ssl_module():
    """This CPython's own `_ssl`, or None: guest/_ssl.py shadows it on the
    tests' sys.path, so it is loaded from the other entries."""
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != GUEST]
    spec = importlib.machinery.PathFinder.find_spec("_ssl", path)
    if spec is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REAL = host_ssl_module()
needs_real = unittest.skipIf(REAL is None, "this CPython has no _ssl")
needs_openssl = unittest.skipIf(shutil.which("openssl") is None, "no openssl command")

LEAF_CONFIG = """
[req]
distinguished_name = dn
prompt = no
string_mask = utf8only
[dn]
C = FR
ST = Ile-de-France
O = Example "Org", Inc.
OU = Ops
CN = www.example.test
emailAddress = ops@example.test
[ext]
subjectAltName = @alt
authorityInfoAccess = OCSP;URI:http://ocsp.example.test/,caIssuers;URI:http://ca.example.test/ca.der
crlDistributionPoints = URI:http://crl.example.test/a.crl,URI:ldap://crl.example.test/b
basicConstraints = critical,CA:FALSE
keyUsage = digitalSignature,keyEncipherment
[alt]
DNS.1 = www.example.test
DNS.2 = *.example.test
IP.1 = 127.0.0.1
IP.2 = 2001:db8::1
email.1 = admin@example.test
URI.1 = https://example.test/path
dirName.1 = dir_sect
RID.1 = 1.2.3.4
otherName.1 = 1.3.6.1.4.1.311.20.2.3;UTF8:upn@example.test
otherName.2 = 1.2.3.5;UTF8:unknown
[dir_sect]
C = US
CN = Dir Name
"""


class Pki:
    """Certificates made with the openssl command in a temporary directory."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="rsgi-tls-test-")
        self.openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                     "-days", "30", "-subj", "/C=US/O=Test/CN=Test CA",
                     "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
        with open(self.path("leaf.cnf"), "w") as f:
            f.write(LEAF_CONFIG)
        self.openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr",
                     "-config", "leaf.cnf")
        self.sign("leaf", "-set_serial", "0x00ff0102030405060708090a0b0c0d0e0f", "-extfile", "leaf.cnf",
                  "-extensions", "ext")
        # EC key, multi-valued RDN, notAfter past 2049 (GeneralizedTime).
        self.openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                     "-keyout", "ec.key", "-out", "ec.csr", "-multivalue-rdn",
                     "-subj", "/O=Multi+OU=Valued/CN=ec.example.test/DC=example/DC=test")
        self.sign("ec", "-set_serial", "1", "-days", "12000")
        # Version 1, self-signed; then the same request signed with a negative serial.
        self.openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "v1.key", "-out", "v1.csr",
                     "-subj", "/CN=v1 root")
        self.openssl("x509", "-req", "-in", "v1.csr", "-signkey", "v1.key", "-days", "30", "-out", "v1.pem")
        self.openssl("x509", "-req", "-in", "v1.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "-12345",
                     "-days", "30", "-out", "negative.pem")
        self.openssl("pkey", "-in", "leaf.key", "-aes256", "-passout", "pass:secret", "-out", "encrypted.key")

    def openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.dir, check=True, capture_output=True)

    def sign(self, name: str, *extra: str) -> None:
        self.openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "30",
                     "-out", f"{name}.pem", *extra)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def read(self, name: str) -> bytes:
        with open(self.path(name), "rb") as f:
            return f.read()

    def der(self, name: str) -> bytes:
        return tls._pem_certs(self.read(name + ".pem"))[0]


PKI = None


def setUpModule() -> None:
    global PKI
    if shutil.which("openssl"):
        PKI = Pki()


def tearDownModule() -> None:
    if PKI is not None:
        shutil.rmtree(PKI.dir)


@needs_openssl
class DecodeTest(unittest.TestCase):
    @needs_real
    def test_certificates_decode_as_cpython_does(self):
        for name in ("ca", "leaf", "ec", "v1", "negative"):
            path = PKI.path(name + ".pem")
            expected, got = REAL._test_decode_cert(path), tls._test_decode_cert(path)
            self.assertEqual(got, expected, name)
            self.assertEqual(list(got), list(expected), name)  # same key order

    def test_decoded_fields(self):
        cert = tls._test_decode_cert(PKI.path("leaf.pem"))
        self.assertEqual(cert["serialNumber"], "FF0102030405060708090A0B0C0D0E0F")
        self.assertEqual(cert["version"], 3)
        self.assertRegex(cert["notAfter"], r"^[A-Z][a-z]{2} [ 1-3]\d \d\d:\d\d:\d\d \d{4} GMT$")
        self.assertIn(("IP Address", "2001:DB8:0:0:0:0:0:1"), cert["subjectAltName"])
        self.assertIn(("othername", "UPN:upn@example.test"), cert["subjectAltName"])
        self.assertIn(("othername", "<unsupported>"), cert["subjectAltName"])
        self.assertEqual(cert["OCSP"], ("http://ocsp.example.test/",))
        self.assertEqual(cert["crlDistributionPoints"], ("http://crl.example.test/a.crl", "ldap://crl.example.test/b"))
        ec = tls._test_decode_cert(PKI.path("ec.pem"))
        self.assertEqual(ec["subject"][0], (("organizationName", "Multi"), ("organizationalUnitName", "Valued")))
        self.assertTrue(ec["notAfter"].endswith(("2059 GMT", "2060 GMT", "2061 GMT")))
        self.assertEqual(tls._test_decode_cert(PKI.path("negative.pem"))["serialNumber"], "-3039")
        self.assertEqual(tls._test_decode_cert(PKI.path("v1.pem"))["version"], 1)

    def test_ca_certificates_are_told_from_leaves(self):
        ctx = tls._SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=b"".join(PKI.der(n) for n in ("ca", "leaf", "v1", "negative")))
        self.assertEqual(ctx.cert_store_stats(), {"x509": 4, "crl": 0, "x509_ca": 2})
        self.assertEqual(ctx.get_ca_certs(True), [PKI.der("ca"), PKI.der("v1")])
        self.assertEqual(ctx.get_ca_certs()[0], tls._decode_cert(PKI.der("ca")))

    @needs_real
    @unittest.skipUnless(os.path.isfile(BUNDLE), "no system CA bundle")
    def test_system_roots_decode_and_count_as_cpython_does(self):
        expected = REAL._SSLContext(REAL.PROTOCOL_TLS_CLIENT)
        expected.load_verify_locations(BUNDLE)
        ctx = tls._SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(BUNDLE)
        self.assertEqual(ctx.cert_store_stats(), expected.cert_store_stats())
        # OpenSSL's store keeps its own order: compare by certificate.
        want = dict(zip(expected.get_ca_certs(True), expected.get_ca_certs()))
        self.assertEqual(dict(zip(ctx.get_ca_certs(True), ctx.get_ca_certs())), want)

    def test_malformed_der_is_an_ssl_error(self):
        der = PKI.der("leaf")
        for broken in (der[:100], der[:1] + b"\x85" + der[2:], b"\x30\x00"):
            with self.assertRaises(tls.SSLError):
                tls._decode_cert(broken)


@needs_openssl
class PemDerTest(unittest.TestCase):
    def test_pem_blocks_are_found_among_other_text(self):
        text = b"# a comment\n" + PKI.read("ca.pem") + PKI.read("leaf.key") + b"junk\n" + PKI.read("leaf.pem")
        self.assertEqual(tls._pem_certs(text), [PKI.der("ca"), PKI.der("leaf")])
        self.assertEqual(tls._pem_certs(b"no certificates"), [])
        with self.assertRaises(tls.SSLError):
            tls._pem_certs(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")

    def test_pem_is_written_as_openssl_writes_it(self):
        self.assertEqual(tls._pem(PKI.der("leaf")).encode(), PKI.read("leaf.pem"))
        cert = tls.Certificate(PKI.der("ca"))
        self.assertEqual(cert.public_bytes(tls.ENCODING_DER), PKI.der("ca"))
        self.assertEqual(cert.public_bytes(), PKI.read("ca.pem").decode())
        self.assertEqual(cert, tls.Certificate(PKI.der("ca")))
        self.assertEqual(cert.get_info()["subject"][-1], (("commonName", "Test CA"),))

    def test_concatenated_der_is_split(self):
        ders = [PKI.der(n) for n in ("ca", "leaf", "ec")]
        self.assertEqual(tls._split_der(b"".join(ders)), ders)
        self.assertEqual(tls._cadata_certs(b"".join(ders)), ders)
        self.assertEqual(tls._cadata_certs(bytearray(ders[0])), ders[:1])
        with self.assertRaises(tls.SSLError):
            tls._cadata_certs(b"".join(ders) + b"\x30\x82")  # a truncated fourth
        with self.assertRaises(tls.SSLError):
            tls._cadata_certs(ders[0] + b"\x04\x00")  # not a SEQUENCE
        with self.assertRaisesRegex(tls.SSLError, "not enough data"):
            tls._cadata_certs(b"")
        with self.assertRaisesRegex(tls.SSLError, "no start line"):
            tls._cadata_certs("no PEM here")
        with self.assertRaises(TypeError):
            tls._cadata_certs("caf\u00e9" + PKI.read("ca.pem").decode())  # not ASCII, as CPython
        with self.assertRaises(TypeError):
            tls._cadata_certs(12)


class ContextTest(unittest.TestCase):
    @needs_real
    def test_defaults_are_cpythons(self):
        for protocol in (tls.PROTOCOL_TLS_CLIENT, tls.PROTOCOL_TLS, tls.PROTOCOL_TLSv1_2):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ours, real = tls._SSLContext(protocol), REAL._SSLContext(protocol)
            for name in ("protocol", "verify_mode", "check_hostname", "options", "verify_flags",
                         "minimum_version", "maximum_version", "post_handshake_auth", "security_level"):
                self.assertEqual(getattr(ours, name), getattr(real, name), (protocol, name))

    def test_settings_for_a_client(self):
        ctx = tls._SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx._set_alpn_protocols(b"\x02h2\x08http/1.1")
        self.assertEqual(
            ctx._settings(),
            {
                "verify": True,
                "check_hostname": True,
                "default_roots": False,
                "ca_certs": [],
                "alpn": ["h2", "http/1.1"],
                "min_version": 0x0303,
                "max_version": 0x0304,
                "client_chain": b"",
                "client_key": b"",
            },
        )
        ctx.check_hostname = False
        ctx.verify_mode = tls.CERT_NONE
        ctx.set_default_verify_paths()
        settings = ctx._settings()
        self.assertEqual((settings["verify"], settings["check_hostname"], settings["default_roots"]), (False, False, True))

    def test_version_bounds(self):
        def bounds(**attributes):
            ctx = tls._SSLContext(attributes.pop("protocol", tls.PROTOCOL_TLS_CLIENT))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                for name, value in attributes.items():
                    setattr(ctx, name, value)
            settings = ctx._settings()
            return settings["min_version"], settings["max_version"]

        self.assertEqual(bounds(minimum_version=tls.PROTO_MINIMUM_SUPPORTED), (0x0303, 0x0304))
        self.assertEqual(bounds(minimum_version=tls.PROTO_TLSv1), (0x0303, 0x0304))
        self.assertEqual(bounds(minimum_version=tls.PROTO_TLSv1_3), (0x0304, 0x0304))
        self.assertEqual(bounds(maximum_version=tls.PROTO_TLSv1_2), (0x0303, 0x0303))
        self.assertEqual(bounds(options=tls._DEFAULT_OPTIONS | tls.OP_NO_TLSv1_3), (0x0303, 0x0303))
        self.assertEqual(bounds(options=tls._DEFAULT_OPTIONS | tls.OP_NO_TLSv1_2), (0x0304, 0x0304))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.assertEqual(bounds(protocol=tls.PROTOCOL_TLSv1_2), (0x0303, 0x0303))
            for impossible in ({"maximum_version": tls.PROTO_TLSv1_1}, {"protocol": tls.PROTOCOL_TLSv1}):
                with self.assertRaisesRegex(tls.SSLError, "NO_PROTOCOLS_AVAILABLE"):
                    bounds(**impossible)
            ctx = tls._SSLContext(tls.PROTOCOL_TLSv1_2)
        with self.assertRaises(ValueError):
            ctx.minimum_version = tls.PROTO_TLSv1_3
        with self.assertRaisesRegex(ValueError, "Unsupported TLS/SSL version"):
            tls._SSLContext(tls.PROTOCOL_TLS_CLIENT).maximum_version = 0x305

    def test_verify_mode_and_check_hostname_as_cpython(self):
        ctx = tls._SSLContext(tls.PROTOCOL_TLS_CLIENT)
        with self.assertRaisesRegex(ValueError, "check_hostname is enabled"):
            ctx.verify_mode = tls.CERT_NONE
        with self.assertRaisesRegex(ValueError, "invalid value"):
            ctx.verify_mode = 7
        with self.assertWarnsRegex(DeprecationWarning, "PROTOCOL_TLS is deprecated"):
            ctx = tls._SSLContext(tls.PROTOCOL_TLS)
        self.assertEqual(ctx.verify_mode, tls.CERT_NONE)
        ctx.check_hostname = True
        self.assertEqual(ctx.verify_mode, tls.CERT_REQUIRED)

    def test_server_side_and_unknown_protocols_are_refused(self):
        with self.assertRaisesRegex(tls.SSLError, "server-side TLS is not available"):
            tls._SSLContext(tls.PROTOCOL_TLS_SERVER)
        with self.assertRaisesRegex(ValueError, "invalid or unsupported protocol version"):
            tls._SSLContext(1)
        with self.assertRaisesRegex(ValueError, "TLS_CLIENT"):
            tls._SSLContext(tls.PROTOCOL_TLS_CLIENT).sni_callback = print
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = tls._SSLContext(tls.PROTOCOL_TLS)
        with self.assertRaisesRegex(tls.SSLError, "server-side"):
            ctx.sni_callback = print
        with self.assertRaisesRegex(tls.SSLError, "server-side"):
            ctx._wrap_bio(tls.MemoryBIO(), tls.MemoryBIO(), True)
        with self.assertRaises(ValueError):
            ctx.num_tickets = 1

    @needs_openssl
    def test_verify_locations(self):
        ctx = tls._SSLContext(tls.PROTOCOL_TLS_CLIENT)
        with self.assertRaises(TypeError):
            ctx.load_verify_locations()
        with self.assertRaises(FileNotFoundError):
            ctx.load_verify_locations(os.path.join(PKI.dir, "missing.pem"))
        with self.assertRaisesRegex(tls.SSLError, "NO_CERTIFICATE_OR_CRL_FOUND"):
            ctx.load_verify_locations(PKI.path("leaf.key"))
        ctx.load_verify_locations(PKI.path("ca.pem"))
        ctx.load_verify_locations(cadata=PKI.read("ca.pem").decode())  # again: kept once
        capath = os.path.join(PKI.dir, "capath")
        os.makedirs(capath, exist_ok=True)
        shutil.copy(PKI.path("leaf.pem"), capath)
        shutil.copy(PKI.path("leaf.key"), capath)  # not a certificate: skipped
        ctx.load_verify_locations(capath=capath)
        ctx.load_verify_locations(capath=os.path.join(PKI.dir, "missing"))  # as OpenSSL: no error
        self.assertEqual(ctx._settings()["ca_certs"], [PKI.der("ca"), PKI.der("leaf")])

    @needs_openssl
    def test_default_paths_follow_ssl_cert_file_and_dir(self):
        capath = os.path.join(PKI.dir, "default-dir")
        os.makedirs(capath, exist_ok=True)
        shutil.copy(PKI.path("ec.pem"), capath)
        ctx = tls._SSLContext(tls.PROTOCOL_TLS_CLIENT)
        with mock.patch.dict(os.environ, {"SSL_CERT_FILE": PKI.path("ca.pem"), "SSL_CERT_DIR": capath}):
            ctx.set_default_verify_paths()
        self.assertEqual(ctx._settings()["ca_certs"], [PKI.der("ca"), PKI.der("ec")])
        self.assertTrue(ctx._settings()["default_roots"])
        ctx = tls._SSLContext(tls.PROTOCOL_TLS_CLIENT)
        with mock.patch.dict(os.environ, {"SSL_CERT_FILE": PKI.path("missing.pem"), "SSL_CERT_DIR": ""}):
            ctx.set_default_verify_paths()  # as OpenSSL: unreadable defaults are skipped
        self.assertEqual(ctx._settings()["ca_certs"], [])

    @needs_openssl
    def test_client_certificate(self):
        ctx = tls._SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.load_cert_chain(PKI.path("leaf.pem"), PKI.path("leaf.key"))
        settings = ctx._settings()
        self.assertEqual(settings["client_chain"], PKI.read("leaf.pem"))
        self.assertEqual(settings["client_key"], PKI.read("leaf.key").strip())
        with open(PKI.path("combined.pem"), "wb") as f:
            f.write(PKI.read("leaf.pem") + PKI.read("leaf.key"))
        ctx.load_cert_chain(PKI.path("combined.pem"))
        self.assertEqual(ctx._settings()["client_key"], PKI.read("leaf.key").strip())
        with self.assertRaisesRegex(tls.SSLError, "encrypted private keys are not supported"):
            ctx.load_cert_chain(PKI.path("leaf.pem"), PKI.path("encrypted.key"), password="secret")
        with self.assertRaisesRegex(tls.SSLError, "no private key"):
            ctx.load_cert_chain(PKI.path("leaf.pem"))
        with self.assertRaisesRegex(tls.SSLError, "no certificate"):
            ctx.load_cert_chain(PKI.path("leaf.key"))
        with self.assertRaises(TypeError):
            ctx.load_cert_chain(PKI.path("leaf.pem"), PKI.path("leaf.key"), password=3)


class ModuleTest(unittest.TestCase):
    @needs_real
    def test_objects_and_constants_match_cpython(self):
        for txt in ("1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2", "2.5.4.3"):
            self.assertEqual(tls.txt2obj(txt), REAL.txt2obj(txt))
        self.assertEqual(tls.txt2obj("serverAuth", name=True), REAL.txt2obj("serverAuth", name=True))
        self.assertEqual(tls.nid2obj(130), REAL.nid2obj(130))
        for bad in ("serverAuth", "1.2.3.4"):
            with self.assertRaises(ValueError):
                tls.txt2obj(bad)
        for name in tls.__all__:
            if name.startswith(("PROTOCOL_", "PROTO_", "OP_", "ALERT_", "SSL_ERROR_", "VERIFY_", "CERT_", "HOSTFLAG_")):
                if hasattr(REAL, name):
                    self.assertEqual(getattr(tls, name), getattr(REAL, name), name)

    def test_errors_look_like_the_c_modules(self):
        error = tls._eof_error()
        self.assertIsInstance(error, OSError)
        self.assertEqual(error.args[0], tls.SSL_ERROR_EOF)
        self.assertEqual(str(error), "[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol (_ssl.c:1000)")
        self.assertEqual((error.library, error.reason), ("SSL", "UNEXPECTED_EOF_WHILE_READING"))
        self.assertEqual(tls._want_read().errno, tls.SSL_ERROR_WANT_READ)
        self.assertEqual(tls.SSLError.__module__, "ssl")
        self.assertTrue(issubclass(tls.SSLCertVerificationError, ValueError))
        self.assertEqual(str(tls.SSLError("plain")), "('plain',)")  # as CPython's

    def test_memory_bio(self):
        bio = tls.MemoryBIO()
        self.assertEqual(bio.write(memoryview(b"hello world")), 11)
        self.assertEqual((bio.pending, bio.read(5), bio.read(), bio.read()), (11, b"hello", b" world", b""))
        bio.write(b"x")
        bio.write_eof()
        self.assertFalse(bio.eof)
        self.assertEqual(bio.read(), b"x")
        self.assertTrue(bio.eof)
        with self.assertRaises(tls.SSLError):
            bio.write(b"late")
        with self.assertRaises(TypeError):
            bio.write("text")

    def test_random(self):
        self.assertEqual(len(tls.RAND_bytes(16)), 16)
        self.assertTrue(tls.RAND_status())
        with self.assertRaises(ValueError):
            tls.RAND_bytes(-1)

    def test_stdlib_ssl_runs_over_it(self):
        """This CPython's ssl.py, with this module as its `_ssl` (built as
        guest/_ssl.py builds it)."""
        module = types.ModuleType("_ssl")
        vars(module).update({name: getattr(tls, name) for name in tls.__all__})
        for name in ("_SSLContext", "_DEFAULT_CIPHERS", "_OPENSSL_API_VERSION", "_test_decode_cert"):
            setattr(module, name, getattr(tls, name))
        if sys.version_info < (3, 12):  # this ssl.py still imports it; the guest's (3.14) does not
            module.RAND_pseudo_bytes = tls.RAND_bytes
        spec = importlib.util.spec_from_file_location("_ssl_under_test", importlib.util.find_spec("ssl").origin)
        ssl = importlib.util.module_from_spec(spec)
        saved = sys.modules.get("_ssl")
        sys.modules["_ssl"], sys.modules[spec.name] = module, ssl
        try:
            spec.loader.exec_module(ssl)
        finally:
            del sys.modules[spec.name]
            if saved is None:
                del sys.modules["_ssl"]
            else:
                sys.modules["_ssl"] = saved
        ctx = ssl.create_default_context()
        self.assertEqual((ctx.verify_mode, ctx.check_hostname), (ssl.CERT_REQUIRED, True))
        self.assertEqual(ctx.minimum_version, ssl.TLSVersion.TLSv1_2)
        self.assertFalse(ctx.hostname_checks_common_name)
        ctx.hostname_checks_common_name = False  # urllib3 sets it
        ctx.set_alpn_protocols(["http/1.1"])
        ctx.post_handshake_auth = True  # http.client sets it
        self.assertEqual(ctx._settings()["alpn"], ["http/1.1"])
        self.assertTrue(ctx._settings()["default_roots"])
        self.assertIn("OP_NO_TLSv1_3", ssl.Options.__members__)
        self.assertEqual(ssl.Purpose.SERVER_AUTH.oid, "1.3.6.1.5.5.7.3.1")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ssl.SSLContext(ssl.PROTOCOL_TLS)
            ctx.options |= ssl.OP_NO_TLSv1
            ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        self.assertEqual([w.filename for w in caught], [__file__] * 3)  # the caller's line, as CPython
        with mock.patch.dict(os.environ, {"SSL_CERT_FILE": ""}):
            self.assertEqual(ssl.get_default_verify_paths().cafile, None)

    def test_ssl_cannot_import_without_the_host_binding(self):
        """Without `wit_world` (the wasi-http world), `import ssl` fails with
        ImportError, as with no `_ssl` at all."""
        env = dict(os.environ, PYTHONPATH=GUEST)
        code = "import ssl\n"
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("ModuleNotFoundError: No module named 'wit_world'", result.stderr)


if __name__ == "__main__":
    unittest.main()
