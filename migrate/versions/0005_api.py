"""Personal access tokens for the HTTP API.

Revision ID: 0005_api
Revises: 0004_images
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005_api"
down_revision: str | None = "0004_images"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    # Only a hash of the secret is kept: the token itself is shown once, when created.
    op.execute("""
        CREATE TABLE api_token (
            id uuid PRIMARY KEY,
            project_id uuid NOT NULL REFERENCES project (id),
            secret_hash bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz
        )
    """)


def downgrade() -> None:
    op.execute("DROP TABLE api_token")
