"""Untrusted traces: whatever the files hold, reading succeeds or fails with one clear line.

Real traces are damaged at random (bytes overwritten, files cut, columns dropped or retyped, huge
strings, metadata of the wrong shape, a schema version from the future). ``lrdebug.load`` must
return a DataFrame or raise ``TraceError``; ``lrdebug report`` must exit 0, 1 or 2, with exactly
one line on stderr when it is 2, never a traceback and never a hang.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lrdebug
from lrdebug import cli
from lrdebug.tracefile.schema import METADATA_KEY, STATUS_FILE

TIME_LIMIT_S = 30  # one read or report of a small damaged trace; a hang fails the test instead of blocking


def _train(steps: int, misuse: bool = False, group_name: str | None = None) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    groups = [{"params": [model.weight]}, {"params": [model.bias], "lr": 0.01}]
    if group_name is not None:
        groups[0]["name"] = group_name
    opt = torch.optim.SGD(groups, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    if misuse:
        sched.step()  # scheduler-before-optimizer: a finding with a call site
    for _ in range(steps):
        opt.zero_grad()
        model(torch.ones(3, 4)).sum().backward()
        opt.step()
        sched.step()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A two-rank trace with a finding: rank 0 as closed (parts merged into one file), rank 1 as a
    killed process leaves it (one part per flush)."""
    out = tmp_path_factory.mktemp("fuzz") / "trace"
    saved = {k: os.environ.get(k) for k in ("LRDEBUG_RUN_ID", "RANK")}
    os.environ["LRDEBUG_RUN_ID"] = "fuzz-run"
    try:
        for rank in ("0", "1"):
            os.environ["RANK"] = rank
            with lrdebug.trace(out=out, summary=False, flush_rows=8, ignore=["scheduler-before-optimizer"]) as t:
                for _ in range(3):
                    _train(4, misuse=True)
                    t.dataframe()  # one part per chunk
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    for merged in (out / "rank=1").glob("part-*-*.parquet"):
        table = pq.read_table(merged)
        for i, at in enumerate(range(0, table.num_rows, 20)):
            pq.write_table(table.slice(at, 20), out / "rank=1" / f"part-{i:06d}.parquet")
        merged.unlink()
    return out


# ---------------------------------------------------------------------------------- mutations


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _table_mutation(table: pa.Table, kind: str, name: str, data) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    if kind == "drop":
        return table.drop_columns([name]) if name in table.column_names else table
    if kind == "retype":
        i = table.column_names.index(name)
        new = data.draw(st.sampled_from(["string", "int", "float", "list", "struct", "null"]))
        n = table.num_rows
        values = {
            "string": lambda: pa.array([data.draw(st.text(max_size=8)) for _ in range(n)]),
            "int": lambda: pa.array([data.draw(st.integers(-2**63, 2**63 - 1)) for _ in range(n)], pa.int64()),
            "float": lambda: pa.array([data.draw(st.floats(allow_nan=True)) for _ in range(n)], pa.float64()),
            "list": lambda: pa.array([[1.0, 2.0]] * n),
            "struct": lambda: pa.array([{"a": 1}] * n),
            "null": lambda: pa.nulls(n),
        }[new]()
        return table.set_column(i, name, values).replace_schema_metadata(meta)
    if kind == "huge":
        i = table.column_names.index(name)
        text = data.draw(st.sampled_from(["x" * 3_000_000, "[red]" * 200_000, "\x1b[2J" * 100_000, "\u202e" * 10]))
        return table.set_column(i, name, pa.array([text] * table.num_rows)).replace_schema_metadata(meta)
    if kind == "extreme":
        i = table.column_names.index(name)
        typ = table.schema.field(name).type
        if pa.types.is_integer(typ):
            info = {8: (-128, 127), 16: (-2**15, 2**15 - 1), 32: (-2**31, 2**31 - 1), 64: (-2**63, 2**63 - 1)}
            lo, hi = info[typ.bit_width]
            values = [data.draw(st.sampled_from([lo, hi, -1, 0])) for _ in range(table.num_rows)]
        elif pa.types.is_floating(typ):
            values = [data.draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), -1e308, 0.0]))
                      for _ in range(table.num_rows)]
        else:
            return table
        return table.set_column(i, name, pa.array(values, typ)).replace_schema_metadata(meta)
    if kind == "metadata":
        meta[METADATA_KEY] = data.draw(_metadata_values())
        return table.replace_schema_metadata(meta)
    raise AssertionError(kind)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _metadata_values():
    def dumped(obj):
        return json.dumps(obj).encode()

    future = {"schema_version": "99.0", "run_id": "fuzz-run"}
    return st.one_of(
        st.binary(max_size=40),
        _json.map(dumped),
        st.just(dumped(future)),
        st.fixed_dictionaries({}, optional={
            "schema_version": st.one_of(st.text(max_size=6), st.integers(), st.floats(), st.just("9" * 5000)),
            "optimizers": _json, "schedulers": _json, "rank": _json, "world_size": _json, "argv": _json,
            "start_unix_ns": _json, "run_id": _json, "pid": _json,
        }).map(dumped),
    )


def _status_values(original: dict):
    keys = sorted(original)
    meta_keys = sorted(original.get("meta") or {})

    def with_key(key_value):
        key, value = key_value
        return {**original, key: value}

    def with_meta_key(key_value):
        key, value = key_value
        return {**original, "meta": {**original["meta"], key: value}}

    return st.one_of(
        _json,
        st.tuples(st.sampled_from(keys), _json).map(with_key),
        st.tuples(st.sampled_from(meta_keys), _json).map(with_meta_key),
        st.just({**original, "schema_version": "2.0"}),
        st.just({**original, "findings": [{"code": "x" * 100_000, "count": "many", "line": [], "file": {}}]}),
    )


def mutate(root: Path, data) -> str:
    """Damage the trace in ``root`` in one way; return a description for the failure message."""
    files = _files(root)
    parts = [p for p in files if p.suffix == ".parquet"]
    statuses = [p for p in files if p.name == STATUS_FILE]
    kind = data.draw(st.sampled_from(["bytes", "cut", "append", "table", "table", "status", "status", "layout"]))
    if kind in ("bytes", "cut", "append"):
        target = data.draw(st.sampled_from(files))
        raw = bytearray(target.read_bytes())
        if kind == "bytes":
            at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
            noise = data.draw(st.binary(min_size=1, max_size=64))
            raw[at:at + len(noise)] = noise
        elif kind == "cut":
            raw = raw[:data.draw(st.integers(0, max(len(raw) - 1, 0)))]
        else:
            raw += data.draw(st.binary(min_size=1, max_size=64))
        target.write_bytes(bytes(raw))
        return f"{kind} {target.relative_to(root)}"
    if kind == "table":
        target = data.draw(st.sampled_from(parts))
        table = pq.read_table(target)
        how = data.draw(st.sampled_from(["drop", "retype", "huge", "extreme", "metadata"]))
        names = table.column_names
        if how == "huge":
            names = [n for n in names if pa.types.is_dictionary(table.schema.field(n).type)]
        name = data.draw(st.sampled_from(names))
        pq.write_table(_table_mutation(table, how, name, data), target)
        return f"table {how} {name} in {target.relative_to(root)}"
    if kind == "status":
        target = data.draw(st.sampled_from(statuses))
        original = json.loads(target.read_text())
        target.write_text(json.dumps(data.draw(_status_values(original))))
        return f"status {target.relative_to(root)}"
    how = data.draw(st.sampled_from(["part_dir", "empty_part", "odd_rank", "huge_rank", "no_status", "dev_zero",
                                     "fifo", "only_status", "duplicate", "false_merge"]))
    rank_dir = root / "rank=0"
    some_part = data.draw(st.sampled_from(sorted(rank_dir.glob("part-*.parquet"))))
    if how == "part_dir":
        (rank_dir / "part-009999.parquet").mkdir()
    elif how == "empty_part":
        (rank_dir / "part-009999.parquet").write_bytes(b"")
    elif how == "odd_rank":
        shutil.copytree(rank_dir, root / "rank=٣")
    elif how == "huge_rank":
        shutil.copytree(rank_dir, root / f"rank={'9' * 30}")
    elif how == "no_status":
        (rank_dir / STATUS_FILE).unlink()
    elif how == "dev_zero":
        (rank_dir / STATUS_FILE).unlink()
        os.symlink("/dev/zero", rank_dir / STATUS_FILE)
        os.symlink("/dev/zero", rank_dir / "part-009999.parquet")
    elif how == "fifo":
        os.mkfifo(rank_dir / "part-009999.parquet")
        (rank_dir / STATUS_FILE).unlink()
        os.mkfifo(rank_dir / STATUS_FILE)
    elif how == "only_status":
        for p in rank_dir.glob("part-*.parquet"):
            p.unlink()
    elif how == "duplicate":  # the same rows twice
        shutil.copy(some_part, rank_dir / "part-000777.parquet")
    elif how == "false_merge":  # a file claiming to hold parts it does not
        shutil.copy(some_part, rank_dir / "part-000000-999999.parquet")
    return f"layout {how}"


# ------------------------------------------------------------------------------------- checks


@contextlib.contextmanager
def time_limit(seconds: int):
    def expire(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def report_in_process(path: Path, fmt: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["report", str(path), "--format", fmt, "--fail-on", "warning"])
    return code, err.getvalue()


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_damaged_trace_loads_or_raises_trace_error(pristine, tmp_path_factory, data):
    root = tmp_path_factory.mktemp("damaged") / "trace"
    shutil.copytree(pristine, root, symlinks=True)
    what = mutate(root, data)
    fmt = data.draw(st.sampled_from(["text", "json", "markdown"]))
    with time_limit(TIME_LIMIT_S):
        try:
            df = lrdebug.load(root)
        except lrdebug.TraceError as e:
            assert str(e) and "\n" not in str(e), what
        else:
            assert list(df.columns)[:3] == ["rank", "seq", "t_ns"], what
        code, err = report_in_process(root, fmt)
    assert code in (0, 1, 2), what
    if code == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("lrdebug report: error:"), (what, err)
    assert "Traceback" not in err, what


def test_future_schema_is_refused_with_the_version(pristine, tmp_path):
    root = tmp_path / "trace"
    shutil.copytree(pristine, root)
    for part in root.rglob("part-*.parquet"):
        table = pq.read_table(part)
        meta = json.loads(table.schema.metadata[METADATA_KEY])
        meta["schema_version"] = "7.3"
        pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()}), part)
    for status in root.rglob(STATUS_FILE):
        status.unlink()
    with pytest.raises(lrdebug.TraceError, match=r"7\.3.*upgrade lrdebug"):
        lrdebug.load(root)


def test_reader_never_unpickles_or_evaluates():
    """The modules that read traces use pyarrow and json only."""
    import lrdebug.report  # noqa: F401 - loads everything the report path reads with

    readers = ["storage", "report", "scan", "render", "ranks", "checks", "events"]
    for name in readers:
        module = sys.modules.get(f"lrdebug.{name}")
        if module is None:
            continue
        source = Path(module.__file__).read_text()
        for banned in ("pickle", "eval(", "exec(", "marshal", "shelve", "yaml", "__import__"):
            assert banned not in source, f"lrdebug/{name}.py uses {banned}"


# ------------------------------------------------------------------------- the CLI, as a user runs it


def _lrdebug(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    exe = str(Path(sys.executable).with_name("lrdebug"))
    return subprocess.run([exe, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=120)


def test_cli_on_damaged_traces_never_shows_a_traceback(pristine, tmp_path):
    cases = {}
    cut = tmp_path / "cut"
    shutil.copytree(pristine, cut)
    for part in cut.rglob("part-*.parquet"):
        part.write_bytes(part.read_bytes()[:100])
    cases["every part cut"] = cut
    future = tmp_path / "future"
    shutil.copytree(pristine, future)
    for status in future.rglob(STATUS_FILE):
        status.write_text(json.dumps({**json.loads(status.read_text()), "schema_version": "5.0"}))
    cases["future status"] = future
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "rank=0").mkdir()
    (garbage / "rank=0" / "part-000000.parquet").write_bytes(os.urandom(4096))
    (garbage / "rank=0" / STATUS_FILE).write_bytes(os.urandom(512))
    cases["random bytes"] = garbage
    for what, path in cases.items():
        proc = _lrdebug("report", str(path), cwd=tmp_path)
        assert proc.returncode in (0, 2), (what, proc.stderr)
        assert "Traceback" not in proc.stderr, what
        if proc.returncode == 2:
            assert len(proc.stderr.splitlines()) == 1, (what, proc.stderr)
    assert _lrdebug("report", str(future), cwd=tmp_path).returncode == 2


def test_strings_from_a_trace_cannot_style_or_control_the_terminal(tmp_path):
    """A group name, a call site, the status's reason and the trace's own folder carry rich markup and
    escape sequences."""
    evil_name = "[bold red]grp[/bold red]\x1b]0;pwned\x07\x1b[2J"
    out = tmp_path / "[blink]runs[/blink]"
    with lrdebug.trace(out=out, summary=False, ignore=["scheduler-before-optimizer"]):
        _train(6, misuse=True, group_name=evil_name)
    for part in out.rglob("part-*.parquet"):
        table = pq.read_table(part)
        i = table.column_names.index("file")
        files = pa.array(["[link=https://example.invalid]x[/link]\x1b[5m.py" if f else None
                          for f in table["file"].to_pylist()])
        pq.write_table(table.set_column(i, "file", files.dictionary_encode()), part)
    status_file = out / "rank=0" / STATUS_FILE
    status = json.loads(status_file.read_text())
    status.update(complete=False, reason="[bold red]why[/bold red]\x1b[2J")
    status_file.write_text(json.dumps(status))
    for fmt in ("text", "markdown"):
        proc = _lrdebug("report", str(out), "--format", fmt, "--width", "200", cwd=tmp_path,
                        env={"FORCE_COLOR": "1", "TERM": "xterm-256color"})
        assert proc.returncode == 0, proc.stderr
        # as bytes or as markup ([blink], [link]) the data would produce these; the report never does
        for injected in ("\x1b]0;", "\x1b[2J", "\x07", "\x1b[5m", "\x1b]8;"):
            assert injected not in proc.stdout, (fmt, injected)
        shown = proc.stdout.replace("\\[", "[").replace("\\]", "]")  # Markdown escapes brackets
        assert "[bold red]grp" in shown and "[link=https://example.invalid]x[/link]" in shown, fmt
        assert "[bold red]why" in shown, fmt
        assert fmt == "markdown" or "[blink]runs" in shown
