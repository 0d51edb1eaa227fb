"""SQLAlchemy Core statements run on a raw DBAPI cursor, each compiled once.

The writer's hot path: SQLAlchemy compiles the SQL and supplies the columns' bind processors, so
rows read back exactly as the ORM wrote them; what is skipped is SQLAlchemy's per-execution
bookkeeping (~40 us a statement and ~100 us a transaction), which dominated the cost of small
batches. Statements should be module constants with bindparam()s so their plans are reused.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from sqlalchemy import Executable, Table
from sqlalchemy.engine import Dialect

Processor = Callable[[Any], Any] | None
_Plan = tuple[str, list[tuple[str, Processor]], bool, dict[str, Any]]


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
        names = list(compiled.positiontup) if compiled.positional else list(compiled.binds)
        processors = [(n, types(n).bind_processor(self.dialect)) for n in names]
        defaults = {n: v for n, v in compiled.params.items() if v is not None}
        plan = (str(compiled), processors, compiled.positional, defaults)
        self._plans[key] = plan
        if len(self._plans) > self._size:
            self._plans.popitem(last=False)
        return plan

    @staticmethod
    def _params(plan: _Plan, row: dict[str, Any]) -> Any:
        _, processors, positional, defaults = plan
        if defaults:
            row = {**defaults, **row}
        if positional:
            return tuple(p(row[n]) if p else row[n] for n, p in processors)
        return {n: p(row[n]) if p else row[n] for n, p in processors}

    def insert_many(self, cursor: Any, table: Table, rows: list[dict[str, Any]]) -> None:
        keys = tuple(rows[0])
        plan = self._plan(
            (table, keys),
            lambda: table.insert().compile(dialect=self.dialect, column_keys=list(keys)),
            lambda name: table.c[name].type,
        )
        cursor.executemany(plan[0], [self._params(plan, row) for row in rows])

    def execute(self, cursor: Any, statement: Executable, params: dict[str, Any]) -> Any:
        compiled_holder: dict[str, Any] = {}

        def build() -> Any:
            compiled_holder["c"] = statement.compile(dialect=self.dialect)  # type: ignore[attr-defined]
            return compiled_holder["c"]

        plan = self._plan((statement,), build, lambda name: compiled_holder["c"].binds[name].type)
        cursor.execute(plan[0], self._params(plan, params))
        return cursor
