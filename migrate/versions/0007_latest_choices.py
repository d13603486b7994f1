"""Count the choices of an image's latest version.

Revision ID: 0007_latest_choices
Revises: 0006_version_quota

`machine_image.latest_choices` goes up each time `latest` is chosen: by an operator, or by a
finished capture taking it. Moving `latest` off a destroyed version is no choice and leaves it.
A capture notes the count when it begins and, when it finishes, takes `latest` only if the
count is unchanged (or `latest` is empty), so a choice made while it ran stands.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007_latest_choices"
down_revision: str | None = "0006_version_quota"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE machine_image ADD COLUMN latest_choices bigint NOT NULL DEFAULT 0")


def downgrade() -> None:
    op.execute("ALTER TABLE machine_image DROP COLUMN latest_choices")
