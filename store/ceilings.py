"""The machine's ceilings in the store: per device fingerprint, cores and threads, newest first.

Every measurement is a row of its own (a remeasurement adds one; none is overwritten), so a
lookup takes the newest for its key. Works with a Store or a migrated engine.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from store.errors import StoreError
from store.models import Ceiling
from store.rows import encode, iso
from store.sqlite import for_writes

if TYPE_CHECKING:
    from evaluator.ceilings import Ceilings


def _engine(store_or_engine: Any) -> Engine:
    return store_or_engine if isinstance(store_or_engine, Engine) else store_or_engine.engine


def cores_key(cores: Sequence[int]) -> str:
    return ",".join(str(c) for c in sorted(int(c) for c in cores))


def save_ceilings(store_or_engine: Any, c: Ceilings) -> int:
    """Store one measurement; returns its row id."""
    try:
        measured = dt.datetime.fromisoformat(c.measured_at)
    except (TypeError, ValueError):
        raise StoreError(f"ceilings measured_at is not an ISO time: {c.measured_at!r}") from None
    if measured.tzinfo is None:
        measured = measured.replace(tzinfo=dt.UTC)
    row = Ceiling(fingerprint_id=c.fingerprint_id, device=c.device, cores=cores_key(c.cores), threads=int(c.threads),
                  copy_gbs=float(c.copy_gbs), read_gbs=float(c.read_gbs), copy_gbs_cached=float(c.copy_gbs_cached),
                  read_gbs_cached=float(c.read_gbs_cached), fma_gflops=float(c.fma_gflops),
                  llc_bytes=int(c.llc_bytes), details=encode("ceilings details", dict(c.details)),
                  measured_at=measured)
    with Session(for_writes(_engine(store_or_engine)), expire_on_commit=False) as s, s.begin():
        s.add(row)
        s.flush()
        assert row.id is not None  # set by the flush
        return row.id


def load_ceilings(store_or_engine: Any, fingerprint_id: str, cores: Sequence[int], threads: int) -> Ceilings | None:
    """The newest ceilings stored for this fingerprint, cores and thread count, or None."""
    from evaluator.ceilings import Ceilings

    query = (select(Ceiling).where(Ceiling.fingerprint_id == fingerprint_id, Ceiling.cores == cores_key(cores),
                                   Ceiling.threads == int(threads))
             .order_by(col(Ceiling.measured_at).desc(), col(Ceiling.id).desc()).limit(1))
    with Session(_engine(store_or_engine)) as s:
        row = s.exec(query).first()
        if row is None:
            return None
        return Ceilings(device=row.device, fingerprint_id=row.fingerprint_id,
                        cores=tuple(int(x) for x in row.cores.split(",") if x), threads=row.threads,
                        copy_gbs=row.copy_gbs, read_gbs=row.read_gbs, copy_gbs_cached=row.copy_gbs_cached,
                        read_gbs_cached=row.read_gbs_cached, fma_gflops=row.fma_gflops,
                        measured_at=iso(row.measured_at) or "", llc_bytes=row.llc_bytes,
                        details=json.loads(row.details))
