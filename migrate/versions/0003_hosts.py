"""Locations, hosts and how to reach them over SSH.

Revision ID: 0003_hosts
Revises: 0002_respirate
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003_hosts"
down_revision: str | None = "0002_respirate"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE location (
            id uuid PRIMARY KEY,
            name text COLLATE "C" NOT NULL UNIQUE
                CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
            created_at timestamptz NOT NULL DEFAULT now()
        )
    """)
    # A host, its strand and its sshable share one `vh` id.
    op.execute("""
        CREATE TABLE vm_host (
            id uuid PRIMARY KEY,
            location_id uuid NOT NULL REFERENCES location (id),
            state text COLLATE "C" NOT NULL DEFAULT 'bootstrapping'
                CHECK (state IN ('bootstrapping', 'ready', 'unreachable', 'refused')),
            state_reason text,
            agent_version text COLLATE "C",
            created_at timestamptz NOT NULL DEFAULT now()
        )
    """)
    # host_keys: the pinned public keys (OpenSSH lines). Empty with accept_new: the first
    # key seen is pinned (trust on first use), every later connection is checked against it.
    op.execute("""
        CREATE TABLE sshable (
            id uuid PRIMARY KEY REFERENCES vm_host (id),
            address text COLLATE "C" NOT NULL,
            port integer NOT NULL DEFAULT 22 CHECK (port BETWEEN 1 AND 65535),
            unix_user text COLLATE "C" NOT NULL DEFAULT 'imagecp',
            host_keys text[] NOT NULL DEFAULT '{}',
            accept_new boolean NOT NULL DEFAULT false,
            client_key_sealed bytea NOT NULL,
            client_public_key text NOT NULL,
            UNIQUE (address, port)
        )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE sshable")
    op.execute("DROP TABLE vm_host")
    op.execute("DROP TABLE location")
