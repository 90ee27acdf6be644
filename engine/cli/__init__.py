"""`otl`: a thin layer over the Python API. Each command parses into a config, calls one function
and prints (build_commands.py: cuts, engines, featurize, cache; train_commands.py: fit, evaluate,
predict; args.py: the argument groups they share).

Every command prints a short human summary; with --json it prints exactly one JSON object on
stdout (progress and warnings go to stderr). Errors exit with status 2 and one line on stderr
(with --json, also one {"error": ...} object on stdout); OTL_DEBUG=1 shows the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings

__all__ = ["build_parser", "main"]

# Anticipated failures: bad input, missing or stale artifacts, missing packages, resources. Every
# project error derives from ValueError (BuildError, ArtifactError, DataError, ...) or RuntimeError
# (RunnerError); OSError covers unreadable files, ArithmeticError non-finite numerics.
EXPECTED_ERRORS = (ValueError, RuntimeError, OSError, ImportError, MemoryError, ArithmeticError, LookupError)


class UsageError(ValueError):
    """A command line argparse refuses (unknown option, a number out of range): `prog: error: ...`."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is raised instead of printed and exited on, so that main() can
    honour the error contract (one line on stderr, one JSON object with --json, status 2)."""

    def error(self, message: str):
        raise UsageError(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    from engine.cli import build_commands, report_command, train_commands  # here: Ctrl-C while importing is main's

    p = _Parser(prog="otl", description="Optical transfer learning: builds, features, "
                                                        "gradient-free training.")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (build_commands.add_cuts, build_commands.add_engines, build_commands.add_featurize,
                build_commands.add_cache, train_commands.add_fit, train_commands.add_evaluate,
                train_commands.add_predict, report_command.add_report):
        add(sub)
    return p


def main(argv=None) -> int:
    """Exit status: 0, 2 for an anticipated error (one line), 130 when interrupted (Ctrl-C, also
    while importing or parsing: one line "interrupted"), 141 when the reader of stdout went away
    (`otl cuts resnet18 | head`: quietly, like a process killed by SIGPIPE)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        code = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return code
    except BrokenPipeError:
        # Python's advice (signal docs, "Note on SIGPIPE"): point stdout at devnull so that the
        # flush at exit does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:  # before the command ran (importing, parsing); _run handles it after
        print("otl: interrupted", file=sys.stderr)
        return 130


def _run(argv: list) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        return _usage_fail(e, argv)
    if getattr(args, "quiet", False):
        _quiet()
    t0 = time.perf_counter()
    try:
        with _stdout_to_stderr(args.json):
            res = args.func(args)
    except BrokenPipeError:
        raise
    except EXPECTED_ERRORS as e:
        if os.environ.get("OTL_DEBUG"):  # the traceback, for a bug report
            raise
        return _fail(args, f"{type(e).__name__}: {_one_line(e)}")
    except KeyboardInterrupt:
        _fail(args, "interrupted")
        return 130
    if args.json:
        res = dict(res)
        res.setdefault("timings", {})["total"] = round(time.perf_counter() - t0, 4)
        print(json.dumps(res, default=str))
    return 0


def _quiet() -> None:
    """--quiet: no warnings, except skipped images (DataWarning): silently training on fewer images
    than the folder holds would be a wrong result, not noise."""
    from engine.data.errors import DataWarning

    warnings.simplefilter("ignore")
    warnings.filterwarnings("default", category=DataWarning)


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool):
    """With --json, stdout holds exactly one JSON object: while the command runs, whatever writes to
    stdout (print, torch.hub's "Downloading: ...", C libraries, tqdm) goes to stderr, at the file
    descriptor level; the real stdout comes back for the JSON object."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 (a closed stdout): Python-level redirection only
        saved = None
    if saved is not None:
        os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:  # what is still buffered for fd 1 (Python's own stdout, C stdio) goes out while it is stderr
        for stream in (sys.stderr, sys.__stdout__):
            if stream is not None:
                stream.flush()
        _flush_c_stdio()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _flush_c_stdio() -> None:
    """fflush(NULL): C libraries' buffered stdout, where the C library can be reached."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


def _one_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(text.split()) or repr(e)


def _usage_fail(e: UsageError, argv: list) -> int:
    command = e.prog.removeprefix("otl").strip() or None
    if "--json" in argv:
        print(json.dumps({"error": str(e), "command": command}))
    print(f"{e.prog}: error: {e} (see `{e.prog} --help`)", file=sys.stderr)
    return 2


def _fail(args, msg: str) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"error": msg, "command": args.command}))
    print(f"otl {args.command}: error: {msg}", file=sys.stderr)
    return 2
