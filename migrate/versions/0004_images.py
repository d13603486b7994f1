"""Projects, VMs and their disks, machine images, their versions, stores and keys.

Revision ID: 0004_images
Revises: 0003_hosts
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004_images"
down_revision: str | None = "0003_hosts"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None

NAME = "'^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$'"
LABEL = "'^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$'"


def upgrade() -> None:
    # How the agent's Python is run on a host: it needs zstandard, cryptography and obstore.
    op.execute("ALTER TABLE sshable ADD COLUMN python text NOT NULL DEFAULT 'python3'")
    # version_quota NULL: the configured default (IMAGECP_VERSION_QUOTA).
    op.execute(f"""
        CREATE TABLE project (
            id uuid PRIMARY KEY,
            name text NOT NULL CHECK (name ~ {NAME}),
            version_quota integer CHECK (version_quota >= 0),
            created_at timestamptz NOT NULL DEFAULT now()
        )
    """)
    # vm_host_id NULL: a VM that is not on one of our hosts (nothing to capture from).
    op.execute(f"""
        CREATE TABLE vm (
            id uuid PRIMARY KEY,
            project_id uuid NOT NULL REFERENCES project (id),
            location_id uuid NOT NULL REFERENCES location (id),
            vm_host_id uuid REFERENCES vm_host (id),
            name text NOT NULL CHECK (name ~ {NAME}),
            arch text COLLATE "C" NOT NULL CHECK (arch IN ('x64', 'arm64')),
            created_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (project_id, location_id, name)
        )
    """)
    op.execute("CREATE INDEX vm_host_idx ON vm (vm_host_id)")
    op.execute("""
        CREATE TABLE storage_key_encryption_key (
            id uuid PRIMARY KEY,
            algorithm text COLLATE "C" NOT NULL DEFAULT 'aes-256-gcm'
                CHECK (algorithm = 'aes-256-gcm'),
            key_sealed bytea NOT NULL,
            auth_data text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
    """)
    # project_id NULL: the location's default store, used by projects without their own.
    op.execute("""
        CREATE TABLE machine_image_store (
            id uuid PRIMARY KEY,
            project_id uuid REFERENCES project (id),
            location_id uuid NOT NULL REFERENCES location (id),
            kind text COLLATE "C" NOT NULL CHECK (kind IN ('directory', 's3')),
            path text,
            endpoint text,
            region text,
            bucket text,
            access_key_sealed bytea,
            secret_key_sealed bytea,
            created_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE NULLS NOT DISTINCT (project_id, location_id),
            CHECK (kind <> 'directory' OR path LIKE '/%'),
            CHECK (kind <> 's3' OR (endpoint IS NOT NULL AND region IS NOT NULL
                AND bucket IS NOT NULL AND access_key_sealed IS NOT NULL
                AND secret_key_sealed IS NOT NULL))
        )
    """)
    op.execute(f"""
        CREATE TABLE machine_image (
            id uuid PRIMARY KEY,
            project_id uuid NOT NULL REFERENCES project (id),
            location_id uuid NOT NULL REFERENCES location (id),
            name text NOT NULL CHECK (name ~ {NAME}),
            arch text COLLATE "C" NOT NULL CHECK (arch IN ('x64', 'arm64')),
            latest_version_id uuid,
            created_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (project_id, location_id, name)
        )
    """)
    op.execute(f"""
        CREATE TABLE machine_image_version (
            id uuid PRIMARY KEY,
            machine_image_id uuid NOT NULL REFERENCES machine_image (id),
            version text COLLATE "C" NOT NULL CHECK (version ~ {LABEL}),
            actual_size_mib integer CHECK (actual_size_mib >= 0),
            created_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (machine_image_id, version)
        )
    """)
    op.execute("ALTER TABLE machine_image ADD FOREIGN KEY (latest_version_id)"
               " REFERENCES machine_image_version (id)")
    # One capture per VM at a time is the unique pin; the foreign key keeps a pinned VM's row.
    op.execute("""
        CREATE TABLE machine_image_version_metal (
            id uuid PRIMARY KEY REFERENCES machine_image_version (id),
            status text COLLATE "C" NOT NULL
                CHECK (status IN ('creating', 'ready', 'destroying', 'failed')),
            archive_size_mib integer CHECK (archive_size_mib >= 0),
            archive_kek_id uuid NOT NULL REFERENCES storage_key_encryption_key (id),
            store_id uuid NOT NULL REFERENCES machine_image_store (id),
            store_prefix text COLLATE "C" NOT NULL CHECK (store_prefix ~ '^[^/].*/$'),
            pinned_source_vm_id uuid UNIQUE REFERENCES vm (id),
            failure_reason text,
            CHECK (status <> 'ready' OR archive_size_mib IS NOT NULL)
        )
    """)
    # machine_image_version_id: the volume's contents come from that version (it keeps the
    # version's objects until the volume no longer needs them).
    op.execute("""
        CREATE TABLE vm_storage_volume (
            id uuid PRIMARY KEY,
            vm_id uuid NOT NULL REFERENCES vm (id),
            disk_index integer NOT NULL CHECK (disk_index >= 0),
            path text NOT NULL CHECK (path LIKE '/%'),
            size_bytes bigint NOT NULL CHECK (size_bytes > 0),
            machine_image_version_id uuid REFERENCES machine_image_version (id),
            UNIQUE (vm_id, disk_index)
        )
    """)
    op.execute("CREATE INDEX vm_storage_volume_version_idx ON vm_storage_volume"
               " (machine_image_version_id) WHERE machine_image_version_id IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP TABLE vm_storage_volume")
    op.execute("DROP TABLE machine_image_version_metal")
    op.execute("ALTER TABLE machine_image DROP COLUMN latest_version_id")
    op.execute("DROP TABLE machine_image_version")
    op.execute("DROP TABLE machine_image")
    op.execute("DROP TABLE machine_image_store")
    op.execute("DROP TABLE storage_key_encryption_key")
    op.execute("DROP TABLE vm")
    op.execute("DROP TABLE project")
    op.execute("ALTER TABLE sshable DROP COLUMN python")
