"""Command line: ``lrdebug run | report | diff | plot``; ``main(argv) -> exit status``.

Exit statuses: ``run`` returns the target's own status; ``report`` 0, or 1 when a finding at or
above ``--fail-on`` exists; ``diff`` 0 identical, 1 different; every command 2 for unusable input.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path
from typing import Sequence

from ._version import __version__


class CommandError(Exception):
    """A user error: printed as one line, exit status 2."""


def _codes(text: str) -> list[str]:
    from .rules import CODES

    codes = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in codes if c not in CODES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown finding code(s): {', '.join(unknown)}")
    return codes


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _rank_spec(text: str) -> list[int]:
    from .tracefile.reader import parse_ranks

    try:
        return parse_ranks(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other bad input
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Version(argparse.Action):
    """``lrdebug 0.1.0 (hot path: compiled)``: which implementation records is part of the version."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from .record import hotpath  # the extension is found without importing torch

        print(f"lrdebug {__version__} (hot path: {hotpath.DESCRIPTION})")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lrdebug", description="Record and check what PyTorch optimizers and LR schedulers did.")
    parser.add_argument("--version", action=_Version, help="show the version and which hot path records, and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a training script under lrdebug.trace()")
    run.add_argument("--out", help="trace directory (default: ./lrdebug-traces/<time>-<pid>/)")
    run.add_argument("--strict", action="store_true", help="raise LRDebugError at the first misuse")
    run.add_argument("--ignore", type=_codes, default=[], help="comma-separated finding codes to silence")
    run.add_argument("--sample-updates", type=_non_negative, default=0, metavar="N",
                     help="measure the applied update every N optimizer steps (0: off)")
    run.add_argument("--cuda-timing", action="store_true", help="time optimizer steps with CUDA events")
    run.add_argument("-m", dest="module", help="run a module as `python -m` would")
    run.add_argument("target", nargs=argparse.REMAINDER, help="script.py [args...] (or the module's args with -m)")

    report = sub.add_parser("report", help="summarise a trace")
    report.add_argument("trace", nargs="?", help="trace directory (default: newest under ./lrdebug-traces/)")
    report.add_argument("--format", choices=["text", "json", "markdown", "html"], default="text")
    report.add_argument("-o", "--output", help="output file (required for --format html; else stdout)")
    report.add_argument("--fail-on", choices=["error", "warning", "info", "never"], default="never",
                        help="exit 1 when a finding at or above this severity exists")
    report.add_argument("--rank", type=_rank_spec, default=None, metavar="R",
                        help="report these ranks only: R, A-B or a list like 0-3,8 (others are not read)")
    report.add_argument("--width", type=int, default=None, help=argparse.SUPPRESS)

    diff = sub.add_parser("diff", help="first step where two traces' learning rates differ")
    diff.add_argument("trace_a")
    diff.add_argument("trace_b")
    diff.add_argument("--rank", type=_non_negative, default=None, metavar="R",
                      help="compare rank R alone (default: every rank both traces have)")
    diff.add_argument("--format", choices=["text", "json", "html"], default="text")
    diff.add_argument("-o", "--output", help="output file (required for --format html)")

    plot = sub.add_parser("plot", help="plot the LR schedule to an image (needs lrdebug[plot])")
    plot.add_argument("trace")
    plot.add_argument("-o", "--output", required=True, help="output file: .png, .svg or .pdf")
    return parser


def _end_run_options(argv: list[str]) -> list[str]:
    """``run -m MOD --flag ...``: argparse would take the module's own options for ``run``'s, so
    everything after the module name is marked as the target's (``--``)."""
    if argv[:1] != ["run"]:
        return argv
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            if i + 2 <= len(argv) and argv[i + 2:i + 3] != ["--"]:
                return argv[:i + 2] + ["--"] + argv[i + 2:]
            return argv
        if arg in ("--out", "--ignore", "--sample-updates"):
            i += 2
        elif arg.startswith("-") and arg != "--":
            i += 1
        else:
            return argv
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    argv = _end_run_options(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return run_command(args)
        handler = {"report": report_command, "diff": diff_command, "plot": plot_command}
        return handler[args.command](args)
    except CommandError as e:
        print(f"lrdebug {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # TraceError and friends from the readers
        from .tracefile import TraceError

        if isinstance(e, TraceError):
            print(f"lrdebug {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise


def run_command(args: argparse.Namespace) -> int:
    """Run the target exactly as ``python script.py args`` / ``python -m module args`` would."""
    target = list(args.target)
    if target[:1] == ["--"]:
        target = target[1:]
    if args.module is None and target[:1] == ["-m"]:
        if len(target) < 2:
            raise CommandError("-m needs a module name")
        args.module, target = target[1], target[2:]
    if args.module is None:
        if not target:
            raise CommandError("nothing to run: give a script (lrdebug run train.py) or a module (-m pkg.mod)")
        script = _resolve_script(target[0])
        argv = [script] + target[1:]
    else:
        argv = [args.module] + target

    from .tracefile import TraceError
    from .tracefile.writer import check_output_dir

    try:  # refuse an existing trace before paying for importing torch
        if args.out is not None:
            check_output_dir(args.out, _run_id(), _rank_from_env())
    except TraceError as e:
        raise CommandError(str(e)) from None

    from .record import child

    child.suppress()  # this process records itself: a hook inherited from an outer `lrdebug run` stays idle
    from .record import trace

    t = trace(out=args.out, strict=args.strict, ignore=args.ignore, sample_updates=args.sample_updates,
              cuda_timing=args.cuda_timing)  # its close prints the job's one summary, children included
    launch = child.Launch(t, strict=args.strict, ignore=args.ignore, sample_updates=args.sample_updates,
                          cuda_timing=args.cuda_timing)  # the processes the target starts are recorded too

    os.environ.setdefault("LRDEBUG_RUN_ID", _run_id())
    saved_argv, saved_path0 = sys.argv, sys.path[0] if sys.path else None
    sys.argv = argv
    if args.module is None:
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
    else:
        sys.path[0] = os.getcwd()
    status = 0
    try:
        with t, launch:
            try:
                if args.module is None:
                    runpy.run_path(argv[0], run_name="__main__")  # not an absolute path: it becomes sys.argv[0]
                else:
                    runpy.run_module(args.module, run_name="__main__", alter_sys=True)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as e:
                if t.recorder is not None:  # the status file says how the run ended
                    t.recorder.ended = t.recorder.ended or f"exception: {type(e).__name__}"
                _print_user_traceback(e)  # before the trace's summary, so the path is the last thing said
                status = 1
    except SystemExit as e:
        status = _exit_status(e.code)
    except KeyboardInterrupt:
        raise  # Python prints it and dies by SIGINT, as the script alone would
    finally:
        sys.argv = saved_argv
        if saved_path0 is not None:
            sys.path[0] = saved_path0
    return status


def _resolve_script(name: str) -> str:
    """The file to run: ``name`` itself, or, as a shell would find it, a console script on PATH whose
    target is Python (torchrun, accelerate, a project's own entry point), run as Python would run
    it: ``sys.argv[0]`` is its path."""
    if os.path.isfile(name):
        return name
    import shutil

    bare = os.sep not in name and (os.altsep is None or os.altsep not in name)
    found = shutil.which(name) if bare else None
    if found is None:
        raise CommandError(f"{name}: no such file" + (" nor executable on PATH" if bare else ""))
    if not _is_python_script(found):
        hint = " (torchrun: lrdebug run -m torch.distributed.run ...)" if name == "torchrun" else ""
        raise CommandError(f"{name} ({found}) is not a Python script, so it cannot run inside lrdebug; "
                           f"run the module it starts instead: lrdebug run -m MODULE ...{hint}")
    return found


def _is_python_script(path: str) -> bool:
    """A ``.py`` file, or a file whose shebang runs a python (pip's console scripts, including the
    ``#!/bin/sh`` + ``'''exec' python`` form pip writes for interpreter paths too long for a shebang)."""
    if path.endswith(".py"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(2048)
    except OSError:
        return False
    if not head.startswith(b"#!") or b"\0" in head:
        return False
    first, _, rest = head.partition(b"\n")
    words = first[2:].decode("utf-8", "replace").split()
    if any(os.path.basename(w).startswith("python") for w in words[:2]):
        return True
    return words[:1] == ["/bin/sh"] and rest.startswith(b"'''exec' ") and b"python" in rest.split(b"\n", 1)[0]


def _rank_from_env() -> int | None:
    """The rank a launcher gave this process (None after a torchrun restart, which may reuse its partition)."""
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0"):
        return None
    v = os.environ.get("RANK", "")
    return int(v) if v.strip().isdigit() else None


def _print_user_traceback(exc: BaseException) -> None:
    """The traceback python would print: frames of lrdebug and runpy above the script are left out."""
    import traceback

    tb = exc.__traceback__
    internal = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(runpy.__file__)))
    def is_internal(filename: str) -> bool:
        return filename.startswith("<frozen runpy") or os.path.dirname(os.path.abspath(filename)) in internal

    while tb is not None and is_internal(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb if tb is not None else exc.__traceback__)


def _run_id() -> str:
    from .record.environment import torchrun_run_id

    rid = os.environ.get("LRDEBUG_RUN_ID") or torchrun_run_id()
    if rid is None:
        import uuid

        rid = uuid.uuid4().hex
        os.environ["LRDEBUG_RUN_ID"] = rid
    return rid


def _exit_status(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


# ------------------------------------------------------------------------------ report, diff, plot
def _console(width: int | None = None, file=None):
    from rich.console import Console

    file = file or sys.stdout
    if width is None and not os.environ.get("COLUMNS") and not getattr(file, "isatty", lambda: False)():
        width = 120  # a log or a pipe: rich would assume 80 columns and cut the LR table
    return Console(file=file, width=width, highlight=False)


def _html_output(args) -> Path:
    """``-o`` for ``--format html``, checked before the trace is read: required, and plotly installed."""
    if not args.output:
        raise CommandError("--format html writes a file: give -o FILE (e.g. -o report.html)")
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise CommandError("the HTML report needs plotly: pip install 'lrdebug[html]'") from None
    return Path(args.output)


def _write_text(command: str, out: Path, text: str) -> None:
    """Write a whole report to ``out`` (replaced if it exists, as ``lrdebug plot`` does) and say where."""
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"{out}: cannot write: {exc.strerror or exc}") from None
    print(f"lrdebug {command}: wrote {out}", file=sys.stderr)


def report_command(args) -> int:
    from .report import Report

    out = _html_output(args) if args.format == "html" else None
    report = Report(args.trace, ranks=args.rank)
    for note in report.trace.skipped:
        print(f"lrdebug report: skipped unreadable part {note}", file=sys.stderr)
    if out is not None:
        from .report.renderers.html import render_html

        _write_text("report", out, render_html(report))
        return 1 if report.fails(args.fail_on) else 0
    if args.output:
        from io import StringIO

        buf = StringIO()
        if args.format == "json":
            from .report.renderers.jsonrenderer import render

            buf.write(render(report))
        elif args.format == "markdown":
            buf.write(report.to_markdown())
        else:
            _console(args.width or 120, file=buf).print(report)
        _write_text("report", Path(args.output), buf.getvalue())
        return 1 if report.fails(args.fail_on) else 0
    try:
        if args.format == "json":
            from .report.renderers.jsonrenderer import render

            sys.stdout.write(render(report))
        elif args.format == "markdown":
            sys.stdout.write(report.to_markdown())
        else:
            _console(args.width).print(report)
        sys.stdout.flush()
    except BrokenPipeError:  # `lrdebug report | head`: the reader left, the status still counts
        sys.stdout = open(os.devnull, "w")
    return 1 if report.fails(args.fail_on) else 0


def diff_command(args) -> int:
    import json

    from .report import diff_traces

    out = _html_output(args) if args.format == "html" else None
    result = diff_traces(args.trace_a, args.trace_b, rank=args.rank)
    for side in ("a", "b"):
        for note in result["skipped_parts"][side]:
            print(f"lrdebug diff: skipped unreadable part of {side.upper()}: {note}", file=sys.stderr)
    if out is not None:
        from .report import Report
        from .report.renderers.html import render_diff_html

        curves = []
        for path in (args.trace_a, args.trace_b):
            try:
                curves.append(Report(path).rank_curves())
            except Exception:  # noqa: BLE001 - the tables still say everything; charts are a bonus
                curves.append(None)
        _write_text("diff", out, render_diff_html(result, *curves))
        return 0 if result["identical"] else 1
    if args.output:
        text = json.dumps(result, indent=2) + "\n" if args.format == "json" else None
        if text is None:
            from io import StringIO

            from .report.renderers.text import diff_renderables

            buf = StringIO()
            console = _console(120, file=buf)
            for r in diff_renderables(result):
                console.print(r)
            text = buf.getvalue()
        _write_text("diff", Path(args.output), text)
        return 0 if result["identical"] else 1
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        from .report.renderers.text import diff_renderables

        console = _console()
        for r in diff_renderables(result):
            console.print(r)
    return 0 if result["identical"] else 1


def plot_command(args) -> int:
    out = Path(args.output)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise CommandError(f"{out}: the output must end in .png, .svg or .pdf")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CommandError("plotting needs matplotlib: pip install 'lrdebug[plot]'") from None
    from .report import Report
    from .report.renderers.image import plot_report

    report = Report(args.trace)
    for note in report.trace.skipped:
        print(f"lrdebug plot: skipped unreadable part {note}", file=sys.stderr)
    try:
        plot_report(report, out)
    except OSError as exc:
        raise CommandError(f"{out}: cannot write: {exc.strerror or exc}") from None
    print(f"lrdebug plot: wrote {out}", file=sys.stderr)
    return 0
