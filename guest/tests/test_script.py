import contextlib
import io
import os
import sys
import tempfile
import unittest

from rsgi_wasm_guest import script


def run(argv, roots=()):
    """``script.run``'s status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = script.run(argv, roots)
    return status, out.getvalue(), err.getvalue()


class Code(unittest.TestCase):
    def test_runs_as_main_with_its_arguments(self):
        saved = sys.argv
        status, out, _ = run(["-c", "import sys; print(__name__, sys.argv)", "a", "b"])
        self.assertEqual((status, out), (0, "__main__ ['-c', 'a', 'b']\n"))
        self.assertIs(sys.argv, saved)

    def test_exit_status_and_exceptions(self):
        self.assertEqual(run(["-c", "raise SystemExit(300)"])[0], 44)
        status, _, err = run(["-c", "1/0"])
        self.assertEqual(status, 1)
        self.assertIn('File "<string>", line 1', err)
        self.assertIn("ZeroDivisionError", err)

    def test_exit_handlers_run_as_at_the_interpreters_exit(self):
        code = "import atexit, sys; atexit.register(print, 'handler ran'); print('body'); sys.exit(3)"
        self.assertEqual(run(["-c", code])[:2], (3, "body\nhandler ran\n"))
        # A raising handler is reported; the status stays the script's.
        status, out, err = run(["-c", "import atexit; atexit.register(lambda: 1/0); print('ok')"])
        self.assertEqual((status, out), (0, "ok\n"))
        self.assertIn("ZeroDivisionError", err)

    def test_a_syntax_error_is_the_error_only(self):
        status, _, err = run(["-c", "def f(:"])
        self.assertEqual(status, 1)
        self.assertIn('File "<string>", line 1', err)
        self.assertIn("SyntaxError", err)
        self.assertNotIn("Traceback", err)

    def test_missing_code_is_a_usage_error(self):
        status, _, err = run(["-c"])
        self.assertEqual(status, 2)
        self.assertIn("-c CODE", err)


class Scripts(unittest.TestCase):
    def test_an_interpreter_option_is_named_as_one(self):
        for option in ("-u", "-X", "--version"):
            status, _, err = run([option, "manage.py"])
            self.assertEqual(status, 2)
            self.assertIn(f"error: {option}: exec takes no interpreter options", err)

    def test_found_in_the_app_directories(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "tool.py"), "w") as f:
                f.write("import sys\nprint(sys.argv[1:])\nsys.exit(3)\n")
            self.assertEqual(run(["tool.py", "x"], [(d, "./app")])[:2], (3, "['x']\n"))
            status, _, err = run(["nosuch.py"], [(d, "./app")])
            self.assertEqual(status, 2)
            self.assertIn("nosuch.py: no such script in the app's directories (given with -p at build time: ./app)", err)

    def test_a_script_imports_the_modules_beside_it(self):
        # As `python scripts/tool.py`: its directory comes first on the path.
        with tempfile.TemporaryDirectory() as d:
            os.mkdir(os.path.join(d, "scripts"))
            with open(os.path.join(d, "scripts", "tool.py"), "w") as f:
                f.write("import sys, beside_tool_xyz\nprint(beside_tool_xyz.X, sys.path[0])\n")
            with open(os.path.join(d, "scripts", "beside_tool_xyz.py"), "w") as f:
                f.write("X = 'beside'\n")
            saved = sys.path[:]
            try:
                status, out, err = run(["scripts/tool.py"], [(d, "./app")])
                self.assertEqual((status, out), (0, f"beside {os.path.join(d, 'scripts')}\n"), err)
                self.assertEqual(sys.path, saved)
            finally:
                sys.modules.pop("beside_tool_xyz", None)
