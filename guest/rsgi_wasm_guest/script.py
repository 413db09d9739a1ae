"""``rsgi-wasm exec``: run one of the app's scripts or a module as ``__main__``.

Scripts such as Django's ``manage.py`` are found in the app's directories,
which the host mounts read-only at the guest paths they had at build time.
"""

import atexit
import os
import runpy
import sys
import traceback
from typing import List, Sequence, Tuple

from .compat import file_error_hint, stdlib_hint


class ScriptNotFound(Exception):
    """The script is in none of the app's directories."""


def find_script(name: str, roots: Sequence[Tuple[str, str]]) -> str:
    """The guest path of script ``name``; ``roots`` pairs each guest
    directory with the host directory it came from (for the message)."""
    if os.path.isabs(name):
        if os.path.isfile(name):
            return name
    else:
        for guest, _host in roots:
            candidate = os.path.join(guest, name)
            if os.path.isfile(candidate):
                return candidate
    looked = ", ".join(host for _, host in roots) or "(none)"
    raise ScriptNotFound(f"{name}: no such script in the app's directories (given with -p at build time: {looked})")


def run(argv: List[str], roots: Sequence[Tuple[str, str]]) -> int:
    """Run ``argv`` like ``python SCRIPT ARGS``, ``python -m MODULE ARGS``
    or ``python -c CODE ARGS`` and return the exit status (tracebacks go to
    stderr)."""
    if not argv or (argv[0] in ("-m", "-c") and len(argv) < 2):
        print(
            "usage: rsgi-wasm exec APP.wasm -- SCRIPT [ARGS...] | -m MODULE [ARGS...] | -c CODE [ARGS...]",
            file=sys.stderr,
        )
        return 2
    if argv[0].startswith("-") and argv[0] not in ("-m", "-c"):
        # `python -u script.py`: an interpreter option, which no script is
        # named like; say so rather than that no such script exists.
        print(
            f"error: {argv[0]}: exec takes no interpreter options; give a SCRIPT, -m MODULE or -c CODE",
            file=sys.stderr,
        )
        return 2
    saved, saved_path = sys.argv, sys.path[:]
    try:
        if argv[0] == "-c":
            # As `python -c`: argv[0] is "-c", the code runs in a fresh
            # `__main__` namespace and its tracebacks name "<string>".
            try:
                code = compile(argv[1], "<string>", "exec")
            except SyntaxError as e:
                # The error and its caret, without this module's frames.
                traceback.print_exception(type(e), e, None)
                return 1
            sys.argv = ["-c"] + argv[2:]
            exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
        elif argv[0] == "-m":
            if not _module_exists(argv[1]):
                # As `python -m`: one line, not runpy's traceback.
                print(f"error: No module named {argv[1]}", file=sys.stderr)
                return 1
            sys.argv = [argv[1]] + argv[2:]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            path = find_script(argv[0], roots)
            sys.argv = [path] + argv[1:]
            # As `python dir/script.py`: the script's own directory comes
            # first, so it imports the modules beside it.
            here = os.path.dirname(path)
            if sys.path[:1] != [here]:
                sys.path.insert(0, here)
            runpy.run_path(path, run_name="__main__")
        return 0
    except ScriptNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            # What a POSIX parent sees of `sys.exit(300)`: its low byte.
            return e.code & 0xFF
        print(e.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        traceback.print_exc()
        return 130  # as CPython's: killed by SIGINT, 128 + 2
    except BaseException as e:
        traceback.print_exc()
        hint = file_error_hint(e) or stdlib_hint(e)
        if hint:
            print(f"({hint})", file=sys.stderr)
        return 1
    finally:
        # As CPython does at exit, after the exit status is known: the
        # handlers the script and its modules registered (logging's
        # shutdown flushes buffered records). It prints their errors.
        atexit._run_exitfuncs()
        sys.argv = saved
        sys.path[:] = saved_path
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass


def _module_exists(name: str) -> bool:
    """Whether module ``name`` can be found (its parent packages are
    imported to look, as ``python -m`` does)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_import(load_app) -> int:
    """Import the app (``load_app``; none: it is in the snapshot already):
    0, or 1 with the reason on stderr."""
    from .boot import BuildError

    if load_app is None:
        return 0
    try:
        load_app()
    except BuildError:  # printed to stderr as it was raised
        return 1
    return 0
