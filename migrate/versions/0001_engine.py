"""The engine's tables: strand, semaphore, page.

Revision ID: 0001_engine
Revises:
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001_engine"
down_revision: str | None = None
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE strand (
            id uuid PRIMARY KEY,
            parent_id uuid REFERENCES strand (id),
            schedule timestamptz NOT NULL DEFAULT now(),
            lease timestamptz NOT NULL DEFAULT now() - interval '1000 years',
            lease_holder uuid,
            prog text COLLATE "C" NOT NULL,
            label text COLLATE "C" NOT NULL,
            stack jsonb NOT NULL DEFAULT '[{}]'::jsonb,
            exitval jsonb,
            retval jsonb,
            try integer NOT NULL DEFAULT 0,
            last_error text,
            CONSTRAINT strand_stack_is_array CHECK (jsonb_typeof(stack) = 'array')
        )
    """)
    # The dispatcher scans due, unexited strands in schedule order; children are found
    # by parent. The reference has neither index.
    op.execute("CREATE INDEX strand_due_index ON strand (schedule) WHERE exitval IS NULL")
    op.execute("CREATE INDEX strand_parent_id_index ON strand (parent_id)"
               " WHERE parent_id IS NOT NULL")  # most strands have no parent
    op.execute("""
        CREATE TABLE semaphore (
            id uuid PRIMARY KEY,
            strand_id uuid NOT NULL REFERENCES strand (id),
            name text COLLATE "C" NOT NULL
        )
    """)
    op.execute("CREATE INDEX ix_semaphore_strand_id ON semaphore (strand_id)")
    op.execute("CREATE TYPE page_severity AS ENUM ('info', 'warning', 'error', 'critical')")
    op.execute("""
        CREATE TABLE page (
            id uuid PRIMARY KEY,
            created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
            resolved_at timestamptz,
            summary text COLLATE "C",
            tag text COLLATE "C" NOT NULL,
            details jsonb NOT NULL DEFAULT '{}'::jsonb,
            severity page_severity NOT NULL DEFAULT 'error'
        )
    """)
    op.execute("CREATE UNIQUE INDEX page_tag_index ON page (tag) WHERE resolved_at IS NULL")


def downgrade() -> None:
    op.execute("DROP TABLE page")
    op.execute("DROP TYPE page_severity")
    op.execute("DROP TABLE semaphore")
    op.execute("DROP TABLE strand")
