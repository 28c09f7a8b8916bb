"""``opgraph`` command line: compile, run, opt, hw, calibrate.

Every user error prints one line ``error: <file>:<line>: <message>`` and exits with 2;
``--debug`` shows the Python traceback instead.
"""

from __future__ import annotations

import argparse
import runpy
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

from opgraph.errors import OpgraphError, UsageError
from opgraph.tracing import display_path

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        raise UsageError(f"{self.prog}: {message}")


# ------------------------------------------------------------------ pipelines


def _located(exc: BaseException, path: Path) -> OpgraphError:
    """A user-code exception as an error at the deepest line of the pipeline file."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return UsageError(f"syntax error: {exc.msg}", display_path(exc.filename), exc.lineno)
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if Path(frame.f_code.co_filename).resolve() == path.resolve():
            line = lineno
    return UsageError(f"{type(exc).__name__}: {exc}", display_path(str(path)), line)


def load_pipeline(path_text: str, entry: str | None):
    from opgraph.pipeline import Pipeline

    path = Path(path_text)
    if not path.is_file():
        raise UsageError("no such pipeline file", path_text)
    sys.path.insert(0, str(path.resolve().parent))
    try:
        namespace = runpy.run_path(str(path), run_name="__opgraph__")
    except OpgraphError:
        raise
    except SystemExit as e:
        raise UsageError(f"the pipeline file called exit({e.code}) while being loaded", path_text) from None
    except Exception as e:
        raise _located(e, path) from None
    finally:
        sys.path.pop(0)
    pipelines = {name: obj for name, obj in namespace.items() if isinstance(obj, Pipeline)}
    if not pipelines:
        raise UsageError("no @og.pipeline function in this file", path_text)
    if entry is not None:
        if entry not in pipelines:
            raise UsageError(f"no pipeline named '{entry}' (pipelines: {', '.join(sorted(pipelines))})", path_text)
        return pipelines[entry]
    if len(pipelines) > 1:
        raise UsageError(f"several pipelines ({', '.join(sorted(pipelines))}): choose one with --entry", path_text)
    return next(iter(pipelines.values()))


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_args_kv(pipeline, items: list[str]) -> dict[str, Any]:
    import inspect

    params = list(inspect.signature(pipeline.fn).parameters)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--arg expects key=value, got '{item}'")
        if key not in params:
            raise UsageError(f"pipeline '{pipeline.name}' has no parameter '{key}' (parameters: {', '.join(params)})")
        out[key] = _parse_value(value)
    return out


def _trace(pipeline, kwargs: dict[str, Any], path: Path):
    try:
        return pipeline.trace_full(**kwargs)
    except OpgraphError:
        raise
    except Exception as e:
        raise _located(e, path) from None


# -------------------------------------------------------------------- commands


def _write_file_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def cmd_compile(args: argparse.Namespace) -> int:
    from opgraph.driver import compile_traced

    pipeline = load_pipeline(args.pipeline, args.entry)
    traced = _trace(pipeline, parse_args_kv(pipeline, args.arg), Path(args.pipeline))
    plan = compile_traced(traced, hw=args.hw, pass_pipeline=args.pass_pipeline, cwd=Path.cwd())
    extra = {}
    if args.emit == "slurm":
        from opgraph.driver import resolve_hw
        from opgraph.slurm import slurm_script

        spec = resolve_hw(args.hw, Path.cwd())
        extra["job.slurm"] = slurm_script(plan.doc, spec, str(Path(args.output).resolve()))
    plan.write(args.output, print_ir_after_all=args.print_ir_after_all, extra=extra)
    if args.explain:
        print(plan.explain(), end="")
    print(f"wrote {args.output}/plan.mlir and {args.output}/plan.json", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from opgraph.run_progress import cli_run  # progress on stderr, results on stdout

    return cli_run(args)


def cmd_opt(args: argparse.Namespace) -> int:
    from opgraph.dialects.context import make_context, parse_module, print_module
    from opgraph.passes.pipeline import run_pipeline

    path = Path(args.file)
    if not path.is_file():
        raise UsageError("no such IR file", args.file)
    ctx = make_context()
    module = parse_module(path.read_text(), display_path(str(path)), ctx)
    try:
        run_pipeline(module, args.pass_pipeline, ctx, None)
    except OpgraphError as e:
        if e.file is None:  # ops without a loc(...) in the file: name the file at least
            e.file = display_path(str(path))
        raise
    text = print_module(module)
    if args.output:
        _write_file_atomically(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_hw(args: argparse.Namespace) -> int:
    from opgraph import hwspec

    if args.hw_command == "detect":
        text = hwspec.detect_machine().to_yaml()
        if args.output:
            _write_file_atomically(Path(args.output), text)
            print(f"wrote {args.output}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        return 0
    spec = hwspec.load_spec(args.spec, cwd=Path.cwd())
    if args.hw_command == "validate":
        print(f"{args.spec}: valid ({spec.name})")
        return 0
    if getattr(args, "emit", None) == "mlir":
        from xdsl.dialects.builtin import ModuleOp

        from opgraph.dialects.context import print_module
        from opgraph.dialects.machine import attach_machine

        module = ModuleOp([])
        attach_machine(module, spec)
        module.verify()
        sys.stdout.write(print_module(module))
    else:
        print(hwspec.spec_summary(spec))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from opgraph.calibrate import cli_calibrate

    return cli_calibrate(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="opgraph", description="Operator-graph compiler for dataframe + DL pipelines")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def pipeline_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("pipeline", help="Python file defining an @og.pipeline function")
        p.add_argument("--entry", help="pipeline name when the file defines several")
        p.add_argument("--arg", action="append", default=[], metavar="K=V", help="pipeline argument")

    p = sub.add_parser("compile", help="trace and compile a pipeline into a plan")
    pipeline_args(p)
    p.add_argument("--hw", required=True, help="hardware spec: packaged name (summit, frontier, ...) or YAML path")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--print-ir-after-all", action="store_true", help="also write OUT/ir/NN-<pass>.mlir")
    p.add_argument("--pass-pipeline", help="mlir-opt style pass pipeline (default: opgraph's)")
    p.add_argument("--emit", choices=["slurm"], help="also write OUT/job.slurm")
    p.add_argument("--explain", action="store_true", help="print the per-op plan table")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run a pipeline")
    pipeline_args(p)
    p.add_argument("--engine", choices=["local", "mpi", "ray"], default="local")
    p.add_argument("-n", "--ranks", type=int, default=1)
    p.add_argument("--hw", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("opt", help="run passes on an MLIR file (like mlir-opt)")
    p.add_argument("file")
    p.add_argument("--pass-pipeline", required=True)
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_opt)

    p = sub.add_parser("hw", help="hardware specs")
    hw_sub = p.add_subparsers(dest="hw_command", required=True, parser_class=_Parser)
    v = hw_sub.add_parser("validate", help="check a spec")
    v.add_argument("spec")
    s = hw_sub.add_parser("show", help="summarise a spec")
    s.add_argument("spec")
    s.add_argument("--emit", choices=["mlir"])
    d = hw_sub.add_parser("detect", help="write a spec of this machine")
    d.add_argument("-o", "--output")
    p.set_defaults(func=cmd_hw)

    p = sub.add_parser("calibrate", help="measure this machine into a spec")
    p.add_argument("-o", "--output", help="spec file to write (default: print the YAML)")
    p.add_argument("--hw", help="base spec to fill (default: `opgraph hw detect` of this machine)")
    p.add_argument("--quick", action="store_true", help="small sizes (~10 s; for tests, not for planning)")
    p.add_argument("--no-mpi", action="store_true", help="skip the MPI ping-pong")
    p.add_argument("--quiet", action="store_true", help="no per-measurement lines on stderr")
    p.set_defaults(func=cmd_calibrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except OpgraphError as e:
        if debug:
            traceback.print_exc()
        print(e.cli_line(), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in opgraph: still one line unless --debug
        if debug:
            traceback.print_exc()
        print(f"error: internal error: {type(e).__name__}: {e} (rerun with --debug for details)", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
