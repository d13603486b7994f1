"""Command templates: every argument quoted as one word; templates and arguments must fit."""

from __future__ import annotations

import re
import shlex

import pytest

from lib.ssh import TemplateError, render


def test_each_argument_is_one_quoted_word() -> None:
    command = render("echo :a :b", a="two words", b="$(rm -rf /)")
    assert shlex.split(command) == ["echo", "two words", "$(rm -rf /)"]


def test_shelljoin_takes_a_list_of_words() -> None:
    assert shlex.split(render("run :shelljoin_argv", argv=["a b", "`c`", "d'e"])) == [
        "run", "a b", "`c`", "d'e"]


@pytest.mark.parametrize(("template", "arguments", "message"), [
    ("echo :a", {}, "no value for :a"),
    ("echo :a", {"a": 1, "b": 2}, "arguments ['b'] are not in"),
    ("echo ':a'", {"a": 1}, "templates carry no quotes"),
    ("run :shelljoin_argv", {"argv": "not a list"}, "takes a list of words"),
])
def test_templates_and_arguments_must_fit(template: str, arguments: dict[str, object],
                                          message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)):
        render(template, **arguments)
