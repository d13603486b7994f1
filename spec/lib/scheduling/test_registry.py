"""Prog names and loading: lib/scheduling/registry.py."""

from __future__ import annotations

import pytest

from lib.scheduling import registry
from lib.scheduling.flow import EngineBug
from prog.page_nexus import PageNexus

# Aliased so that pytest does not try to collect the prog classes as test classes.
from prog.test import Test as ProgTest
from prog.test.test2 import Test2 as ProgTest2


class Outsider:
    """A class outside the prog package."""


def test_name_of_test_is_test() -> None:
    assert registry.name_of(ProgTest) == "Test"


def test_name_of_test2_is_test_dot_test2() -> None:
    assert registry.name_of(ProgTest2) == "Test.Test2"


def test_name_of_page_nexus_is_page_nexus() -> None:
    assert registry.name_of(PageNexus) == "PageNexus"


def test_name_of_a_class_outside_the_prog_package_is_an_engine_bug() -> None:
    with pytest.raises(EngineBug, match=r"^BUG: prog must be in the prog package"):
        registry.name_of(Outsider)


def test_name_of_a_module_merely_starting_with_prog_is_an_engine_bug() -> None:
    lookalike = type("Lookalike", (), {"__module__": "progress.thing"})
    with pytest.raises(EngineBug, match=r"^BUG: prog must be in the prog package"):
        registry.name_of(lookalike)


def test_name_of_camel_cases_module_segments_and_keeps_a_different_class_name() -> None:
    nested = type("Nexus", (), {"__module__": "prog.vm_host.nexus"})
    assert registry.name_of(nested) == "VmHost.Nexus"
    other = type("Helper", (), {"__module__": "prog.vm.nexus"})
    assert registry.name_of(other) == "Vm.Nexus.Helper"


@pytest.mark.parametrize("cls", [ProgTest, ProgTest2, PageNexus])
def test_load_round_trips_name_of(cls: type) -> None:
    assert registry.load(registry.name_of(cls)) is cls


def test_load_finds_each_known_name() -> None:
    assert registry.load("Test") is ProgTest
    assert registry.load("Test.Test2") is ProgTest2
    assert registry.load("PageNexus") is PageNexus


@pytest.mark.parametrize("name", ["Nope", "Test.Nope", "Test.Test", "PageNexus.Nope"])
def test_load_of_an_unknown_name_raises_lookup_error(name: str) -> None:
    with pytest.raises(LookupError, match="no prog named"):
        registry.load(name)


@pytest.mark.parametrize("name", ["os.path", "../x", "", "test", "Test.", ".Test", "Test..Test2",
                                  "Test/Test2", "Test Test2"])
def test_load_of_a_non_name_raises_lookup_error(name: str) -> None:
    with pytest.raises(LookupError, match="not a prog name"):
        registry.load(name)
