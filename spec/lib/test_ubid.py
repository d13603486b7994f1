"""UBIDs: reference §4 and §7 items 117-131."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest

from lib import ubid

# §4.7: (ubid, uuid) pairs verified with an independent implementation.
VECTORS = [
    ("mvn30gjk1d1e2jj34v9x0dq4rp", "a8c1094c-2d0b-869b-9486-4da7a06dc98b"),
    ("pjkkmx0f2vke4h36nk9cm8v8q0", "9ce9d03c-5b9b-8ad2-88cd-59a59446d170"),
    ("vmqsknkzw5164hkfnt6z6zgjps", "be6759ff-8509-8b74-8cdf-5d1be6fc256c"),
    ("ab00000003x27g0000000qe9m3", "00000000-03e8-8d4b-8000-000000bb9341"),
    ("st00000000021g000000000001", "00000000-0000-833a-8000-000000000000"),
    ("sm06dqdpn8023g4hmasw9nf6yz", "019b76da-a800-8734-8123-456789abcdef"),
    ("emam788072kd1mwb48sjn8g000", "550e8400-e29b-41d4-a716-446655440000"),
    ("ttzzzzzzzz021gzzz0pj0v1ew0", "ffffffff-ff00-835a-87ff-f05a40d85dc0"),
]

# §4.6: model prefixes and their numeric codes.
PREFIX_CODES = {
    "pj": 722, "vm": 884, "vh": 881, "st": 826, "sm": 820, "pa": 714,
    "sh": 817, "m1": 641, "mv": 667, "m0": 640, "et": 474,
}

CONSTANTS = {name: value for name, value in vars(ubid).items() if name.startswith("TYPE_")}


def _timestamp(value: uuid.UUID) -> int:
    return value.int >> 80


# -- test vectors --------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), VECTORS)
def test_to_ubid_renders_each_reference_vector(text: str, expected: str) -> None:
    assert ubid.to_ubid(uuid.UUID(expected)) == text
    assert ubid.to_ubid(expected) == text  # a uuid string is accepted too


@pytest.mark.parametrize(("text", "expected"), VECTORS)
def test_to_uuid_parses_each_reference_vector(text: str, expected: str) -> None:
    assert ubid.to_uuid(text) == uuid.UUID(expected)


@pytest.mark.parametrize(("text", "message"), [
    ("vm164pbm96-a3grq6vbsvjb3ax", "Invalid base32 encoding: -"),
    ("vm164pbm96ba3grq6vbsvjb3ax", "Invalid top bits parity"),
    ("vm064pbm96ba3grq6vbsvjb3az", "Invalid bottom bits parity"),
    ("123456", "Invalid encoding length: 6"),
])
def test_to_uuid_rejects_invalid_examples_with_exact_message(text: str, message: str) -> None:
    with pytest.raises(ubid.UbidParseError) as raised:
        ubid.to_uuid(text)
    assert str(raised.value) == message
    assert isinstance(raised.value, ValueError)


def test_to_uuid_rejects_too_long_text_with_its_length() -> None:
    with pytest.raises(ubid.UbidParseError) as raised:
        ubid.to_uuid("vmqsknkzw5164hkfnt6z6zgjpsx")
    assert str(raised.value) == "Invalid encoding length: 27"


def test_from_parts_builds_the_reference_vector() -> None:
    value = ubid.from_parts(1000, "ab", 3, 12292929)
    assert value == uuid.UUID("00000000-03e8-8d4b-8000-000000bb9341")
    assert ubid.to_ubid(value) == "ab00000003x27g0000000qe9m3"
    assert value.version == 8
    assert value.variant == uuid.RFC_4122  # variant bits 0b10


def test_from_parts_builds_the_semaphore_vector() -> None:
    value = ubid.from_parts(1767225600000, "sm", 1, 0x123456789ABCDEF)
    assert value == uuid.UUID("019b76da-a800-8734-8123-456789abcdef")
    assert ubid.to_ubid(value) == "sm06dqdpn8023g4hmasw9nf6yz"


def test_from_parts_to_string_and_back_round_trips() -> None:
    value = ubid.from_parts(123456789, "pa", 2, 2**61 + 12345)
    assert ubid.to_uuid(ubid.to_ubid(value)) == value


# -- prefixes and the alphabet -------------------------------------------------------------

def test_type_code_of_sm_is_820() -> None:
    assert ubid.type_code("sm") == 820


@pytest.mark.parametrize(("prefix", "code"), sorted(PREFIX_CODES.items()))
def test_type_code_matches_reference_table(prefix: str, code: int) -> None:
    assert ubid.type_code(prefix) == code


@pytest.mark.parametrize("prefix", ["s", "smx", ""])
def test_type_code_rejects_a_prefix_not_of_two_characters(prefix: str) -> None:
    with pytest.raises(ValueError, match="two characters"):
        ubid.type_code(prefix)


def test_aliases_o_i_l_decode_as_zero_and_one() -> None:
    canonical = "st00000000021g000000000001"
    for one in ("i", "l", "I", "L"):
        aliased = "st" + canonical[2:].replace("0", "o").replace("1", one)
        assert aliased != canonical
        assert ubid.to_uuid(aliased) == ubid.to_uuid(canonical)
        assert ubid.to_ubid(ubid.to_uuid(aliased)) == canonical  # rendering is canonical
    assert ubid.to_uuid("st" + canonical[2:].replace("0", "O")) == ubid.to_uuid(canonical)
    assert ubid.type_code("0o") == ubid.type_code("00") == 0
    assert ubid.type_code("il") == ubid.type_code("11") == 33


def test_vanity_text_renders_back_in_canonical_spelling() -> None:
    value = ubid.to_uuid("stresolvee4block0dnsnamesz")
    assert ubid.to_ubid(value) == "stres01vee4b10ck0dnsnamesz"
    assert ubid.to_uuid("stres01vee4b10ck0dnsnamesz") == value


def test_uppercase_input_parses() -> None:
    assert ubid.to_uuid("VMQSKNKZW5164HKFNT6Z6ZGJPS") == uuid.UUID(
        "be6759ff-8509-8b74-8cdf-5d1be6fc256c")
    assert ubid.to_uuid("VmQsKnKzW5164hKfNt6Z6zGjPs") == ubid.to_uuid("vmqsknkzw5164hkfnt6z6zgjps")


def test_u_is_rejected_with_its_uppercase_character() -> None:
    with pytest.raises(ubid.UbidParseError) as raised:
        ubid.to_uuid("vmqsknkzw5164hkfnt6z6zgjpu")
    assert str(raised.value) == "Invalid base32 encoding: U"
    with pytest.raises(ubid.UbidParseError) as raised:
        ubid.to_uuid("umqsknkzw5164hkfnt6z6zgjps")  # in the type characters too
    assert str(raised.value) == "Invalid base32 encoding: U"


# -- generation ----------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", sorted(PREFIX_CODES))
def test_generate_ids_carry_their_prefix(prefix: str) -> None:
    value = ubid.generate(prefix)
    assert ubid.to_ubid(value).startswith(prefix)
    assert ubid.prefix_of(value) == prefix
    assert (value.int >> 64) & 1023 == PREFIX_CODES[prefix]


def test_generated_ids_have_version_8_and_variant_0b10() -> None:
    for value in [ubid.generate(ubid.TYPE_VM) for _ in range(50)]:
        assert value.version == 8
        assert (value.int >> 76) & 0xF == 8
        assert (value.int >> 62) & 0b11 == 0b10
        assert str(value)[14] == "8"
        assert str(value)[19] in "89ab"


def test_generated_ids_have_char_13_in_g_to_q() -> None:
    seen = set()
    for _ in range(200):
        for value in (ubid.generate(ubid.TYPE_STRAND),
                      ubid.generate_from_time(ubid.TYPE_SEMAPHORE)):
            char = ubid.to_ubid(value)[13]
            assert char in "ghjkmnpq"
            seen.add(char)
    assert len(seen) > 1  # the 3 random bits of rand_b behind the variant do vary


def test_random_ids_spread_their_timestamps_widely() -> None:
    stamps = [_timestamp(ubid.generate(ubid.TYPE_STRAND)) for _ in range(10)]
    assert len(set(stamps)) == 10
    assert max(stamps) - min(stamps) > 8  # reference item 126
    assert max(stamps) - min(stamps) > 2**44  # uniform over the 48-bit space, not wall time


def test_generate_ids_are_distinct() -> None:
    values = {ubid.generate(ubid.TYPE_PAGE) for _ in range(1000)}
    assert len(values) == 1000


def test_generate_from_time_time_of_round_trips_to_the_millisecond() -> None:
    moment = datetime(2026, 1, 1, 12, 34, 56, 789000, tzinfo=UTC)
    value = ubid.generate_from_time(ubid.TYPE_SEMAPHORE, moment.timestamp())
    assert ubid.time_of(value) == moment
    assert _timestamp(value) == 1767270896789
    assert ubid.to_ubid(value).startswith("sm")


def test_generate_from_time_rounds_an_explicit_time_to_the_millisecond() -> None:
    at = 1767225600.0009  # 0.9 ms past the second
    value = ubid.generate_from_time(ubid.TYPE_SEMAPHORE, at)
    assert _timestamp(value) == round(at * 1000) == 1767225600001
    assert _timestamp(ubid.generate_from_time(ubid.TYPE_SEMAPHORE, 1767225600.0002)) == (
        1767225600000)


def test_generate_from_time_without_a_time_floors_the_wall_clock(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # §4.5: timestamp ids (semaphores) carry floor(wall ms), like gen_timestamp_ubid_uuid; an
    # id must never claim a millisecond that has not started yet.
    monkeypatch.setattr(time, "time", lambda: 1767225600.0009)
    value = ubid.generate_from_time(ubid.TYPE_SEMAPHORE)
    assert _timestamp(value) == 1767225600000


def test_ids_made_at_the_same_time_cluster() -> None:
    before = time.time() * 1000
    stamps = [_timestamp(ubid.generate_from_time(ubid.TYPE_SEMAPHORE)) for _ in range(10)]
    after = time.time() * 1000
    assert max(stamps) - min(stamps) < 128  # reference item 126
    assert before - 1 <= min(stamps) and max(stamps) <= after + 1


def test_time_of_the_reference_semaphore_vector_is_new_year_2026() -> None:
    value = ubid.to_uuid("sm06dqdpn8023g4hmasw9nf6yz")
    assert ubid.time_of(value) == datetime(2026, 1, 1, tzinfo=UTC)


# -- validation helpers --------------------------------------------------------------------

def test_is_valid_accepts_a_well_formed_ubid() -> None:
    assert ubid.is_valid("vmqsknkzw5164hkfnt6z6zgjps")
    assert ubid.is_valid("vmqsknkzw5164hkfnt6z6zgjps", "vm")
    assert ubid.is_valid("VMQSKNKZW5164HKFNT6Z6ZGJPS", "vm")


def test_is_valid_rejects_a_prefix_mismatch() -> None:
    assert not ubid.is_valid("vmqsknkzw5164hkfnt6z6zgjps", "pj")


@pytest.mark.parametrize("text", [
    "vm164pbm96-a3grq6vbsvjb3ax", "vm164pbm96ba3grq6vbsvjb3ax", "vm064pbm96ba3grq6vbsvjb3az",
    "123456", "", "vmqsknkzw5164hkfnt6z6zgjpu",
])
def test_is_valid_rejects_malformed_text(text: str) -> None:
    assert not ubid.is_valid(text)
    assert not ubid.is_valid(text, "vm")


def test_looks_like_accepts_the_canonical_shape_of_the_type() -> None:
    assert ubid.looks_like("vmqsknkzw5164hkfnt6z6zgjps", "vm")
    assert ubid.looks_like(ubid.to_ubid(ubid.generate(ubid.TYPE_PAGE)), ubid.TYPE_PAGE)


def test_looks_like_rejects_a_prefix_mismatch() -> None:
    assert not ubid.looks_like("vmqsknkzw5164hkfnt6z6zgjps", "pj")


@pytest.mark.parametrize("text", [
    "VMQSKNKZW5164HKFNT6Z6ZGJPS",   # uppercase
    "vmqsknkzw5164hkfnt6z6zgjpu",   # u is not in the alphabet
    "vmqsknkzw5164hkfnt6z6zgjp",    # 25 characters
    "vmqsknkzw5164hkfnt6z6zgjpss",  # 27 characters
    "vmqsknkzw5164-kfnt6z6zgjps",   # punctuation
    "my-vm",
])
def test_looks_like_rejects_other_shapes(text: str) -> None:
    assert not ubid.looks_like(text, "vm")


@pytest.mark.parametrize(("text", "expected"), VECTORS)
def test_prefix_of_returns_the_type_characters(text: str, expected: str) -> None:
    assert ubid.prefix_of(uuid.UUID(expected)) == text[:2]


# -- round trips ---------------------------------------------------------------------------

def test_generate_to_ubid_to_uuid_round_trips() -> None:
    for prefix in PREFIX_CODES:
        value = ubid.generate(prefix)
        text = ubid.to_ubid(value)
        assert len(text) == 26
        assert ubid.to_uuid(text) == value
        assert ubid.to_uuid(text.upper()) == value


def test_a_foreign_uuid_round_trips() -> None:
    foreign = uuid.uuid4()
    text = ubid.to_ubid(foreign)
    assert len(text) == 26
    assert ubid.to_uuid(text) == foreign
    assert ubid.to_ubid(str(foreign)) == text
    nil = uuid.UUID(int=0)
    assert ubid.to_uuid(ubid.to_ubid(nil)) == nil
    full = uuid.UUID(int=2**128 - 1)
    assert ubid.to_uuid(ubid.to_ubid(full)) == full


# -- type constants ------------------------------------------------------------------------

def test_type_constants_match_the_reference_table() -> None:
    assert {
        "TYPE_PROJECT": "pj", "TYPE_VM": "vm", "TYPE_VM_HOST": "vh", "TYPE_STRAND": "st",
        "TYPE_SEMAPHORE": "sm", "TYPE_PAGE": "pa", "TYPE_SSHABLE": "sh",
        "TYPE_MACHINE_IMAGE": "m1", "TYPE_MACHINE_IMAGE_VERSION": "mv",
        "TYPE_MACHINE_IMAGE_STORE": "m0", "TYPE_ETC": "et",
    }.items() <= CONSTANTS.items()


@pytest.mark.parametrize("name", sorted(CONSTANTS))
def test_every_type_constant_is_canonical(name: str) -> None:
    prefix = CONSTANTS[name]
    assert ubid.to_ubid(ubid.generate(prefix)).startswith(prefix)
    assert ubid.to_ubid(ubid.generate_from_time(prefix)).startswith(prefix)


def test_type_constants_are_unique() -> None:
    assert len(CONSTANTS) >= len(PREFIX_CODES)
    assert len(set(CONSTANTS.values())) == len(CONSTANTS)
    assert len({ubid.type_code(prefix) for prefix in CONSTANTS.values()}) == len(CONSTANTS)
