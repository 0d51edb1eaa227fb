"""SQLAlchemy Core statements run on a raw DBAPI cursor, each compiled once.

The writer's hot path: SQLAlchemy compiles the SQL and supplies the columns' bind processors, so
rows read back exactly as the ORM wrote them; what is skipped is SQLAlchemy's per-execution
bookkeeping (~40 us a statement and ~100 us a transaction), which dominated the cost of small
batches. Statements should be module constants with bindparam()s so their plans are reused.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from operator import itemgetter
from typing import Any, NamedTuple

from sqlalchemy import Executable, LargeBinary, Table
from sqlalchemy.engine import Dialect

Processor = Callable[[Any], Any] | None


class _Plan(NamedTuple):
    sql: str
    names: list[str]
    fixups: list[tuple[int, str, Callable[[Any], Any]]]  # (position, name, processor): only typed columns
    positional: bool
    defaults: dict[str, Any]
    get: Callable[[dict[str, Any]], tuple[Any, ...]]  # all values in statement order, in C


class Compiled:
    def __init__(self, dialect: Dialect, size: int = 512) -> None:
        self.dialect = dialect
        self._plans: OrderedDict[tuple[Any, ...], _Plan] = OrderedDict()
        self._size = size

    def _plan(self, key: tuple[Any, ...], build: Callable[[], Any], types: Callable[[str], Any]) -> _Plan:
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan
        compiled = build()
        names = list(compiled.positiontup) if compiled.positional else list(compiled.params)
        fixups = [(i, n, p) for i, n in enumerate(names) if (p := self._processor(types(n)))]
        defaults = {n: v for n, v in compiled.params.items() if v is not None}
        get = itemgetter(*names) if len(names) > 1 else (lambda row, n=names[0]: (row[n],))
        plan = _Plan(str(compiled), names, fixups, compiled.positional, defaults, get)
        self._plans[key] = plan
        if len(self._plans) > self._size:
            self._plans.popitem(last=False)
        return plan

    def _processor(self, type_: Any) -> Processor:
        # sqlite3 takes bytes as they are; SQLAlchemy's LargeBinary processor only wraps them again.
        if self.dialect.name == "sqlite" and isinstance(type_, LargeBinary):
            return None
        return type_.bind_processor(self.dialect)  # type: ignore[no-any-return]

    @staticmethod
    def _params(plan: _Plan, row: dict[str, Any]) -> Any:
        if plan.defaults:
            row = {**plan.defaults, **row}
        values = plan.get(row)
        if plan.fixups:
            values = list(values)  # type: ignore[assignment]
            for i, _, process in plan.fixups:
                values[i] = process(values[i])  # type: ignore[index]
        return tuple(values) if plan.positional else dict(zip(plan.names, values, strict=True))

    def insert_many(self, cursor: Any, table: Table, rows: list[dict[str, Any]]) -> None:
        keys = tuple(rows[0])
        plan = self._plan(
            (table, keys),
            lambda: table.insert().compile(dialect=self.dialect, column_keys=list(keys)),
            lambda name: table.c[name].type,
        )
        cursor.executemany(plan.sql, [self._params(plan, row) for row in rows])

    def execute(self, cursor: Any, statement: Executable, params: dict[str, Any]) -> Any:
        compiled_holder: dict[str, Any] = {}

        def build() -> Any:
            # render_postcompile: PostgreSQL renders LIMIT as a parameter SQLAlchemy fills in at execution.
            compiled_holder["c"] = statement.compile(  # type: ignore[attr-defined]
                dialect=self.dialect, compile_kwargs={"render_postcompile": True}
            )
            return compiled_holder["c"]

        plan = self._plan((statement,), build, lambda name: compiled_holder["c"].binds[name].type)
        cursor.execute(plan.sql, self._params(plan, params))
        return cursor


def upsert_insert(dialect: str, table: Table) -> Any:
    """INSERT ... ON CONFLICT for the store's two dialects (both speak the same clause)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)
