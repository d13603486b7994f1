"""The API in-process for tests: an httpx client on the app, over the test database, with a
token for the seeded world's project."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from lib import ubid
from lib.api import create_app
from model import api_token
from spec.support.world import World


@dataclass
class Api:
    client: httpx.AsyncClient
    world: World
    token: str
    token_id: Any

    @property
    def base(self) -> str:
        return f"/project/{ubid.to_ubid(self.world.project_id)}/location/lab/machine-image"

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    async def get(self, path: str, **options: Any) -> httpx.Response:
        return await self.client.get(path, headers=self.auth(), **options)

    async def post(self, path: str, body: Any = None, **options: Any) -> httpx.Response:
        return await self.client.post(path, json=body, headers=self.auth(), **options)

    async def patch(self, path: str, body: Any = None) -> httpx.Response:
        return await self.client.patch(path, json=body, headers=self.auth())

    async def delete(self, path: str) -> httpx.Response:
        return await self.client.delete(path, headers=self.auth())


async def token_for(engine: AsyncEngine, project_id: Any) -> tuple[Any, str]:
    async with engine.begin() as connection:
        return await api_token.create(connection, project_id)


@pytest.fixture
async def api(engine: AsyncEngine, seeded: World) -> AsyncIterator[Api]:
    app = create_app(engine)
    token_id, token = await token_for(engine, seeded.project_id)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield Api(client, seeded, token, token_id)
