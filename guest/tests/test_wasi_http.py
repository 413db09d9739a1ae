"""Unit tests of the wasi:http transport's environ builder
(`rsgi_wasm_guest.wasi_http`); the transport itself is tested black-box
over HTTP in tests/wasi_http.rs."""

import unittest

from rsgi_wasm_guest import protocol, wasi_http


def env(target="/", headers=(), scheme="http", authority="example.org:8080", method="GET"):
    return wasi_http.environ(protocol.base_environ(), method, target, scheme, authority, list(headers))


class EnvironTest(unittest.TestCase):
    def test_path_is_decoded_to_latin1_and_query_stays_raw(self):
        e = env("/caf%C3%A9/a%2Fb?x=%C3%A9&y")
        self.assertEqual(e["PATH_INFO"], "/caf\u00c3\u00a9/a/b")
        self.assertEqual(e["PATH_INFO"].encode("latin-1").decode("utf-8"), "/café/a/b")
        self.assertEqual(e["QUERY_STRING"], "x=%C3%A9&y")
        self.assertEqual(e["RAW_URI"], "/caf%C3%A9/a%2Fb?x=%C3%A9&y")
        self.assertEqual(e["REQUEST_URI"], e["RAW_URI"])
        self.assertEqual(e["SCRIPT_NAME"], "")

    def test_raw_bytes_a_host_let_through_are_latin1_as_sent(self):
        # `wasmtime serve` passes a raw UTF-8 ü in the query as one code
        # point: the app must see its two bytes, as on our own host.
        e = env("/p/\u00fc%C3%A9?q=\u00fc")
        self.assertEqual(e["QUERY_STRING"], "q=\u00c3\u00bc")
        self.assertEqual(e["PATH_INFO"], "/p/\u00c3\u00bc\u00c3\u00a9")
        self.assertEqual(e["RAW_URI"], "/p/\u00c3\u00bc%C3%A9?q=\u00c3\u00bc")

    def test_malformed_escapes_are_kept(self):
        self.assertEqual(env("/a%zz%4")["PATH_INFO"], "/a%zz%4")

    def test_headers_map_to_cgi_names(self):
        e = env(
            headers=[
                ("content-type", b"text/plain"),
                ("content-length", b"5"),
                ("content-length", b"5"),
                ("x-multi", b"one"),
                ("x-multi", b"two"),
                ("cookie", b"a=1"),
                ("cookie", b"b=2"),
                ("x_smuggled", b"dropped"),
                ("x-raw", b"caf\xe9"),
            ]
        )
        self.assertEqual(e["CONTENT_TYPE"], "text/plain")
        self.assertEqual(e["CONTENT_LENGTH"], "5")
        self.assertNotIn("HTTP_CONTENT_TYPE", e)
        self.assertEqual(e["HTTP_X_MULTI"], "one, two")
        self.assertEqual(e["HTTP_COOKIE"], "a=1; b=2")
        self.assertNotIn("HTTP_X_SMUGGLED", e)
        self.assertEqual(e["HTTP_X_RAW"], "caf\u00e9")

    def test_server_name_comes_from_the_authority(self):
        e = env(authority="example.org:8080")
        self.assertEqual((e["SERVER_NAME"], e["SERVER_PORT"], e["HTTP_HOST"]), ("example.org", "8080", "example.org:8080"))
        e = env(authority="[::1]", scheme="https")
        self.assertEqual((e["SERVER_NAME"], e["SERVER_PORT"]), ("[::1]", "443"))
        self.assertEqual(e["wsgi.url_scheme"], "https")
        e = env(authority="")
        self.assertEqual((e["SERVER_NAME"], e["SERVER_PORT"]), ("localhost", "80"))
        self.assertNotIn("HTTP_HOST", e)

    def test_method_and_protocol(self):
        e = env(method="PROPFIND")
        self.assertEqual(e["REQUEST_METHOD"], "PROPFIND")
        self.assertEqual(e["SERVER_PROTOCOL"], "HTTP/1.1")

    def test_body_length(self):
        self.assertEqual(wasi_http.body_length({}), (True, None))
        self.assertEqual(wasi_http.body_length({"CONTENT_LENGTH": "0"}), (False, 0))
        self.assertEqual(wasi_http.body_length({"CONTENT_LENGTH": "12"}), (True, 12))
        self.assertEqual(wasi_http.body_length({"CONTENT_LENGTH": "-1"}), (False, None))

    def test_base_is_not_changed(self):
        base = protocol.base_environ()
        wasi_http.environ(base, "GET", "/x", "http", "h", [("x-a", b"1")])
        self.assertNotIn("PATH_INFO", base)
        self.assertNotIn("HTTP_X_A", base)


if __name__ == "__main__":
    unittest.main()


class ResponseTest(unittest.TestCase):
    def test_bodiless_statuses_lose_their_length_as_the_default_world_s_host_does(self):
        h = [("Content-Type", "text/plain"), ("Content-Length", "4")]
        self.assertEqual(wasi_http.response_headers(200, h), (h, False))
        for code in (204, 304):
            self.assertEqual(wasi_http.response_headers(code, h), ([("Content-Type", "text/plain")], True))
        self.assertEqual(
            wasi_http.response_headers(205, h),
            ([("Content-Type", "text/plain"), ("Content-Length", "0")], True),
        )

    def test_an_unreadable_body_left_unanswered_is_a_400(self):
        from rsgi_wasm_guest.wsgi_input import ClientDisconnected, InputStream

        def broken(n):
            raise ClientDisconnected("malformed chunk")

        body = InputStream(broken, None)
        with self.assertRaises(ClientDisconnected):
            body.read()
        self.assertEqual(wasi_http.unanswered_page(body)[0], "400 Bad Request")
        self.assertEqual(wasi_http.unanswered_page(InputStream(lambda n: b"", 0))[0], "500 Internal Server Error")
        self.assertEqual(wasi_http.unanswered_page(None)[0], "500 Internal Server Error")
