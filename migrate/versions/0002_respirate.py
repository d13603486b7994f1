"""Respirate processes (heartbeats, membership) and NOTIFY on strands becoming due.

Revision ID: 0002_respirate
Revises: 0001_engine
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002_respirate"
down_revision: str | None = "0001_engine"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    # One row per running respirate process. Its id is the `lease_holder` of the strands it
    # runs; a row whose heartbeat is stale marks a process that is gone.
    op.execute("""
        CREATE TABLE respirate_process (
            id uuid PRIMARY KEY,
            partition integer CHECK (partition BETWEEN 1 AND 256),
            host text NOT NULL,
            pid integer NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(),
            heartbeat_at timestamptz NOT NULL DEFAULT now(),
            -- the server process of its membership connection: when the respirate process
            -- dies, even by kill -9, that backend ends within milliseconds
            backend_pid integer
        )
    """)
    # strand is a queue: most of its updates touch no indexed column (a hop, a nap within a
    # run) and can stay on their page (HOT) when the page has room. (Vacuuming it more eagerly
    # than the defaults cost 15 % of throughput with 100,000 strands: measured.)
    op.execute("ALTER TABLE strand SET (fillfactor = 70)")
    # Respirate sleeps until the earliest due strand or a notification on `strand_due`:
    # a new strand, or one that became due now (a wake, a parent woken by its last child).
    op.execute("""
        CREATE FUNCTION notify_strand_due() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('strand_due', '');
            RETURN NULL;
        END $$
    """)
    op.execute("""
        CREATE TRIGGER strand_inserted AFTER INSERT ON strand
        FOR EACH STATEMENT EXECUTE FUNCTION notify_strand_due()
    """)
    op.execute("""
        CREATE TRIGGER strand_woken AFTER UPDATE OF schedule ON strand FOR EACH ROW
        WHEN (NEW.schedule < OLD.schedule AND NEW.schedule <= now() AND NEW.exitval IS NULL)
        EXECUTE FUNCTION notify_strand_due()
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER strand_woken ON strand")
    op.execute("DROP TRIGGER strand_inserted ON strand")
    op.execute("DROP FUNCTION notify_strand_due()")
    op.execute("ALTER TABLE strand RESET (fillfactor)")
    op.execute("DROP TABLE respirate_process")
