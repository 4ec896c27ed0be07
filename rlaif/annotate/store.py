"""The annotation database: one SQLite file holding the pairs, the labels and a few settings.

Durability: WAL journal, `synchronous=FULL`, and every write is one `BEGIN IMMEDIATE … COMMIT`
transaction on its own connection, so a label is on disk before the page hears "saved", several
annotators (threads or processes) write without losing each other's rows, and a server killed with
SIGKILL loses nothing it already answered.

Versioning: `PRAGMA application_id` marks the file as ours and `PRAGMA user_version` holds the
schema version. A file with another id or version is refused with one line; nothing migrates
silently.

Assignment: every annotator walks the pairs in one seeded order (so overlap builds up on the same
pairs first). With `overlap` K > 0 a pair is offered only while fewer than K people have labeled it
(skips do not count) or hold it open on their page (a claim, dropped after CLAIM_SECONDS); with K
= 0 everyone labels every pair. The sides are blinded per annotator: a seeded coin from (seed,
annotator, pair) decides whether reply a or reply b is shown as A. Labels are stored in the pair's
own terms (see scale.py); `flipped` records what the page showed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from rlaif.annotate import scale
from rlaif.errors import UserError
from rlaif.records import record_id

APPLICATION_ID = 0x524C4146  # "RLAF"
SCHEMA_VERSION = 1
CLAIM_SECONDS = 600
SQLITE_MAGIC = b"SQLite format 3\x00"

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE pairs (
    pair_id  TEXT PRIMARY KEY,
    position TEXT NOT NULL,             -- the seeded order everyone walks
    data     TEXT NOT NULL,             -- JSON: prompt, a, b, principle, question, source_line, source_id
    added_at TEXT NOT NULL
);
CREATE TABLE labels (
    pair_id    TEXT NOT NULL REFERENCES pairs(pair_id),
    annotator  TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('label', 'skip')),
    point      INTEGER CHECK (point BETWEEN 1 AND 8),   -- in the pair's terms: 1 = reply a much better
    p_a        REAL CHECK (p_a BETWEEN 0 AND 1),       -- p(reply a better), NULL for a skip or "both bad" with no point
    both_bad   INTEGER NOT NULL DEFAULT 0,
    flipped    INTEGER NOT NULL,                       -- the page showed reply b as A
    comment    TEXT NOT NULL DEFAULT '',
    origin     TEXT NOT NULL DEFAULT 'page',           -- page | label-studio
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (pair_id, annotator)
);
CREATE INDEX labels_by_annotator ON labels(annotator);
CREATE TABLE claims (annotator TEXT PRIMARY KEY, pair_id TEXT NOT NULL, at REAL NOT NULL);
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_name(name: str, what: str = "annotator") -> str:
    name = (name or "").strip()
    if not name or len(name) > 64 or any(ord(c) < 32 for c in name):
        raise UserError(f"{what} {name!r}: expected a name of 1 to 64 printable characters")
    return name


class Store:
    """One annotation database. Cheap to construct; every call opens its own connection."""

    def __init__(self, path: str | Path, *, create: bool = False, seed: int = 0, overlap: int = 0):
        self.path = Path(path)
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists:
            self._check_file()
        elif not create:
            raise UserError(f"{self.path}: no such annotation database; `rlaif annotate serve --pairs FILE "
                            f"--db {self.path}` creates one")
        else:
            if self.path.parent and not self.path.parent.exists():
                raise UserError(f"{self.path}: the folder {self.path.parent} does not exist")
            self._create(seed, overlap)
        self.seed = int(self.meta("seed"))

    # ------------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA busy_timeout = 30000")
            con.execute("PRAGMA synchronous = FULL")
            con.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as e:
            raise UserError(f"{self.path}: cannot open the annotation database ({e})") from None
        return con

    @contextmanager
    def _write(self):
        """One write transaction: BEGIN IMMEDIATE takes the write lock up front (no upgrade deadlocks)."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    @contextmanager
    def _read(self):
        con = self._connect()
        try:
            yield con
        finally:
            con.close()

    def _create(self, seed: int, overlap: int) -> None:
        try:
            con = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as e:
            raise UserError(f"{self.path}: cannot create the annotation database ({e})") from None
        try:
            con.execute("PRAGMA journal_mode = WAL")
            con.execute("BEGIN IMMEDIATE")
            if con.execute("PRAGMA user_version").fetchone()[0] == 0:  # another process may have won the race
                for stmt in filter(str.strip, SCHEMA.split(";")):
                    con.execute(stmt)
                con.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("seed", str(seed)), ("overlap", str(overlap)), ("created_at", now())])
                con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            con.execute("COMMIT")
        finally:
            con.close()

    def _check_file(self) -> None:
        try:
            with open(self.path, "rb") as f:
                head = f.read(16)
        except OSError as e:
            raise UserError(f"{self.path}: cannot read ({e.strerror})") from None
        if head != SQLITE_MAGIC:
            raise UserError(f"{self.path}: not a SQLite database; expected an annotation database made by "
                            "`rlaif annotate serve`")
        with self._read() as con:
            app = con.execute("PRAGMA application_id").fetchone()[0]
            version = con.execute("PRAGMA user_version").fetchone()[0]
        if app != APPLICATION_ID:
            raise UserError(f"{self.path}: a SQLite database, but not an rlaif annotation database "
                            f"(application_id {app}); pass a new --db path to start one")
        if version != SCHEMA_VERSION:
            raise UserError(f"{self.path}: annotation schema version {version}, but this rlaif reads version "
                            f"{SCHEMA_VERSION}; use the rlaif version that wrote it, or a new --db")
        with self._read() as con:
            con.execute("PRAGMA journal_mode = WAL")  # persistent in the file; cheap to assert

    # ------------------------------------------------------------------ settings and pairs

    def meta(self, key: str, default: str | None = None) -> str | None:
        with self._read() as con:
            row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    @property
    def overlap(self) -> int:
        return int(self.meta("overlap", "0"))

    def set_overlap(self, k: int) -> None:
        if k < 0:
            raise UserError(f"--overlap {k}: expected 0 (everyone labels every pair) or a positive number")
        with self._write() as con:
            con.execute("INSERT INTO meta VALUES ('overlap', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (str(k),))

    def add_pairs(self, pairs: list[dict]) -> int:
        """Insert pairs not yet in the database; returns how many were new."""
        stamp = now()
        rows = [(p["pair_id"], record_id("order", self.seed, p["pair_id"]),
                 json.dumps({k: v for k, v in p.items() if k != "pair_id"}, ensure_ascii=False), stamp)
                for p in pairs]
        with self._write() as con:
            before = con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
            con.executemany("INSERT OR IGNORE INTO pairs VALUES (?, ?, ?, ?)", rows)
            return con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0] - before

    def pairs(self) -> dict[str, dict]:
        with self._read() as con:
            rows = con.execute("SELECT pair_id, data FROM pairs ORDER BY position").fetchall()
        return {pid: {"pair_id": pid, **json.loads(data)} for pid, data in rows}

    def flipped(self, annotator: str, pair_id: str) -> bool:
        """The seeded coin: does this annotator see reply b as A on this pair?"""
        return int(record_id("side", self.seed, annotator, pair_id), 16) % 2 == 1

    # ------------------------------------------------------------------ assignment and progress

    _OPEN = """NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = p.pair_id AND l.annotator = :a)
               AND (:k = 0 OR (SELECT COUNT(*) FROM labels l WHERE l.pair_id = p.pair_id AND l.status = 'label')
                    {claims} < :k)"""
    _CLAIMS = "+ (SELECT COUNT(*) FROM claims c WHERE c.pair_id = p.pair_id AND c.annotator != :a)"

    def _progress(self, con, annotator: str, k: int) -> dict:
        done = con.execute("SELECT COUNT(*) FROM labels WHERE annotator = ?", (annotator,)).fetchone()[0]
        left = con.execute(f"SELECT COUNT(*) FROM pairs p WHERE {self._OPEN.format(claims='')}",
                           {"a": annotator, "k": k}).fetchone()[0]
        return {"done": done, "total": done + left}

    def progress(self, annotator: str) -> dict:
        with self._read() as con:
            return self._progress(con, annotator, self.overlap)

    def next_pair(self, annotator: str) -> tuple[dict | None, dict]:
        """The annotator's next pair (claimed for them), or None when they are done; and progress."""
        k = self.overlap
        with self._write() as con:
            con.execute("DELETE FROM claims WHERE at < ?", (time.time() - CLAIM_SECONDS,))
            row = con.execute(f"SELECT p.pair_id, p.data FROM pairs p WHERE {self._OPEN.format(claims=self._CLAIMS)} "
                              "ORDER BY p.position LIMIT 1", {"a": annotator, "k": k}).fetchone()
            if row is None:
                con.execute("DELETE FROM claims WHERE annotator = ?", (annotator,))
                return None, self._progress(con, annotator, k)
            con.execute("INSERT INTO claims VALUES (?, ?, ?) ON CONFLICT(annotator) DO UPDATE SET "
                        "pair_id = excluded.pair_id, at = excluded.at", (annotator, row[0], time.time()))
            pair = {"pair_id": row[0], **json.loads(row[1])}
            return pair, self._progress(con, annotator, k)

    # ------------------------------------------------------------------ labels

    def record(self, annotator: str, pair_id: str, *, point: int | None = None, both_bad: bool = False,
               skip: bool = False, comment: str = "", shown: bool = True, p_a: float | None = None,
               origin: str = "page", flipped: bool | None = None, at: str | None = None) -> None:
        """Store one label (a second label by the same person on the same pair replaces the first).

        `point` is on the sides the page showed when `shown` (converted to the pair's terms with this
        annotator's coin), else already in the pair's terms. `p_a` may be given instead of a point
        (a binary label from Label Studio). Raises ValueError on a label that says nothing."""
        annotator = check_name(annotator)
        if flipped is None:
            flipped = self.flipped(annotator, pair_id)
        if point is not None:
            point = scale.to_pair_terms(int(point), flipped) if shown else int(point)
            p_a = scale.p_a(point)
        if not skip and p_a is None and not both_bad:
            raise ValueError("a label needs a point on the scale, 'both bad', or 'skip'")
        stamp = at or now()
        with self._write() as con:
            if con.execute("SELECT 1 FROM pairs WHERE pair_id = ?", (pair_id,)).fetchone() is None:
                raise KeyError(pair_id)
            con.execute(
                "INSERT INTO labels VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(pair_id, annotator) DO UPDATE "
                "SET status = excluded.status, point = excluded.point, p_a = excluded.p_a, both_bad = excluded.both_bad, "
                "flipped = excluded.flipped, comment = excluded.comment, origin = excluded.origin, "
                "updated_at = excluded.updated_at",
                (pair_id, annotator, "skip" if skip else "label", None if skip else point, None if skip else p_a,
                 int(both_bad), int(flipped), comment or "", origin, stamp, stamp))
            con.execute("DELETE FROM claims WHERE annotator = ?", (annotator,))

    def labels(self) -> list[dict]:
        """Every label with its pair, in the pairs' order then by annotator."""
        with self._read() as con:
            rows = con.execute(
                "SELECT l.pair_id, l.annotator, l.status, l.point, l.p_a, l.both_bad, l.flipped, l.comment, "
                "l.origin, l.created_at, l.updated_at, p.data FROM labels l JOIN pairs p USING (pair_id) "
                "ORDER BY p.position, l.annotator").fetchall()
        keys = ("pair_id", "annotator", "status", "point", "p_a", "both_bad", "flipped", "comment", "origin",
                "created_at", "updated_at")
        out = []
        for row in rows:
            rec = dict(zip(keys, row[:-1]))
            rec["both_bad"], rec["flipped"] = bool(rec["both_bad"]), bool(rec["flipped"])
            out.append({**rec, "pair": json.loads(row[-1])})
        return out

    def counts(self) -> dict:
        with self._read() as con:
            pairs = con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
            by = con.execute("SELECT annotator, status, COUNT(*) FROM labels GROUP BY annotator, status").fetchall()
        out: dict = {"pairs": pairs, "annotators": {}}
        for name, status, n in by:
            out["annotators"].setdefault(name, {"label": 0, "skip": 0})[status] = n
        return out
