"""The yes/no spelling shared by environment variables and URL options."""

from __future__ import annotations

import pytest

from wsgi_channels.layers.base import ConfigurationError
from wsgi_channels.process import env_flag, parse_flag


@pytest.mark.parametrize("word", ["1", "true", "T", "yes", "Y", "on", " On "])
def test_words_for_yes(word: str) -> None:
    assert parse_flag(word) is True


@pytest.mark.parametrize("word", ["0", "false", "F", "no", "N", "off"])
def test_words_for_no(word: str) -> None:
    assert parse_flag(word) is False


@pytest.mark.parametrize("word", ["", "2", "maybe", "enabled"])
def test_other_words_are_refused(word: str) -> None:
    with pytest.raises(ValueError, match="expected on"):
        parse_flag(word)


def test_an_unset_or_empty_variable_gives_the_default() -> None:
    assert env_flag("X", default=True, environ={}) is True
    assert env_flag("X", default=False, environ={"X": " "}) is False


def test_a_variable_with_another_word_names_itself() -> None:
    assert env_flag("X", default=True, environ={"X": "OFF"}) is False
    with pytest.raises(ConfigurationError, match="X='sometimes' is neither on"):
        env_flag("X", default=True, environ={"X": "Sometimes"})
