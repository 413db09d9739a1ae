import hashlib
import unittest

from rsgi_wasm_guest.compat import pbkdf2_hmac


class Pbkdf2(unittest.TestCase):
    def test_matches_openssl(self):
        for args in [
            ("sha256", b"pw", b"salt", 1000, None),
            ("sha1", b"password", b"salt", 2, 20),
            ("sha256", b"p", b"s", 3, 77),
            ("sha512", b"x", bytearray(b"y"), 10, None),
        ]:
            self.assertEqual(pbkdf2_hmac(*args), hashlib.pbkdf2_hmac(*args), args)

    def test_rfc6070_vector(self):
        self.assertEqual(
            pbkdf2_hmac("sha1", b"password", b"salt", 4096).hex(),
            "4b007901b765489abead49d926f721d065a429c1",
        )

    def test_bad_arguments(self):
        with self.assertRaises(ValueError):
            pbkdf2_hmac("sha256", b"p", b"s", 0)
        with self.assertRaises(ValueError):
            pbkdf2_hmac("sha256", b"p", b"s", 1, 0)


class UserIds(unittest.TestCase):
    def test_install_fills_only_what_is_missing(self):
        import os

        from rsgi_wasm_guest import compat

        real = os.getuid
        saved = {n: getattr(os, n) for n in compat.ID_FUNCTIONS}
        try:
            del os.getgid
            compat.install()
            self.assertEqual(os.getgid(), 0)
            self.assertIs(os.getuid, real)
        finally:
            for n, f in saved.items():
                setattr(os, n, f)


if __name__ == "__main__":
    unittest.main()
