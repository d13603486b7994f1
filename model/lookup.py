"""Find the row an id names, from the type prefix of its UBID."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from lib import ubid
from model.base import Base
from model.page import Page
from model.semaphore import Semaphore
from model.strand import Strand

# The model that mints each prefix. Shared ids (a nexus strand has its subject's id) resolve
# to the minting model, not to the strand.
BY_PREFIX: dict[str, type[Base]] = {
    ubid.TYPE_STRAND: Strand,
    ubid.TYPE_SEMAPHORE: Semaphore,
    ubid.TYPE_PAGE: Page,
}


async def by_ubid(session: AsyncSession, text: str) -> Base | None:
    """The row named by a UBID string; None when malformed, of an unknown type, or absent."""
    try:
        value = ubid.to_uuid(text)
    except ubid.UbidParseError:
        return None
    model = BY_PREFIX.get(text[:2].lower())
    return None if model is None else await session.get(model, value)
