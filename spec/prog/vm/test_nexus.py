"""Vm.Nexus: start and stop, and what a capture's pin does to start and destroy."""

from __future__ import annotations

from typing import Any

import pytest

from lib.errors import InvalidRequest, ResourceNotFound
from lib.scheduling.runner import StrandRunner
from model import semaphore, vm
from spec.support import strands
from spec.support.world import World, drive


async def state(world: World, vm_id: Any) -> str | None:
    async with world.engine.connect() as connection:
        return await vm.display_state(connection, vm_id)


async def test_a_vm_stops_and_starts_on_request(seeded: World, runner: StrandRunner) -> None:
    vm_id, _, _ = await seeded.vm("src", state="running")
    assert await state(seeded, vm_id) == "running"
    async with seeded.engine.begin() as connection:
        await vm.request_stop(connection, vm_id)
    assert await state(seeded, vm_id) == "stopping"
    await drive(runner, seeded.engine, vm_id, "stopped")
    await runner.run(vm_id)
    assert await state(seeded, vm_id) == "stopped"
    async with seeded.engine.begin() as connection:
        await vm.request_start(connection, vm_id)
    assert await state(seeded, vm_id) == "starting"
    await drive(runner, seeded.engine, vm_id, "running")
    assert await state(seeded, vm_id) == "running"


async def test_a_pinned_vm_refuses_start_and_destroy_requests(seeded: World) -> None:
    vm_id, _, _ = await seeded.vm("src")
    await seeded.capture(vm_id)
    for request, message in ((vm.request_start, vm.PINNED_START),
                             (vm.request_destroy, vm.PINNED_DESTROY)):
        async with seeded.engine.begin() as connection:
            with pytest.raises(InvalidRequest) as raised:
                await request(connection, vm_id)
        assert raised.value.message == message
    assert await strands.scalar(seeded.engine, "SELECT count(*) FROM semaphore WHERE"
                                " strand_id = :id", id=vm_id) == 0
    async with seeded.engine.begin() as connection:
        with pytest.raises(ResourceNotFound):
            await vm.request_start(connection, seeded.image_id)


async def test_a_start_signalled_past_the_pin_is_dropped(seeded: World, runner: StrandRunner,
                                                         logs: list[Any]) -> None:
    vm_id, _, _ = await seeded.vm("src")
    await seeded.capture(vm_id)
    async with seeded.engine.begin() as connection:
        await semaphore.incr(connection, vm_id, "start")
    await runner.run(vm_id)
    assert (await strands.row(seeded.engine, vm_id)).label == "stopped"
    assert await state(seeded, vm_id) == "stopped"
    assert any(e["event"] == "vm start refused" for e in logs)


async def test_a_destroy_signalled_past_the_pin_waits_for_the_pin_to_go(
        seeded: World, runner: StrandRunner) -> None:
    vm_id, _, _ = await seeded.vm("src", vm_host_id=None, disks=[])
    # A hostless VM cannot be captured; pin it with another VM's capture, by hand.
    other, _, _ = await seeded.vm("other")
    pinned_version = await seeded.capture(other)
    await strands.execute(seeded.engine, "UPDATE machine_image_version_metal SET"
                          " pinned_source_vm_id = :vm WHERE id = :id", vm=vm_id,
                          id=pinned_version)
    async with seeded.engine.begin() as connection:
        await semaphore.incr(connection, vm_id, "destroy")
    await runner.run(vm_id)
    row = await strands.row(seeded.engine, vm_id)
    assert row.label == "destroy" and row.exitval is None
    await strands.execute(seeded.engine, "UPDATE machine_image_version_metal SET"
                          " pinned_source_vm_id = NULL")
    assert await drive(runner, seeded.engine, vm_id, None) is None
    assert await strands.scalar(seeded.engine, "SELECT count(*) FROM vm WHERE id = :id",
                                id=vm_id) == 0


async def test_a_new_vm_is_running_or_stopped(seeded: World) -> None:
    with pytest.raises(ValueError, match="running or stopped"):
        await seeded.vm("odd", state="paused")
