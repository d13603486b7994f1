"""The version quota as a database constraint, checked at commit.

Revision ID: 0006_version_quota
Revises: 0005_api

`project.versions_held` counts the project's versions. A deferred constraint trigger adds each
new version at commit, under the project row's lock, and refuses the commit past the quota:
concurrent captures never exceed it, yet hold the lock only while their commit is written, not
for a round trip of theirs. A deleted version gives its place back at once.

The quota is `project.version_quota`, else the default the inserting transaction names in the
setting `imagecp.version_quota` (assemble names IMAGECP_VERSION_QUOTA); with neither, none.
The refusal is SQLSTATE 23514 naming the column `version`, with the API's message.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006_version_quota"
down_revision: str | None = "0005_api"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE project ADD COLUMN versions_held integer NOT NULL DEFAULT 0"
               " CHECK (versions_held >= 0)")
    op.execute("""
        UPDATE project p SET versions_held = (SELECT count(*) FROM machine_image_version v
            JOIN machine_image i ON i.id = v.machine_image_id WHERE i.project_id = p.id)
    """)
    op.execute("""
        CREATE FUNCTION machine_image_version_held() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            held integer;
            quota integer;
        BEGIN
            UPDATE project p SET versions_held = versions_held + 1 FROM machine_image i
                WHERE i.id = NEW.machine_image_id AND p.id = i.project_id
                RETURNING p.versions_held, coalesce(p.version_quota,
                    nullif(current_setting('imagecp.version_quota', true), '')::integer)
                INTO held, quota;
            IF held > quota THEN
                RAISE EXCEPTION USING ERRCODE = 'check_violation', COLUMN = 'version',
                    CONSTRAINT = 'machine_image_version_quota', MESSAGE = format(
                    'Insufficient quota for machine image versions. Requested: %s,'
                    ' maximum allowed: %s', held, quota);
            END IF;
            RETURN NULL;
        END $$
    """)
    op.execute("""
        CREATE CONSTRAINT TRIGGER machine_image_version_quota
            AFTER INSERT ON machine_image_version DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION machine_image_version_held()
    """)
    op.execute("""
        CREATE FUNCTION machine_image_version_released() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE project p SET versions_held = versions_held - 1 FROM machine_image i
                WHERE i.id = OLD.machine_image_id AND p.id = i.project_id;
            RETURN NULL;
        END $$
    """)
    op.execute("""
        CREATE TRIGGER machine_image_version_release AFTER DELETE ON machine_image_version
            FOR EACH ROW EXECUTE FUNCTION machine_image_version_released()
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER machine_image_version_release ON machine_image_version")
    op.execute("DROP TRIGGER machine_image_version_quota ON machine_image_version")
    op.execute("DROP FUNCTION machine_image_version_released()")
    op.execute("DROP FUNCTION machine_image_version_held()")
    op.execute("ALTER TABLE project DROP COLUMN versions_held")
