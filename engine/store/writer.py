"""The one writer: many producers, one transaction and one fsync per batch.

Producers hand in a WriteItem and are released only after the transaction holding it has
committed (synchronous=FULL: on disk). Items in one batch are independent of each other: an item
may only touch rows it inserts itself or rows committed before it was submitted. Inserts run
table by table in foreign-key order, then each item's statements in order, then audit entries,
which are linked into the node's hash chain inside the same transaction.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from sqlalchemy import Connection, Engine, Executable, Table

from engine.store.db import checkpoint_wal
from engine.store.tables import AuditRow, metadata

log = logging.getLogger("radbridge.store")


class AuditLinker(Protocol):
    """Gives audit rows their place in the chain, inside the open transaction (engine.audit.log)."""

    def link(self, conn: Connection, rows: list[dict[str, Any]]) -> None: ...

    def committed(self) -> None: ...

    def invalidate(self) -> None: ...


class _FastInsert:
    """executemany of one table's rows on the raw DBAPI cursor.

    The statement is compiled by SQLAlchemy Core once per column set and values pass through the
    columns' own bind processors, so rows read back exactly as the ORM wrote them; what is skipped
    is SQLAlchemy's per-execution bookkeeping (~40 us a statement), which dominated small batches.
    """

    def __init__(self, engine: Engine) -> None:
        self._dialect = engine.dialect
        self._cache: dict[tuple[Table, tuple[str, ...]], tuple[str, list[tuple[str, Callable[[Any], Any] | None]], bool]] = {}

    def __call__(self, conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
        keys = tuple(rows[0])
        plan = self._cache.get((table, keys))
        if plan is None:
            compiled = table.insert().compile(dialect=self._dialect, column_keys=list(keys))
            order = list(compiled.positiontup) if compiled.positional else list(keys)
            processors = [(name, table.c[name].type.bind_processor(self._dialect)) for name in order]
            plan = self._cache[(table, keys)] = (str(compiled), processors, compiled.positional)
        sql, processors, positional = plan
        if positional:
            params: list[Any] = [tuple(p(row[n]) if p else row[n] for n, p in processors) for row in rows]
        else:
            params = [{n: p(row[n]) if p else row[n] for n, p in processors} for row in rows]
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(sql, params)
        finally:
            cursor.close()


@dataclass
class WriteItem:
    inserts: list[tuple[Table, dict[str, Any]]] = field(default_factory=list)
    statements: list[tuple[Executable, dict[str, Any]]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: "WriteItem") -> "WriteItem":
        self.inserts += other.inserts
        self.statements += other.statements
        self.audit += other.audit
        return self


_STOP = object()
_AUDIT: Table = AuditRow.__table__  # type: ignore[assignment]


class GroupWriter:
    def __init__(
        self, engine: Engine, audit_linker: AuditLinker, max_batch: int = 2048, gather_delay: float = 0.0002
    ) -> None:
        self._engine = engine
        self._link = audit_linker
        self._max_batch = max_batch
        self.gather_delay = gather_delay
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._order = {table: i for i, table in enumerate(metadata.sorted_tables)}
        self._insert = _FastInsert(engine)
        self._thread = threading.Thread(target=self._run, name="radbridge-writer", daemon=True)
        self._closed = False
        self._stopped = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint, name="radbridge-wal", daemon=True)
        self.batches = 0
        self.items = 0
        self._thread.start()
        self._checkpointer.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def submit(self, item: WriteItem) -> Future[None]:
        if self._closed:
            raise RuntimeError("the store writer is closed")
        future: Future[None] = Future()
        self._queue.put((item, future))
        return future

    def write(self, item: WriteItem) -> None:
        """Blocking: returns once the item is committed."""
        self.submit(item).result()

    async def awrite(self, item: WriteItem) -> None:
        await asyncio.wrap_future(self.submit(item))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()
            self._stopped.set()
            self._checkpointer.join()
            checkpoint_wal(self._engine, "TRUNCATE")

    def _checkpoint(self) -> None:
        # SQLite would otherwise checkpoint inside a producer's commit now and then (a latency spike).
        while not self._stopped.wait(1.0):
            try:
                checkpoint_wal(self._engine)
            except Exception as exc:  # noqa: BLE001 - retried next second; the writer is unaffected
                log.warning("WAL checkpoint failed: %s", type(exc).__name__)

    def _run(self) -> None:
        stop = False
        last = 1
        while not stop:
            batch = [self._queue.get()]
            if last > 1 and self.gather_delay:
                # Producers are concurrent: give the ones just released a moment to hand in their
                # next item, so one fsync covers them all (PostgreSQL's commit_delay, same idea).
                time.sleep(self.gather_delay)
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                stop = True
                batch = [b for b in batch if b is not _STOP]
            if batch:
                self._commit(batch)
            last = len(batch)

    def _commit(self, batch: list[tuple[WriteItem, Future[None]]]) -> None:
        items = [item for item, _ in batch]
        try:
            self._transaction(items)
        except Exception as exc:  # noqa: BLE001 - isolate the item that failed, fail only it
            self._link.invalidate()  # another process may have appended to our chain
            if len(batch) > 1:
                for one in batch:
                    self._commit([one])
                return
            try:
                self._transaction(items)
            except Exception:  # noqa: BLE001
                self._link.invalidate()
                log.error("store write failed: %s", type(exc).__name__)
                batch[0][1].set_exception(exc)
                return
        self._link.committed()
        self.batches += 1
        self.items += len(batch)
        for _, future in batch:
            future.set_result(None)

    def _transaction(self, items: list[WriteItem]) -> None:
        inserts: dict[Table, list[dict[str, Any]]] = {}
        for item in items:
            for table, row in item.inserts:
                inserts.setdefault(table, []).append(row)
        audit = [row for item in items for row in item.audit]
        with self._engine.begin() as conn:
            for table in sorted(inserts, key=self._order.__getitem__):
                self._insert(conn, table, inserts[table])
            for item in items:
                for statement, params in item.statements:
                    conn.execute(statement, params)
            if audit:
                self._link.link(conn, audit)
                self._insert(conn, _AUDIT, audit)
