"""Group commit of lease-guarded updates: the state saves of runs that finish together go to the
database as one unordered `bulk_write` instead of one `update_one` each.

No timer and no added latency when the database keeps up: a save that arrives while no bulk is in
flight goes at once (alone); saves that arrive while `in_flight` bulks are being written wait for the
first to return and go together in the next one (up to `max_ops`). Under load the batches grow by
themselves, at most one round trip of waiting.

Each update is guarded by its filter (`_id` and the lease id): one whose filter no longer matches (the
lease was lost) is dropped by the server, as an `update_one` would be. A bulk's result says how many
matched, not which: when fewer matched than were sent, the documents are read back and an update
counts as applied when its document carries its `stamp` (the field and value every update sets, e.g.
`lastLease` = the lease id: a (network, lease id) pair is one run). A write error is the error of the
update it names only; an error of the whole command (connection, timeout) is every update's.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass
from typing import Any

from bson.errors import InvalidDocument
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError, WriteError

WRITE_CONFLICT = 112


@dataclass(frozen=True)
class Guarded:
    """One lease-guarded update: applied iff the document `_id` still matches `filter`."""

    id: Any
    filter: dict[str, Any]
    update: dict[str, Any]
    stamp: tuple[str, Any]  # (field, value) the update sets: how a read-back tells it was applied


def transient(error: Any) -> bool:
    """A write the server gave up on for a reason of the moment, not of the write: a deadlock victim (engines
    over PostgreSQL, such as DocumentDB), a write conflict (code 112), a transient transaction error. Writing
    it again is safe: every update is guarded by its lease and told apart by its stamp."""
    if isinstance(error, PyMongoError):
        if error.has_error_label("TransientTransactionError"):
            return True
        code, message = getattr(error, "code", None), str(error)
    elif isinstance(error, dict):
        code, message = error.get("code"), str(error.get("errmsg", ""))
    else:
        return False
    return code == WRITE_CONFLICT or "deadlock" in message.lower()


class GroupCommit:
    # attempts after the first for a deadlock victim or a write conflict
    RETRIES = 3

    def __init__(self, collection: Any, *, max_ops: int = 500, in_flight: int = 2):
        self.collection = collection
        self.max_ops = max(1, max_ops)
        self.in_flight = max(1, in_flight)
        self._queue: list[tuple[Any, asyncio.Future[bool]]] = []
        self._writing = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # figures for the benchmarks and metrics: bulks written, updates in them, updates dropped
        self.bulks = 0
        self.ops = 0
        self.dropped = 0

    async def submit(self, op: Any) -> bool:
        """True when the update was applied, False when its filter matched nothing (lease lost); raises
        the database's error for this update."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        while self._queue and self._writing < self.in_flight:
            batch, self._queue = self._queue[:self.max_ops], self._queue[self.max_ops:]
            self._writing += 1
            task = asyncio.get_running_loop().create_task(self._write(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write(self, batch: list[tuple[Any, asyncio.Future[bool]]]) -> None:
        try:
            outcomes = await self._apply([op for op, _ in batch])
        except BaseException as exc:  # the whole command failed (or this task was cancelled)
            for _, future in batch:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():  # its caller was cancelled: the update went in (or not) all the same
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        finally:
            self._writing -= 1
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._kick()

    async def _apply(self, ops: list[Any]) -> list[bool | BaseException]:
        outcomes: list[bool | BaseException | None] = [None] * len(ops)
        todo = list(range(len(ops)))  # indexes of `ops` still to write
        for attempt in range(self.RETRIES + 1):
            last = attempt == self.RETRIES
            requests = [UpdateOne({"_id": ops[i].id, **ops[i].filter}, ops[i].update) for i in todo]
            again: list[int] = []
            trust = True  # whether the server's count of matched updates can be taken as it is
            try:
                matched = (await self.collection.bulk_write(requests, ordered=False)).matched_count
            except (OverflowError, InvalidDocument):
                # an update BSON cannot encode (an integer past 64 bits in a cursor): refused by the client before
                # it was sent, for the whole bulk; one by one, it is that update's error alone
                return await self._one_by_one(ops)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if not errors:
                    raise  # not a per-update failure (a write concern error): every update's
                for error in errors:
                    index = error.get("index")
                    if not (isinstance(index, int) and 0 <= index < len(todo)):
                        continue
                    if transient(error) and not last:
                        again.append(todo[index])  # a deadlock victim: written again, alone with the others
                    else:
                        outcomes[todo[index]] = WriteError(error.get("errmsg", "write error"), error.get("code"), error)
                matched = int(exc.details.get("nMatched", 0))
                # an engine that ran the bulk in one transaction rolled all of it back with the victim, whatever
                # it counts as matched: what was applied is read back, not believed
                trust = False
            except PyMongoError as exc:
                if last or not transient(exc):
                    raise
                again = todo  # the whole command was the victim
                matched = 0
            self.bulks += 1
            self.ops += len(todo)
            written = [i for i in todo if outcomes[i] is None and i not in again]
            if trust and matched >= len(written):
                for i in written:
                    outcomes[i] = True
            elif written:  # fewer matched than sent: which ones? the documents that carry their update's stamp
                await self._read_back(ops, written, outcomes)
                if not trust and not last:
                    # not applied, maybe rolled back with the victim: written again (an update whose lease is gone
                    # matches nothing then, and the next read-back says so)
                    unconfirmed = [i for i in written if outcomes[i] is False]
                    for i in unconfirmed:
                        outcomes[i] = None
                    again += unconfirmed
            if not again:
                break
            todo = sorted(again)
            await asyncio.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
        final = [o if o is not None else False for o in outcomes]
        self.dropped += sum(1 for o in final if o is False)
        return final

    async def _read_back(self, ops: list[Guarded], pending: list[int],
                         outcomes: list[bool | BaseException | None]) -> list[bool | BaseException]:
        if not pending:
            return [o if o is not None else False for o in outcomes]
        fields = {op.stamp[0] for op in ops}
        docs = await self.collection.find({"_id": {"$in": [ops[i].id for i in pending]}},
                                          {field: 1 for field in fields}).to_list(None)
        for i in pending:
            field, value = ops[i].stamp
            # by equality, not a dict: an _id may be a document or an array (unhashable); this path is rare
            outcomes[i] = any(doc["_id"] == ops[i].id and doc.get(field) == value for doc in docs)
        return [o if o is not None else False for o in outcomes]

    async def _one_by_one(self, ops: list[Guarded]) -> list[bool | BaseException]:
        outcomes: list[bool | BaseException | None] = [None] * len(ops)
        unmatched = []
        for i, op in enumerate(ops):
            try:
                result = await self.collection.update_one({"_id": op.id, **op.filter}, op.update)
            except (OverflowError, InvalidDocument, WriteError) as exc:
                outcomes[i] = exc
                continue
            if result.matched_count:
                outcomes[i] = True
            else:
                unmatched.append(i)  # lost its lease, or applied already by a first part of the bulk
        self.bulks += 1
        self.ops += len(ops)
        final = await self._read_back(ops, unmatched, outcomes)
        self.dropped += sum(1 for o in final if o is False)
        return final

    async def drain(self) -> None:
        """Wait for every bulk written or queued (at shutdown)."""
        while self._tasks or self._queue:
            self._kick()
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)




class GroupInsert(GroupCommit):
    """Inserts that arrive together go as one unordered `insert_many`, as GroupCommit groups updates: for small
    documents many runs write at once (the change feed's pointers, collector/outbox.py), where a round trip each
    would cost more than the documents."""

    async def insert(self, doc: dict[str, Any]) -> None:
        """Returns once `doc` is written; raises the database's error for it (or for the whole command)."""
        await self.submit(doc)

    async def _apply(self, ops: list[Any]) -> list[bool | BaseException]:
        outcomes: list[bool | BaseException] = [True] * len(ops)
        try:
            await self.collection.insert_many(ops, ordered=False)
        except BulkWriteError as exc:  # unordered: the others went in
            for error in exc.details.get("writeErrors", []):
                outcomes[error["index"]] = WriteError(error.get("errmsg", ""), error.get("code"), error)
        return outcomes
