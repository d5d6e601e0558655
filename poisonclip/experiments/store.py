"""The results store: one SQLite file, one row per (cell, seed), written one trial per transaction.

A trial's rows are inserted in a single transaction, so a sweep killed at any moment (SIGINT,
SIGTERM, SIGKILL) leaves either all of a trial's rows or none; ``PRIMARY KEY (config_hash, seed)``
makes a second insert of the same result a no-op, so reruns never duplicate. Rollback-journal mode
(SQLite's default) rather than WAL, because WAL needs shared memory that network file systems
(where SLURM jobs write) do not provide.

Tables::

    results      config_hash, seed (key) · train_hash (rows sharing one trained model) · attack ·
                 config, metrics, curves, versions (JSON) · wall_seconds · host · finished_at
    sweeps       name · description · figures (JSON) · source (the experiment file) · updated_at
    sweep_cells  (sweep, config_hash): which cells an experiment file currently contains
    claims       (train_hash, seed) · host · pid · started_at: trials being run right now

Metrics are JSON, so attacks can report different ones; query them with SQLite's JSON functions,
e.g. ``SELECT json_extract(metrics, '$.zscore') FROM results``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from poisonclip.data.files import DataFiles
from poisonclip.data.io import process_alive
from poisonclip.data.synthetic import SyntheticConfig
from poisonclip.errors import UsageError
from poisonclip.experiments.grid import Sweep, Trial
from poisonclip.experiments.runners import CellResult, get_runner
from poisonclip.keys import added_later

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    config_hash TEXT NOT NULL,
    seed INTEGER NOT NULL,
    train_hash TEXT NOT NULL,
    attack TEXT NOT NULL,
    config TEXT NOT NULL,
    metrics TEXT NOT NULL,
    curves TEXT NOT NULL,
    wall_seconds REAL NOT NULL,
    versions TEXT NOT NULL,
    host TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    PRIMARY KEY (config_hash, seed)
);
CREATE TABLE IF NOT EXISTS sweeps (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    figures TEXT NOT NULL,
    source TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sweep_cells (
    sweep TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    PRIMARY KEY (sweep, config_hash)
);
CREATE TABLE IF NOT EXISTS claims (
    train_hash TEXT NOT NULL,
    seed INTEGER NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    PRIMARY KEY (train_hash, seed)
);
"""


DATA_KEYS = frozenset(
    f"data.{f.name}" for cls in (SyntheticConfig, DataFiles) for f in dataclasses.fields(cls)
)


@dataclass(frozen=True)
class ResultRow:
    """One stored result: ``cell`` is the flattened cell config (``data.num_train``,
    ``train.model``, and the attack's parameters unprefixed, e.g. ``poison_count``)."""

    config_hash: str
    seed: int
    train_hash: str
    attack: str
    cell: dict[str, Any]
    metrics: dict[str, float | int]
    curves: dict[str, list]
    wall_seconds: float
    versions: dict[str, str]
    host: str
    finished_at: str

    def get(self, key: str) -> Any:
        """A cell field, else a metric; ``None`` for a data field another kind of data has (a user's
        files have no ``data.seed``, the synthetic data no ``data.train``), as one figure may draw both."""
        if key in self.cell:
            return self.cell[key]
        return None if key in DATA_KEYS else self.metrics[key]

    @property
    def synthetic(self) -> bool:
        """Whether the row's model trained on the synthetic data (not on a user's files)."""
        return "data.fingerprint" not in self.cell


# How long another host's claim is trusted: long enough for any sweep trial, short enough that a
# node that died does not block its trials for good (SubmititExecutor releases failed jobs' claims).
CLAIM_TTL = timedelta(hours=24)


@dataclass(frozen=True)
class Claim:
    train_hash: str
    seed: int
    host: str
    pid: int
    started_at: str

    def alive(self) -> bool:
        """False when the claim's process is known dead (same host, no such pid), or when it is
        another host's claim older than ``CLAIM_TTL`` (its process cannot be checked from here)."""
        if self.host != socket.gethostname():  # e.g. a SLURM job on another node
            return datetime.now(UTC) - datetime.fromisoformat(self.started_at) < CLAIM_TTL
        return process_alive(self.pid)


def flatten_cell(config: dict) -> dict[str, Any]:
    """``Cell.to_dict()`` → one flat dict: ``data.*``, ``train.*`` and the attack's parameters,
    those left out of the key at their default (``keys.added_later``) filled in, e.g. the trigger
    of a checkerboard cell."""
    flat = {"attack": config["attack"], **_unhashed_defaults(config["attack"]), **config["params"]}
    for section in ("data", "train"):
        flat.update({f"{section}.{k}": v for k, v in config[section].items()})
    return flat


def _unhashed_defaults(attack: str) -> dict[str, Any]:
    """The attack parameters that the result key leaves out at their (non-None) default."""
    try:
        params = get_runner(attack).params
    except UsageError:  # a row of an attack this version no longer has
        return {}
    later = added_later(params)
    fields = dataclasses.fields(params)
    return {f.name: f.default for f in fields if f.name in later and f.default is not None}


def trial_done(trial: Trial, done: set[tuple[str, int]]) -> bool:
    """Whether every cell of ``trial`` has its row among ``done`` (ResultStore.done_keys())."""
    return all((cell.key, trial.seed) in done for cell in trial.cells)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ResultStore:
    """A results database at ``path`` (created on first use). Every method opens its own short
    connection, so one store may be used from many processes at once."""

    def __init__(self, path: str | os.PathLike, create: bool = True, read_only: bool = False) -> None:
        """``create=False``: the database must exist. ``read_only``: it must exist and is only read
        (opened read-only, no schema added): an empty or foreign file is refused, not changed."""
        self.path, self.read_only = Path(path), read_only
        if self.path.is_dir():
            raise UsageError(f"{self.path} is a directory, not a results database")
        if (read_only or not create) and not self.path.is_file():
            raise UsageError(f"results database not found: {self.path}")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as db:
                self.tables = {
                    name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                }
                if self.tables and "results" not in self.tables:  # someone else's: add nothing to it
                    raise UsageError(
                        f"{self.path}: an SQLite database, but not a poisonclip results database"
                    )
                if read_only and not self.tables:  # e.g. an empty file: SQLite reads it as no tables
                    raise UsageError(f"{self.path}: holds no results database (no tables)")
                if not read_only:
                    # Idempotent, and adds the tables an older store lacks; executescript manages
                    # its own transaction.
                    db.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:  # not SQLite at all, or unreadable
            raise UsageError(f"{self.path}: not a results database ({err})") from err

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) below.
        # Read-only: SQLite's URI mode=ro, which creates, writes and locks nothing for writing.
        target = f"{self.path.absolute().as_uri()}?mode=ro" if self.read_only else self.path
        with closing(sqlite3.connect(target, timeout=120, isolation_level=None, uri=self.read_only)) as db:
            yield db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; taking the write lock up front avoids lock-upgrade deadlocks."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def register_sweep(self, sweep: Sweep) -> None:
        """Record the sweep and the cells it contains now (replacing an older version's list)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO sweeps VALUES (?, ?, ?, ?, ?)",
                (sweep.name, sweep.description, json.dumps(list(sweep.figures)), sweep.source, _now()),
            )
            db.execute("DELETE FROM sweep_cells WHERE sweep = ?", (sweep.name,))
            db.executemany(
                "INSERT INTO sweep_cells VALUES (?, ?)", [(sweep.name, cell.key) for cell in sweep.cells]
            )

    def done_keys(self) -> set[tuple[str, int]]:
        """Every stored (config_hash, seed)."""
        with self._connect() as db:
            return set(db.execute("SELECT config_hash, seed FROM results"))

    def claim(self, trial: Trial, pid: int) -> bool:
        """Claim ``trial`` for process ``pid`` of this host, atomically (one write transaction, so
        of two processes asking at once exactly one gets it). False, changing nothing, if its rows
        are all stored or another live process holds it; a dead process's claim is taken over."""
        host = socket.gethostname()
        with self._transaction() as db:
            done = set(db.execute("SELECT config_hash, seed FROM results WHERE seed = ?", (trial.seed,)))
            held = db.execute(
                "SELECT * FROM claims WHERE train_hash = ? AND seed = ?", (trial.train_key, trial.seed)
            ).fetchone()
            holder = Claim(*held) if held is not None else None
            if trial_done(trial, done) or (
                holder and (holder.host, holder.pid) != (host, pid) and holder.alive()
            ):
                return False
            db.execute(
                "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?)",
                (trial.train_key, trial.seed, host, pid, _now()),
            )
            return True

    def release(self, trial: Trial) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM claims WHERE train_hash = ? AND seed = ?", (trial.train_key, trial.seed))

    def claims(self) -> list[Claim]:
        if "claims" not in self.tables and self.read_only:  # an older store, opened read-only
            return []
        with self._connect() as db:
            return [Claim(*row) for row in db.execute("SELECT * FROM claims")]

    def add_trial(
        self,
        trial: Trial,
        results: Sequence[CellResult],
        wall_seconds: float,
        versions: dict[str, str],
    ) -> None:
        """Insert one row per cell of ``trial`` and drop its claim, in one transaction."""
        if len(results) != len(trial.cells):
            raise ValueError(f"{len(results)} results for {len(trial.cells)} cells")
        host, finished = socket.gethostname(), _now()
        rows = [
            (
                cell.key,
                trial.seed,
                cell.train_key,
                cell.attack,
                json.dumps(cell.to_dict(), sort_keys=True),
                json.dumps(result.metrics, sort_keys=True),
                json.dumps(result.curves),
                wall_seconds,
                json.dumps(versions, sort_keys=True),
                host,
                finished,
            )
            for cell, result in zip(trial.cells, results, strict=True)
        ]
        with self._transaction() as db:
            db.executemany(f"INSERT OR IGNORE INTO results VALUES ({', '.join('?' * 11)})", rows)
            db.execute("DELETE FROM claims WHERE train_hash = ? AND seed = ?", (trial.train_key, trial.seed))

    def sweeps(self) -> dict[str, dict[str, Any]]:
        """name → {"description", "figures": [...], "source": file text, "updated_at"}."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM sweeps ORDER BY name")
            return {
                name: {
                    "description": text,
                    "figures": json.loads(figures),
                    "source": source,
                    "updated_at": at,
                }
                for name, text, figures, source, at in rows
            }

    def rows(self, sweeps: Sequence[str] | None = None) -> list[ResultRow]:
        """Stored results, all or those of cells the named sweeps contain (each row once)."""
        query = "SELECT * FROM results"
        args: tuple = ()
        if sweeps is not None:
            marks = ", ".join("?" * len(sweeps))
            query += f" WHERE config_hash IN (SELECT config_hash FROM sweep_cells WHERE sweep IN ({marks}))"
            args = tuple(sweeps)
        with self._connect() as db:
            records = db.execute(query + " ORDER BY config_hash, seed", args).fetchall()
        return [
            ResultRow(
                config_hash=key,
                seed=seed,
                train_hash=train_hash,
                attack=attack,
                cell=flatten_cell(json.loads(config)),
                metrics=json.loads(metrics),
                curves=json.loads(curves),
                wall_seconds=wall,
                versions=json.loads(versions),
                host=host,
                finished_at=finished,
            )
            for (
                key,
                seed,
                train_hash,
                attack,
                config,
                metrics,
                curves,
                wall,
                versions,
                host,
                finished,
            ) in records
        ]
