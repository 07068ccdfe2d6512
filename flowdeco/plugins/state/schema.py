"""The state database's schema: its tables as migrations, the version, the file's mark.

``PRAGMA user_version`` holds :data:`SCHEMA_VERSION`; ``PRAGMA
application_id`` (:data:`APPLICATION_ID`) marks the file as flowdeco's.
:mod:`.store_open` applies the migrations (under the creation lock, in one
transaction); a read-only open leaves an older schema as it is.
"""

from __future__ import annotations

#: ``PRAGMA application_id`` of a flowdeco state database ("fdst")
APPLICATION_ID = 0x66647374
SCHEMA_VERSION = 4

#: schema version -> statements that bring the previous version up to it
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE runs (
            run_id   TEXT PRIMARY KEY NOT NULL,
            flow     TEXT NOT NULL,
            status   TEXT NOT NULL,
            started  REAL NOT NULL,
            session_started REAL NOT NULL,
            finished REAL,
            duration REAL NOT NULL DEFAULT 0,
            sessions INTEGER NOT NULL DEFAULT 1,
            pid      INTEGER
        )""",
        """CREATE TABLE tasks (
            run_id      TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
            name        TEXT NOT NULL,
            status      TEXT NOT NULL,
            attempts    INTEGER NOT NULL,
            started     REAL,
            finished    REAL,
            fingerprint TEXT,
            result      TEXT,
            error       TEXT,
            reason      TEXT,
            PRIMARY KEY (run_id, name)
        ) WITHOUT ROWID""",
        "CREATE INDEX runs_by_flow ON runs (flow, session_started)",
    ),
    2: (  # input-hash caching (@task(cache=...)): the key a successful result answers
        "ALTER TABLE tasks ADD COLUMN cache_key TEXT",
        "CREATE INDEX tasks_by_cache_key ON tasks (cache_key, finished) "
        "WHERE cache_key IS NOT NULL",
    ),
    # sha256 of ``result`` (the stored text, UTF-8), checked when it is restored; rows
    # written before version 3 have none and are trusted as before
    3: ("ALTER TABLE tasks ADD COLUMN checksum TEXT",),
    # flow versions (see .versions): each run's version, one graph snapshot per version;
    # indexes for the UI's runs listing (latest first, by status)
    4: (
        "ALTER TABLE runs ADD COLUMN flow_version TEXT",
        """CREATE TABLE flow_graphs (
            digest TEXT PRIMARY KEY NOT NULL,
            flow   TEXT NOT NULL,
            graph  TEXT NOT NULL
        )""",
        "CREATE INDEX runs_by_session ON runs (session_started, started)",
        "CREATE INDEX runs_by_status ON runs (status, session_started)",
        "CREATE INDEX runs_by_version ON runs (flow_version) WHERE flow_version IS NOT NULL",
    ),
}
