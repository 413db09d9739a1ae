import io
import hashlib
import os
import unittest
from unittest import mock

from rsgi_wasm_guest import compat
from rsgi_wasm_guest.compat import pbkdf2_hmac


class Pbkdf2(unittest.TestCase):
    def test_matches_openssl(self):
        for args in [
            ("sha256", b"pw", b"salt", 1000, None),
            ("sha1", b"password", b"salt", 2, 20),
            ("sha256", b"p", b"s", 3, 77),
            ("sha512", b"x", bytearray(b"y"), 10, None),
            # Past one fold of steps, and not a whole number of them.
            ("sha256", b"pw", b"salt", 2 * compat._FOLD + 3, None),
            ("sha1", b"pw", b"salt", compat._FOLD + 1, 45),
        ]:
            self.assertEqual(pbkdf2_hmac(*args), hashlib.pbkdf2_hmac(*args), args)

    def test_rfc6070_vector(self):
        self.assertEqual(
            pbkdf2_hmac("sha1", b"password", b"salt", 4096).hex(),
            "4b007901b765489abead49d926f721d065a429c1",
        )

    def test_the_xor_of_many_is_that_of_each(self):
        import functools
        import operator
        import random

        rng = random.Random(7)
        for n in (1, 2, 3, 5, 1024, 1025):
            values = [rng.randbytes(32) for _ in range(n)]
            each = functools.reduce(operator.xor, (int.from_bytes(v, "big") for v in values))
            self.assertEqual(compat._xor_all(values, 32), each, n)

    def test_bad_arguments(self):
        with self.assertRaises(ValueError):
            pbkdf2_hmac("sha256", b"p", b"s", 0)
        with self.assertRaises(ValueError):
            pbkdf2_hmac("sha256", b"p", b"s", 1, 0)
        # Refused at once, as OpenSSL's: the loop would not end.
        with self.assertRaises(OverflowError):
            pbkdf2_hmac("sha256", b"p", b"s", 2**31)
        with self.assertRaises(OverflowError):
            pbkdf2_hmac("sha256", b"p", b"s", 1, 2**31)
        with self.assertRaises(TypeError):
            pbkdf2_hmac("sha256", b"p", b"s", 1.0)
        with self.assertRaises(TypeError):
            pbkdf2_hmac(b"sha256", b"p", b"s", 1)


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


class SandboxRefusals(unittest.TestCase):
    def fake_socket(self):
        import errno
        import types

        from rsgi_wasm_guest import compat

        calls = []

        def refuse(*args, **kwargs):
            calls.append(args)
            raise PermissionError(errno.EACCES, "Permission denied")

        class Socket:
            connect = refuse
            bind = refuse

            def connect_ex(self, address):
                calls.append(address)
                return 0

        fake = types.SimpleNamespace(getaddrinfo=refuse, gethostbyname=refuse, socket=Socket, socketpair=refuse)
        compat._guard_network(fake)
        return compat, fake, calls

    def test_refusals_name_what_was_refused_and_the_setting(self):
        import errno

        compat, fake, calls = self.fake_socket()
        compat.network_closed(False)
        with self.assertRaises(PermissionError) as e:
            fake.getaddrinfo("api.example.com", 443)
        self.assertEqual(e.exception.errno, errno.EACCES)
        self.assertIn("looking up 'api.example.com'", str(e.exception))
        self.assertIn("--allow-net", str(e.exception))
        with self.assertRaises(PermissionError) as e:
            fake.socket().connect(("10.0.0.9", 5432))
        self.assertIn("connecting to 10.0.0.9:5432", str(e.exception))
        with self.assertRaises(PermissionError) as e:
            fake.socket().bind(("127.0.0.1", 0))
        self.assertIn("not listen", str(e.exception))
        # asyncio's event loop starts with a pair: no --allow-net advice.
        with self.assertRaises(PermissionError) as e:
            fake.socketpair()
        self.assertIn("making a socket pair is not allowed", str(e.exception))
        self.assertIn("asyncio", str(e.exception))
        self.assertNotIn("add an --allow-net rule", str(e.exception))
        self.assertEqual(len(calls), 4)

    def test_no_network_call_reaches_libc_while_building(self):
        compat, fake, calls = self.fake_socket()
        compat.network_closed(True)
        try:
            for call in (
                lambda: fake.getaddrinfo("localhost", 80),
                lambda: fake.gethostbyname("localhost"),
                lambda: fake.socket().bind(("::1", 0)),
                lambda: fake.socket().connect(("127.0.0.1", 80)),
            ):
                with self.assertRaises(PermissionError) as e:
                    call()
                self.assertIn("first request", str(e.exception))
            compat.warming("/feed")
            with self.assertRaises(PermissionError) as e:
                fake.socket().connect(("127.0.0.1", 80))
            self.assertIn("no network during the warm-up request GET /feed, at build time", str(e.exception))
            self.assertIn("--no-warmup", str(e.exception))
            compat.warming(None)
            self.assertNotEqual(fake.socket().connect_ex(("127.0.0.1", 80)), 0)
            self.assertEqual(calls, [])
        finally:
            compat.network_closed(False)


class Locale(unittest.TestCase):
    def test_a_locale_without_data_is_refused_and_the_setting_kept(self):
        # wasi-libc's setlocale: any name taken, formatting stays C.
        state = {"LC_ALL": "C.UTF-8"}

        def real(category, locale=None):
            if locale is None:
                return state[category]
            state[category] = locale or "C.UTF-8"
            return state[category]

        class Error(Exception):
            pass

        setlocale = compat.c_locale_only(real, Error)
        self.assertEqual(setlocale("LC_ALL", ""), "C.UTF-8")
        self.assertEqual(setlocale("LC_ALL", "POSIX"), "POSIX")
        for name in ("de_DE.UTF-8", "xx_YY.bogus", "en_US"):
            with self.assertRaises(Error) as e:
                setlocale("LC_ALL", name)
            self.assertIn("only the C locale", str(e.exception))
            self.assertEqual(setlocale("LC_ALL"), "POSIX", "the setting before is kept")
        self.assertTrue(compat._is_c_locale("LC_CTYPE=C.UTF-8;LC_NUMERIC=C"))
        self.assertFalse(compat._is_c_locale("LC_CTYPE=C.UTF-8;LC_TIME=de_DE.UTF-8"))


class ReverseLookup(unittest.TestCase):
    def test_a_placeholder_failure_reads_as_unknown_host(self):
        import types

        class herror(OSError):
            pass

        def todo(address):
            raise herror(0, "hstrerror: TODO")

        fake = types.SimpleNamespace(gethostbyaddr=todo, herror=herror, socket=type("S", (), {}))
        fake.socket.connect = todo
        fake.socket.bind = todo
        fake.socket.connect_ex = lambda self, a: 0
        compat._guard_network(fake)
        with self.assertRaises(herror) as e:
            fake.gethostbyaddr("127.0.0.1")
        self.assertEqual(e.exception.args[0], 1)
        self.assertIn("Unknown host", str(e.exception))


class EmptyLookup(unittest.TestCase):
    def test_no_address_of_the_family_is_a_gaierror_not_an_empty_list(self):
        import socket
        import types

        fake = types.SimpleNamespace(
            getaddrinfo=lambda host, port, family=0, *a: [] if family == socket.AF_INET6 else [("found",)],
            gaierror=socket.gaierror,
            EAI_NONAME=socket.EAI_NONAME,
            socket=type("S", (), {}),
        )
        fake.socket.connect = fake.socket.bind = lambda self, a: None
        fake.socket.connect_ex = lambda self, a: 0
        compat._guard_network(fake)
        self.assertEqual(fake.getaddrinfo("localhost", 80, socket.AF_INET), [("found",)])
        with self.assertRaises(socket.gaierror) as e:
            fake.getaddrinfo("localhost", 80, socket.AF_INET6)
        self.assertEqual(e.exception.args[0], socket.EAI_NONAME)


class Ipv6Probe(unittest.TestCase):
    def test_urllib3s_refused_probe_is_corrected_as_it_is_imported(self):
        import os
        import socket
        import sys
        import tempfile

        saved = {k: v for k, v in sys.modules.items() if k == "urllib3" or k.startswith("urllib3.")}
        for k in saved:
            del sys.modules[k]
        hook = compat.AfterImport()
        with tempfile.TemporaryDirectory() as root:
            pkg = os.path.join(root, "urllib3", "util")
            os.makedirs(pkg)
            for d in (os.path.join(root, "urllib3"), pkg):
                open(os.path.join(d, "__init__.py"), "w").close()
            with open(os.path.join(pkg, "connection.py"), "w") as f:
                f.write("HAS_IPV6 = False  # the probe was refused\nOTHER = 1\n")
            sys.path.insert(0, root)
            sys.meta_path.insert(0, hook)
            try:
                import urllib3.util.connection as connection

                self.assertIs(connection.HAS_IPV6, socket.has_ipv6)
                self.assertEqual(connection.OTHER, 1)
            finally:
                sys.meta_path.remove(hook)
                sys.path.remove(root)
                for k in [k for k in sys.modules if k == "urllib3" or k.startswith("urllib3.")]:
                    del sys.modules[k]
                sys.modules.update(saved)


class PathMkdir(unittest.TestCase):
    def test_a_path_no_grant_holds_names_its_first_directory(self):
        import errno as errno_
        import pathlib

        calls = []

        def wasi_mkdir(self, mode=0o777, parents=False, exist_ok=False):
            # As on WASI: nothing is there, not even `/`.
            calls.append(str(self))
            if parents and str(self) != "/":
                mkdir(self.parent, parents=True, exist_ok=True)
            raise FileNotFoundError(errno_.ENOENT, "No such file or directory", "/")

        mkdir = compat.path_mkdir_naming_the_grant(wasi_mkdir)
        with self.assertRaises(FileNotFoundError) as e:
            mkdir(pathlib.PurePosixPath("/nogrant/p/q"), parents=True)
        self.assertEqual(e.exception.filename, "/nogrant")
        self.assertIn(compat.NO_GRANT, e.exception.strerror)
        with self.assertRaises(FileNotFoundError) as e:
            mkdir(pathlib.PurePosixPath("/x"))
        self.assertEqual(e.exception.filename, "/")


class InlinePool(unittest.TestCase):
    def test_tasks_run_at_submit_in_the_caller(self):
        import threading
        from concurrent.futures import ThreadPoolExecutor
        from concurrent.futures.thread import BrokenThreadPool

        pool_class = compat.inline_pool_class(ThreadPoolExecutor, BrokenThreadPool)
        ran = []
        with pool_class(4, initializer=ran.append, initargs=("init",)) as pool:
            self.assertIsInstance(pool, ThreadPoolExecutor)
            here = threading.get_ident()
            future = pool.submit(lambda x: (threading.get_ident(), x * 2), 21)
            self.assertTrue(future.done())
            self.assertEqual(future.result(), (here, 42))
            self.assertEqual(list(pool.map(str.upper, ["a", "b"])), ["A", "B"])
            failed = pool.submit(int, "x")
            self.assertIsInstance(failed.exception(), ValueError)
        self.assertEqual(ran, ["init"])
        self.assertEqual(threading.active_count(), 1)
        with self.assertRaises(RuntimeError):
            pool.submit(print)

        def broken_init():
            raise OSError("no")

        pool = pool_class(initializer=broken_init)
        with self.assertRaises(BrokenThreadPool):
            pool.submit(print)
        with self.assertRaises(ValueError):
            pool_class(0)


class ThreadStart(unittest.TestCase):
    def test_a_refused_start_says_why_and_is_warned_of_once_per_app(self):
        import io
        from unittest import mock

        def refuse(thread):
            raise RuntimeError("can't start new thread")

        start = compat.thread_start_explained(refuse)
        err = io.StringIO()
        with mock.patch("sys.stderr", err), self.assertRaises(RuntimeError) as e:
            start(object())
        self.assertEqual(str(e.exception), f"can't start new thread: {compat.NO_THREADS}")
        line = err.getvalue()
        self.assertTrue(line.startswith(compat.WARN_ONCE), line)
        self.assertIn("test_compat.py:", line)
        self.assertIn("tried to start a thread, which cannot run in the rsgi-wasm sandbox", line)

        def other(thread):
            raise RuntimeError("threads can only be started once")

        with self.assertRaises(RuntimeError) as e:
            compat.thread_start_explained(other)(object())
        self.assertEqual(str(e.exception), "threads can only be started once")


class DjangoSettingsFlag(unittest.TestCase):
    def test_another_settings_module_than_the_built_one_is_refused(self):
        import sys
        import types

        from unittest import mock

        conf = types.ModuleType("django.conf")
        conf.settings = types.SimpleNamespace(configured=True, SETTINGS_MODULE="shop.settings")
        with mock.patch.dict(sys.modules, {"django.conf": conf}):
            refuse = compat.django_settings_refusal
            self.assertIn(
                "--settings=shop.prod cannot take effect: Django's settings module, shop.settings",
                refuse(["manage.py", "migrate", "--settings", "shop.prod"]),
            )
            self.assertIsNotNone(refuse(["-m", "django", "check", "--settings=shop.prod"]))
            self.assertIsNone(refuse(["manage.py", "migrate", "--settings=shop.settings"]))
            self.assertIsNone(refuse(["manage.py", "migrate"]))
            self.assertIsNone(refuse(["tool.py", "--settings", "x.yaml"]))
            self.assertIsNone(refuse(["manage.py", "shell", "--", "--settings=x"]))
            self.assertIsNone(refuse(["manage.py", "check", "--settings="]))
            import tempfile

            with tempfile.NamedTemporaryFile("w", suffix=".py") as admin:
                admin.write("from django.core.management import execute_from_command_line\n")
                admin.flush()
                self.assertIsNotNone(refuse([admin.name, "migrate", "--settings=shop.prod"]))
            conf.settings.configured = False
            self.assertIsNone(refuse(["manage.py", "migrate", "--settings", "shop.prod"]))


class FirstRequest(unittest.TestCase):
    def test_values_the_import_read_that_differ_now_are_told_once_per_instance(self):
        import io
        import os
        from unittest import mock

        saved = (compat.IMPORT_LOOKUPS, compat.IMPORT_ENVIRON, compat.FIRST_REQUEST_PENDING)
        compat.IMPORT_LOOKUPS = {"RSGI_T_URL": None, "RSGI_T_SAME": "x", "RSGI_T_SET": "mine"}
        compat.IMPORT_ENVIRON = {"RSGI_T_SET": "mine"}
        compat.FIRST_REQUEST_PENDING = True
        err = io.StringIO()
        try:
            with mock.patch.dict(os.environ, {"RSGI_T_URL": "given", "RSGI_T_SAME": "x"}), mock.patch("sys.stderr", err):
                compat.first_request()
                self.assertEqual(os.environ["RSGI_T_SET"], "mine")
            self.assertFalse(compat.FIRST_REQUEST_PENDING)
            self.assertEqual(
                err.getvalue(),
                compat.WARN_ONCE + "RSGI_T_URL is given here, but the app read it when it was imported, "
                "at build time: what it made of that then is what runs here, whatever is given now; "
                "to run with another value, change the app's default and build again\n",
            )
            err.truncate(0)
            with mock.patch.dict(os.environ, {"RSGI_T_SAME": "x", "RSGI_T_SET": "mine"}), mock.patch("sys.stderr", err):
                self.assertIsNone(compat.overridden_warning())
        finally:
            compat.IMPORT_LOOKUPS, compat.IMPORT_ENVIRON, compat.FIRST_REQUEST_PENDING = saved


class FileErrorHint(unittest.TestCase):
    def test_what_the_sandbox_refused_is_explained_and_nothing_else(self):
        import errno

        hint = compat.file_error_hint
        self.assertIn(
            "/python/x is among the app's own files, which are read-only",
            hint(PermissionError(errno.EPERM, "Operation not permitted", "/python/x")),
        )
        # A migration written beside the code belongs in the app's source.
        self.assertIn(
            "make them with your native Python (manage.py makemigrations, alembic revision) and build again",
            hint(PermissionError(errno.EPERM, "Operation not permitted", "/1/notes/migrations/0002_auto.py")),
        )
        self.assertEqual(
            hint(FileNotFoundError(errno.ENOENT, "No such file or directory", "/no-such-grant-y/f")),
            "no granted directory holds /no-such-grant-y/f: grant one with --dir HOST_DIR::/no-such-grant-y "
            "(`dirs` in tenants.toml)",
        )
        self.assertIn("nothing can be made at /", hint(FileNotFoundError(errno.ENOENT, "x", "/new-zz.txt")))
        # As in the sandbox, where no /proc is mounted.
        with mock.patch("os.path.isdir", return_value=False):
            self.assertEqual(hint(FileNotFoundError(errno.ENOENT, "x", "/proc/self/status")), "the sandbox has no /proc")
        # A file missing among the app's own, or in a directory that is
        # there; another error; no file; said already; not an OSError.
        self.assertIsNone(hint(FileNotFoundError(errno.ENOENT, "No such file or directory", "/1/missing.txt")))
        self.assertIsNone(hint(FileNotFoundError(errno.ENOENT, "No such file or directory", "/tmp/missing-zz")))
        self.assertIsNone(hint(IsADirectoryError(errno.EISDIR, "Is a directory", "/1")))
        self.assertIsNone(hint(OSError(errno.EPERM, "Operation not permitted")))
        self.assertIsNone(hint(FileNotFoundError(errno.ENOENT, f"x {compat.NO_GRANT}", "/no-such-grant-y")))
        self.assertIsNone(hint(ValueError("/1/x")))


class StdlibHint(unittest.TestCase):
    def test_a_standard_module_wasi_lacks_is_named_and_nothing_else(self):
        missing = ModuleNotFoundError("No module named '_ctypes'", name="_ctypes")
        self.assertIn("a module of the standard library that CPython for WASI does not have", compat.stdlib_hint(missing))
        self.assertIn("your native Python", compat.stdlib_hint(missing))
        # A package not installed is another matter (requirements).
        self.assertIsNone(compat.stdlib_hint(ModuleNotFoundError("No module named 'flask'", name="flask")))
        self.assertIsNone(compat.stdlib_hint(ValueError("x")))


class SqliteHint(unittest.TestCase):
    def connect(self, *args, **kwargs):
        """``connect`` as the app gets it, the host's sqlite3 put back after."""
        import sqlite3
        import types

        real = sqlite3.connect
        module = types.SimpleNamespace(
            connect=real, OperationalError=sqlite3.OperationalError, DatabaseError=sqlite3.DatabaseError
        )
        compat.sqlite_connect_explained(module)
        try:
            self.assertIs(sqlite3.connect, module.connect)
            return module.connect(*args, **kwargs)
        finally:
            sqlite3.connect = real

    def test_a_database_beside_the_code_names_the_grant(self):
        import pathlib
        import sqlite3

        # Django's default NAME, passed as Django does.
        with self.assertRaises(sqlite3.OperationalError) as e:
            self.connect(database=pathlib.Path("/1/proj/db.sqlite3"), uri=True)
        self.assertEqual(
            str(e.exception),
            "unable to open database file (/1/proj/db.sqlite3 is among the app's own files, "
            "which are read-only in the sandbox: keep the database in a --dir grant "
            "(for example --dir ./data::/data, and /data/db.sqlite3))",
        )
        self.assertEqual(e.exception.sqlite_errorname, "SQLITE_CANTOPEN")

    def test_a_database_opened_by_a_warm_up_request_names_the_warm_up(self):
        import sqlite3

        compat.network_closed(True)
        try:
            with self.assertRaises(sqlite3.OperationalError) as e:
                self.connect("file:/no-such-grant-x/db.sqlite3?mode=rwc", uri=True)
            self.assertIn("was opened while the app was imported", str(e.exception))
            # A stock Django index page queries the database only when the
            # warm-up asks for it: the import is not to blame.
            compat.warming("/")
            with self.assertRaises(sqlite3.OperationalError) as e:
                self.connect("file:/no-such-grant-x/db.sqlite3?mode=rwc", uri=True)
            self.assertIn(
                "was opened during the warm-up request GET /, at build time, when no --dir grant exists: "
                "warm up a path that needs none (`--warmup PATH`), or build with `--no-warmup`",
                str(e.exception),
            )
        finally:
            compat.warming(None)
            compat.network_closed(False)

    def test_a_path_no_grant_holds_is_named(self):
        import sqlite3

        with self.assertRaises(sqlite3.OperationalError) as e:
            self.connect("file:/no-such-grant-x/app.db?mode=rwc", 5.0, 0, "", True, sqlite3.Connection, 128, True)
        self.assertIn("(no granted directory holds /no-such-grant-x/app.db: keep the database in a --dir grant", str(e.exception))

    def test_other_failures_and_memory_databases_are_untouched(self):
        import os
        import sqlite3
        import tempfile

        self.connect(":memory:").close()
        self.connect("file::memory:?cache=shared", uri=True).close()
        with tempfile.TemporaryDirectory() as root:
            with self.assertRaises(sqlite3.OperationalError) as e:
                self.connect(os.path.join(root, "missing", "db.sqlite3"))
            self.assertEqual(
                str(e.exception),
                f"unable to open database file ({root}/missing/db.sqlite3: its directory {root}/missing does not exist)",
            )
            path = os.path.join(root, "db.sqlite3")
            with open(path, "w") as f:
                f.write("not a database, but a file of the same length as a header..")
            with self.assertRaises(sqlite3.DatabaseError) as e:
                self.connect(path).execute("select 1 from t")
            self.assertEqual(str(e.exception), "file is not a database")

    def test_a_database_in_wal_mode_is_named_as_such(self):
        import os
        import sqlite3
        import tempfile

        with tempfile.TemporaryDirectory() as root:
            path = os.path.join(root, "app.db")
            native = sqlite3.connect(path)
            native.execute("pragma journal_mode=wal")
            native.execute("create table t (x)")
            native.commit()
            native.close()
            self.assertTrue(compat.in_wal_mode(path))
            with self.assertRaises(sqlite3.DatabaseError) as e:
                self.connect(path)
            self.assertEqual(str(e.exception), f"file is not a database ({compat.wal_hint(path)})")
            self.assertIn("WAL mode", str(e.exception))
            native = sqlite3.connect(path)
            native.execute("pragma journal_mode=delete")
            native.close()
            self.assertFalse(compat.in_wal_mode(path))
            self.connect(path).execute("select * from t").close()

    def test_paths_are_read_as_sqlite_reads_them(self):
        self.assertIsNone(compat.sqlite_path(":memory:", False))
        self.assertIsNone(compat.sqlite_path("file::memory:?cache=shared", True))
        self.assertIsNone(compat.sqlite_path("file://otherhost/x.db", True))
        self.assertEqual(compat.sqlite_path("file:///data/x.db?mode=ro", True), "/data/x.db")
        self.assertEqual(compat.sqlite_path("file://localhost/data/x.db", True), "/data/x.db")
        self.assertEqual(compat.sqlite_path(b"/data/x.db", False), "/data/x.db")
        self.assertEqual(compat.sqlite_path("/data/file:x.db", True), "/data/file:x.db")
        self.assertIsNone(compat.sqlite_path(3, False))
        self.assertTrue(compat.is_code_mount("/python/lib/x.db"))
        self.assertTrue(compat.is_code_mount("/12/x.db"))
        self.assertFalse(compat.is_code_mount("/data/x.db"))
        self.assertFalse(compat.is_code_mount("/1a/x.db"))


class WholeStdio(unittest.TestCase):
    def test_short_raw_writes_lose_nothing(self):
        import io

        from rsgi_wasm_guest.compat import WholeWrites

        class Short(io.RawIOBase):
            """At most 1,000 bytes per write, as the host's stdout at 1 MiB."""

            def __init__(self):
                super().__init__()
                self.got = bytearray()

            def writable(self):
                return True

            def write(self, b):
                n = min(len(b), 1000)
                self.got += bytes(memoryview(b)[:n])
                return n

        short = Short()
        text = io.TextIOWrapper(WholeWrites(short), encoding="utf-8", write_through=True)
        text.write("é" * 5000 + "\n")
        self.assertEqual(bytes(short.got), ("é" * 5000 + "\n").encode())
        self.assertEqual(WholeWrites(short).write(b"x" * 2500), 2500)


class BuildOutputTest(unittest.TestCase):
    def test_output_past_the_cap_is_dropped_until_the_build_ends(self):
        sink = io.StringIO()
        out = compat.BuildOutput(sink, 10)
        self.assertEqual(out.write("abcdefghijkl"), 12)
        self.assertEqual(out.write("more"), 4)
        self.assertTrue(sink.getvalue().startswith("abcdefghij\n[rsgi-wasm: "), sink.getvalue())
        self.assertNotIn("more", sink.getvalue())
        # What went through is given back once, for the build's report.
        self.assertEqual(out.unlimited(), sink.getvalue())
        out.write("after")
        self.assertTrue(sink.getvalue().endswith("after"))
        self.assertEqual(out.unlimited(), "")

    def test_what_the_import_printed_is_reported_line_by_line(self):
        from rsgi_wasm_guest.boot import printed_lines

        self.assertEqual(
            printed_lines({"stdout": "hello\n\n  \nworld", "stderr": "UserWarning: x\n"}),
            ["[import stdout] hello", "[import stdout] world", "[import stderr] UserWarning: x"],
        )

    def test_output_that_fills_the_cap_exactly_is_noted_at_the_next_write(self):
        sink = io.StringIO()
        out = compat.BuildOutput(sink, 4)
        out.write("line")
        out.write(" 1\n")
        out.write("more")
        self.assertEqual(sink.getvalue(), "line\n[rsgi-wasm: the rest of the output while building is dropped]\n")

    def test_a_cut_never_splits_a_character(self):
        sink = io.StringIO()
        compat.BuildOutput(sink, 3).write("aé€")
        self.assertTrue(sink.getvalue().startswith("aé\n"), sink.getvalue())


class MakedirsTest(unittest.TestCase):
    @staticmethod
    def wasi_like(made):
        """``os.makedirs`` over a file system, as on WASI, with no `/` and
        only the directories in ``made`` (grants and what was made)."""
        import os

        def mkdir(name, mode=0o777):
            name = os.path.normpath(name)
            if name in made:
                raise FileExistsError(17, "File exists", name)
            if os.path.dirname(name) not in made:
                raise FileNotFoundError(44, "No such file or directory", name)
            made.add(name)

        def real(name, mode=0o777, exist_ok=False):
            # CPython's os.makedirs, over `mkdir` and `exists` above.
            head, tail = os.path.split(name)
            if head and tail and head not in made:
                try:
                    makedirs(head, exist_ok=exist_ok)
                except FileExistsError:
                    pass
            try:
                mkdir(name, mode)
            except OSError:
                if not exist_ok or os.path.normpath(name) not in made:
                    raise

        makedirs = compat.makedirs_naming_the_grant(real)
        return makedirs

    def test_the_grant_itself_and_paths_under_it_are_made_as_natively(self):
        made = {"/data"}
        makedirs = self.wasi_like(made)
        makedirs("/data", exist_ok=True)
        makedirs("/data/", exist_ok=True)
        makedirs("/data/up/x", exist_ok=True)
        self.assertIn("/data/up/x", made)
        with self.assertRaises(FileExistsError):
            makedirs("/data")
        makedirs("/", exist_ok=True)
        makedirs("//", exist_ok=True)
        with self.assertRaises(FileExistsError):
            makedirs("/")

    def test_a_path_no_grant_holds_names_its_first_directory(self):
        makedirs = self.wasi_like({"/data"})
        for path in ["/nogrant/up/x", "//nogrant//x", "/./nogrant/x"]:
            with self.subTest(path=path), self.assertRaises(FileNotFoundError) as e:
                makedirs(path, exist_ok=True)
            self.assertEqual([p for p in e.exception.filename.split("/") if p not in ("", ".")], ["nogrant"])
            self.assertEqual(str(e.exception).count("no granted directory holds it"), 1, str(e.exception))


class SingleThreadedLockTest(unittest.TestCase):
    def test_a_held_lock_times_out_after_its_time_and_an_endless_wait_raises(self):
        import time

        lock = compat.SingleThreadedLock()
        self.assertTrue(lock.acquire())
        self.assertTrue(lock.locked())
        self.assertFalse(lock.acquire(False))
        started = time.monotonic()
        self.assertFalse(lock.acquire(timeout=0.05))
        self.assertGreaterEqual(time.monotonic() - started, 0.05)
        with self.assertRaises(RuntimeError) as e:
            lock.acquire()
        self.assertIn("RLock", str(e.exception))
        with self.assertRaises(RuntimeError):
            with lock:
                pass
        for bad in [dict(blocking=False, timeout=1), dict(timeout=-2)]:
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                lock.acquire(**bad)
        lock.release()
        with lock:
            self.assertTrue(lock.locked())
        self.assertFalse(lock.locked())
        with self.assertRaises(RuntimeError):
            lock.release()
        self.assertIn("unlocked", repr(lock))

    def test_queues_and_events_built_on_it_time_out(self):
        import queue
        import threading

        saved = threading.Lock, threading.Condition.wait
        threading.Lock, threading.Condition.wait = compat.SingleThreadedLock, compat.single_threaded_wait
        try:
            q = queue.Queue()
            q.put(1)
            self.assertEqual(q.get(timeout=0.01), 1)
            with self.assertRaises(queue.Empty):
                q.get(timeout=0.01)
            self.assertFalse(threading.Event().wait(0.01))
            self.assertFalse(threading.Semaphore(0).acquire(timeout=0.01))
        finally:
            threading.Lock, threading.Condition.wait = saved


class SingleThreadedWaitTest(unittest.TestCase):
    def test_a_timed_wait_times_out_after_its_time_and_an_endless_one_raises(self):
        import threading
        import time

        c = threading.Condition()
        with self.assertRaises(RuntimeError):
            compat.single_threaded_wait(c, 0.01)
        with c:
            started = time.monotonic()
            self.assertFalse(compat.single_threaded_wait(c, 0.05))
            self.assertGreaterEqual(time.monotonic() - started, 0.05)
            self.assertFalse(compat.single_threaded_wait(c, -1))
            with self.assertRaises(RuntimeError) as e:
                compat.single_threaded_wait(c)
            self.assertIn("no threads", str(e.exception))
