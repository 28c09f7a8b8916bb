"""The traced table: pandas method names, each call appends one ``df`` op to the trace."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from xdsl.dialects.builtin import (
    DictionaryAttr,
    Float32Type,
    Float64Type,
    IntegerAttr,
    IntegerType,
    i1,
    i64,
)
from xdsl.ir import Attribute, SSAValue

from opgraph.dialects import dataframe as df
from opgraph.expr import Expr, RegionBuilder, as_expr, column
from opgraph.tracing import SourceLoc, current_trace, trace_error, user_location

# ------------------------------------------------------------------ arrow <-> IR


def element_type(arrow_type: pa.DataType, name: str, loc: SourceLoc) -> Attribute:
    if pa.types.is_boolean(arrow_type):
        return i1
    if pa.types.is_signed_integer(arrow_type):
        return IntegerType(arrow_type.bit_width)
    if pa.types.is_unsigned_integer(arrow_type):
        if arrow_type.bit_width == 64:
            raise trace_error(f"column '{name}': uint64 is not supported (values may not fit int64)", loc)
        return IntegerType(arrow_type.bit_width * 2)  # widened: every value fits
    if pa.types.is_float32(arrow_type):
        return Float32Type()
    if pa.types.is_float64(arrow_type):
        return Float64Type()
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return df.StringType()
    if pa.types.is_dictionary(arrow_type) and (
        pa.types.is_string(arrow_type.value_type) or pa.types.is_large_string(arrow_type.value_type)
    ):
        return df.StringType()
    raise trace_error(f"column '{name}' has unsupported type {arrow_type}", loc)


def table_type(schema: pa.Schema, loc: SourceLoc) -> df.TableType:
    return df.table_of([(f.name, element_type(f.type, f.name, loc), f.nullable) for f in schema])


def arrow_type(t: Attribute) -> pa.DataType:
    if isinstance(t, df.StringType):
        return pa.string()
    if df.is_bool(t):
        return pa.bool_()
    if isinstance(t, Float32Type):
        return pa.float32()
    if isinstance(t, Float64Type):
        return pa.float64()
    return {8: pa.int8(), 16: pa.int16(), 32: pa.int32(), 64: pa.int64()}[t.width.data]


def arrow_schema(t: df.TableType) -> pa.Schema:
    return pa.schema([pa.field(n, arrow_type(et), nl) for n, et, nl in t.columns])


# ---------------------------------------------------------------------- Table


class Table:
    """A table value in a pipeline being traced. Methods record ops; nothing runs."""

    def __init__(self, value: SSAValue):
        self._value = value

    # -- introspection
    @property
    def ir_value(self) -> SSAValue:
        return self._value

    @property
    def table_type(self) -> df.TableType:
        t = self._value.type
        assert type(t) is df.TableType  # (attribute classes are final: the isinstance test)
        return t

    @property
    def columns(self) -> list[str]:
        return self.table_type.column_names

    @property
    def schema(self) -> pa.Schema:
        return arrow_schema(self.table_type)

    def __repr__(self) -> str:
        return f"<opgraph.Table traced {self.schema}>"

    def __bool__(self) -> bool:
        raise trace_error("a traced table has no truth value")

    def __len__(self) -> int:
        raise trace_error("the row count of a traced table is unknown while tracing")

    def __iter__(self):
        raise trace_error("a traced table cannot be iterated while tracing")

    def _op(self, op, loc: SourceLoc) -> Table:
        current_trace().append(op, loc)
        return Table(op.results[0])

    def _guard(self, fn, loc: SourceLoc):
        try:
            return fn()
        except df.SchemaError as e:
            raise trace_error(str(e), loc) from None

    # -- selection
    def __getitem__(self, key: Any) -> Any:
        loc = user_location()
        if isinstance(key, str):
            return column(key, self.table_type, loc)
        if isinstance(key, list | tuple) and all(isinstance(k, str) for k in key):
            return self._op(self._guard(lambda: df.ProjectOp(self._value, list(key)), loc), loc)
        if isinstance(key, Expr):
            return self._filter(key, loc)
        raise trace_error(
            f"table[...] takes a column name, a list of names or a boolean expression, got {type(key).__name__}", loc
        )

    def _filter(self, mask: Expr, loc: SourceLoc) -> Table:
        if not df.is_bool(mask.dtype):
            raise trace_error(f"filter mask must be boolean, got {df.type_str(mask.dtype)} ({mask!r})", loc)
        base, [mask], temps = _lower_windows(self, [mask], loc)
        builder = RegionBuilder(base.table_type)
        out = base._op(df.FilterOp(base._value, builder.finish([mask])), loc)
        return out.drop(columns=temps, _loc=loc) if temps else out

    def filter(self, mask: Expr) -> Table:
        return self._filter(mask, user_location())

    def assign(self, **exprs: Any) -> Table:
        loc = user_location()
        if not exprs:
            return self
        names = list(exprs)
        values = [as_expr(v, loc) for v in exprs.values()]
        # a plain window over a column becomes df.window directly, without a temp column
        table = self
        direct = [(n, v) for n, v in zip(names, values) if v.kind == "window" and v.args[0].kind == "col"]
        for n, v in direct:
            func, param = v.params
            table = table._op(
                table._guard(lambda: df.WindowOp(table._value, func, v.args[0].params[0], param, n), loc), loc
            )
        direct_names = {n for n, _ in direct}
        rest = [(n, v) for n, v in zip(names, values) if n not in direct_names]
        if not rest:
            return table
        base, rewritten, temps = _lower_windows(table, [v for _, v in rest], loc)
        schema = base.table_type
        region = RegionBuilder(schema).finish(rewritten)
        results = [(expr.dtype, expr.nullable) for expr in rewritten]
        out_names = [n for n, _ in rest]
        result_type = base._guard(lambda: df.infer_assign(schema, out_names, results), loc)
        out = base._op(df.MapOp(base._value, out_names, region, result_type), loc)
        return out.drop(columns=temps, _loc=loc) if temps else out

    def rename(self, columns: dict[str, str] | None = None) -> Table:
        loc = user_location()
        if not isinstance(columns, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in columns.items()):
            raise trace_error("rename takes columns={old: new} with string names", loc)
        return self._op(self._guard(lambda: df.RenameOp(self._value, columns), loc), loc)

    def drop(self, columns: Sequence[str] | str | None = None, *, _loc: SourceLoc | None = None) -> Table:
        loc = _loc or user_location()
        cols = [columns] if isinstance(columns, str) else list(columns or [])
        return self._op(self._guard(lambda: df.DropOp(self._value, cols), loc), loc)

    # -- joins and set operations
    def merge(
        self,
        right: Table,
        on: str | Sequence[str] | None = None,
        how: str = "inner",
        left_on: str | Sequence[str] | None = None,
        right_on: str | Sequence[str] | None = None,
        suffixes: tuple[str, str] = ("_x", "_y"),
    ) -> Table:
        loc = user_location()
        if not isinstance(right, Table):
            raise trace_error(f"merge needs a table, got {type(right).__name__}", loc)
        if on is not None:
            if left_on is not None or right_on is not None:
                raise trace_error("merge takes either on= or left_on=/right_on=, not both", loc)
            left_on = right_on = on
        if left_on is None or right_on is None:
            raise trace_error("merge needs on= or both left_on= and right_on=", loc)
        lk = [left_on] if isinstance(left_on, str) else list(left_on)
        rk = [right_on] if isinstance(right_on, str) else list(right_on)
        if len(suffixes) != 2:
            raise trace_error("suffixes must be a pair of strings", loc)
        return self._op(
            self._guard(lambda: df.JoinOp(self._value, right._value, how, lk, rk, tuple(suffixes)), loc), loc
        )

    join = None  # pandas' index join is not supported; use merge

    def _set(self, other: Table, op_cls, loc: SourceLoc) -> Table:
        if not isinstance(other, Table):
            raise trace_error(f"expected a table, got {type(other).__name__}", loc)
        return self._op(self._guard(lambda: op_cls(self._value, other._value), loc), loc)

    def union(self, other: Table) -> Table:
        return self._set(other, df.UnionOp, user_location())

    def intersect(self, other: Table) -> Table:
        return self._set(other, df.IntersectOp, user_location())

    def difference(self, other: Table) -> Table:
        return self._set(other, df.DifferenceOp, user_location())

    def drop_duplicates(self, subset: str | Sequence[str] | None = None) -> Table:
        loc = user_location()
        cols = [subset] if isinstance(subset, str) else None if subset is None else list(subset)
        return self._op(self._guard(lambda: df.DistinctOp(self._value, cols), loc), loc)

    # -- ordering
    def sort_values(self, by: str | Sequence[str], ascending: bool | Sequence[bool] = True) -> Table:
        loc = user_location()
        keys = [by] if isinstance(by, str) else list(by)
        flags = [bool(ascending)] * len(keys) if isinstance(ascending, bool) else list(ascending)
        return self._op(self._guard(lambda: df.SortOp(self._value, keys, flags), loc), loc)

    def head(self, n: int = 5) -> Table:
        loc = user_location()
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise trace_error(f"head(n) needs a non-negative integer, got {n!r}", loc)
        return self._op(df.HeadOp(self._value, n), loc)

    # -- aggregation
    def groupby(self, by: str | Sequence[str]) -> GroupBy:
        loc = user_location()
        keys = [by] if isinstance(by, str) else list(by)
        for k in keys:
            column(k, self.table_type, loc)  # unknown key -> error at this line
        return GroupBy(self, keys)

    def agg(self, **named: tuple[str, str]) -> Table:
        loc = user_location()
        aggs = _named_aggs(named, loc)
        return self._op(self._guard(lambda: df.AggregateOp(self._value, aggs), loc), loc)


class GroupBy:
    def __init__(self, table: Table, keys: list[str]):
        self._table, self._keys = table, keys

    def agg(self, **named: tuple[str, str]) -> Table:
        loc = user_location()
        aggs = _named_aggs(named, loc)
        t = self._table
        return t._op(t._guard(lambda: df.GroupByAggOp(t._value, self._keys, aggs), loc), loc)


def _named_aggs(named: dict[str, Any], loc: SourceLoc) -> list[tuple[str, str, str]]:
    if not named:
        raise trace_error("agg needs at least one name=(column, function)", loc)
    aggs = []
    for out, spec in named.items():
        if not (isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(s, str) for s in spec)):
            raise trace_error(f"agg {out}= must be a (column, function) pair of strings, got {spec!r}", loc)
        aggs.append((out, spec[0], spec[1]))
    return aggs


def _lower_windows(table: Table, exprs: list[Expr], loc: SourceLoc) -> tuple[Table, list[Expr], list[str]]:
    """Computes window sub-expressions as df.window temp columns first (they need the whole
    ordered column, not one row); returns the widened table, rewritten exprs, temp names."""
    if not any(x.has_window for x in exprs):
        return table, exprs, []
    temps: list[str] = []
    state = current_trace()
    replaced: dict[int, Expr] = {}

    def rewrite(e: Expr) -> Expr:
        nonlocal table
        if id(e) in replaced:
            return replaced[id(e)]
        args = tuple(rewrite(a) for a in e.args)
        if e.kind != "window":
            new = e if all(a is b for a, b in zip(args, e.args)) else Expr(e.kind, args, e.params, e.dtype, e.nullable, e.loc)
        else:
            (arg,) = args
            if arg.kind != "col":
                name = state.fresh_name("arg")
                table = table.assign(**{name: arg})
                temps.append(name)
                arg = column(name, table.table_type, e.loc)
            out = state.fresh_name("win")
            func, param = e.params
            table = table._op(table._guard(lambda: df.WindowOp(table._value, func, arg.params[0], param, out), e.loc), e.loc)
            temps.append(out)
            new = column(out, table.table_type, e.loc)
        replaced[id(e)] = new
        return new

    rewritten = [rewrite(e) for e in exprs]
    return table, rewritten, temps


# ------------------------------------------------------------- sources and sinks


def _expand_paths(path: str, loc: SourceLoc, suffixes: tuple[str, ...]) -> list[str]:
    if any(ch in path for ch in "*?["):
        files = sorted(glob.glob(path))
    elif os.path.isdir(path):
        files = sorted(
            os.path.join(root, f)
            for root, _, names in os.walk(path)
            for f in names
            if f.endswith(suffixes) and not f.startswith((".", "_"))
        )
    elif os.path.exists(path):
        files = [path]
    else:
        raise trace_error(f"no such file or directory: '{path}'", loc)
    if not files:
        raise trace_error(f"no {'/'.join(suffixes)} files match '{path}'", loc)
    return files


def _check_columns(schema: pa.Schema, columns: Sequence[str] | None, path: str, loc: SourceLoc) -> pa.Schema:
    if columns is None:
        return schema
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise trace_error(f"'{path}' has no column '{missing[0]}' (columns: {', '.join(schema.names)})", loc)
    return pa.schema([schema.field(c) for c in columns])


def _unify(schemas: list[pa.Schema], path: str, loc: SourceLoc) -> pa.Schema:
    try:
        return pa.unify_schemas(schemas)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise trace_error(f"files under '{path}' have incompatible schemas: {e}", loc) from None


def _read(op_cls, path: Any, columns: Sequence[str] | None, schema: pa.Schema, loc: SourceLoc) -> Table:
    schema = _check_columns(schema, columns, str(path), loc)
    op = op_cls(str(path), table_type(schema, loc), list(columns) if columns is not None else None)
    current_trace().append(op, loc)
    return Table(op.results[0])


def read_parquet(path: str | os.PathLike, columns: Sequence[str] | None = None) -> Table:
    """Parquet file, directory or glob; the schema comes from the footers (no data read)."""

    loc = user_location()
    files = _expand_paths(str(path), loc, (".parquet", ".pq"))
    try:
        schemas = [_parquet_schema(f) for f in files]
    except (pa.ArrowInvalid, OSError) as e:
        raise trace_error(f"cannot read Parquet footer of '{path}': {e}", loc) from None
    return _read(df.ReadParquetOp, path, columns, _unify(schemas, str(path), loc), loc)


def _parquet_schema(path: str) -> pa.Schema:
    """The file's Arrow schema, with a column marked non-nullable when the footer's
    statistics show no nulls in any row group (writers mark every column nullable)."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    schema = meta.schema.to_arrow_schema()
    leaf_index = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    fields = []
    for f in schema:
        i = leaf_index.get(f.name)
        if f.nullable and i is not None and meta.num_row_groups > 0 and all(
            (st := meta.row_group(g).column(i).statistics) is not None and st.has_null_count and st.null_count == 0
            for g in range(meta.num_row_groups)
        ):
            f = f.with_nullable(False)
        fields.append(f)
    return pa.schema(fields, metadata=schema.metadata)


def read_ipc(path: str | os.PathLike, columns: Sequence[str] | None = None) -> Table:
    """Arrow IPC file(s); the schema comes from the file header (no data read)."""
    import pyarrow.ipc as ipc

    loc = user_location()
    files = _expand_paths(str(path), loc, (".arrow", ".ipc", ".feather"))
    schemas = []
    for f in files:
        try:
            with pa.memory_map(f) as source:
                schemas.append(ipc.open_file(source).schema)
        except (pa.ArrowInvalid, OSError) as e:
            raise trace_error(f"cannot read Arrow IPC header of '{f}': {e}", loc) from None
    return _read(df.ReadIpcOp, path, columns, _unify(schemas, str(path), loc), loc)


def read_csv(path: str | os.PathLike, columns: Sequence[str] | None = None) -> Table:
    """CSV file(s); the schema is inferred from the first block of the first file."""
    import pyarrow.csv as csv

    loc = user_location()
    files = _expand_paths(str(path), loc, (".csv",))
    try:
        with csv.open_csv(files[0], read_options=csv.ReadOptions(block_size=1 << 20)) as reader:
            schema = reader.schema
    except (pa.ArrowInvalid, OSError) as e:
        raise trace_error(f"cannot read CSV '{files[0]}': {e}", loc) from None
    # CSV has no nullability information: every column may hold nulls
    schema = pa.schema([f.with_nullable(True) for f in schema])
    return _read(df.ReadCsvOp, path, columns, schema, loc)


def _write(op_cls, table: Table, path: Any) -> None:
    loc = user_location()
    if not isinstance(table, Table):
        raise trace_error(f"can only write a traced table, got {type(table).__name__}", loc)
    current_trace().append(op_cls(table.ir_value, str(path)), loc)


def write_parquet(table: Table, path: str | os.PathLike) -> None:
    """A directory of part files, committed atomically (temporary name + rename)."""
    _write(df.WriteParquetOp, table, path)


def write_csv(table: Table, path: str | os.PathLike) -> None:
    _write(df.WriteCsvOp, table, path)


def write_ipc(table: Table, path: str | os.PathLike) -> None:
    _write(df.WriteIpcOp, table, path)


def concat(tables: Sequence[Table]) -> Table:
    """Union all (pandas ``concat`` of rows); columns must match by name and type."""
    loc = user_location()
    tables = list(tables)
    if not tables or not all(isinstance(t, Table) for t in tables):
        raise trace_error("og.concat needs a non-empty list of tables", loc)
    result = tables[0]
    for other in tables[1:]:
        result = result._set(other, df.ConcatOp, loc)
    return result


def input_table(name: str, data: Any, loc: SourceLoc) -> Table:
    """A table input holding data (pyarrow.Table / pandas.DataFrame): the IR records its
    schema; the data itself is bound when the plan runs, never baked into the IR."""
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        data = pa.Table.from_pandas(data, preserve_index=False)
    if not isinstance(data, pa.Table):
        raise trace_error(f"expected a pyarrow.Table or pandas.DataFrame, got {type(data).__name__}", loc)
    state = current_trace()
    op = df.InputOp(len(state.inputs), name, table_type(data.schema, loc))
    # sizes for the cost model (pass annotate-statistics): discardable attributes
    op.attributes["df.rows"] = IntegerAttr(int(data.num_rows), i64)
    op.attributes["df.bytes"] = IntegerAttr(int(data.nbytes), i64)
    from opgraph.passes.annotate_statistics import (
        sample_distinct,  # a sample, not a scan
    )

    distinct = sample_distinct(data)
    if distinct:
        op.attributes["df.distinct"] = DictionaryAttr({k: IntegerAttr(v, i64) for k, v in distinct.items()})
    state.inputs.append(data)
    state.append(op, loc)
    return Table(op.results[0])


def from_arrow(t: pa.Table) -> Table:
    """A table input from Arrow data."""
    loc = user_location()
    return input_table(current_trace().fresh_name("arrow"), t, loc)


def from_pandas(frame: Any) -> Table:
    """A table input from a pandas DataFrame (converted to Arrow, index dropped)."""
    loc = user_location()
    return input_table(current_trace().fresh_name("pandas"), frame, loc)
