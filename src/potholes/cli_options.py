"""What the `potholes` commands share: the parameter type of values MLflow passes as words, the
preset choices, and how a user's mistake ends a command."""

from __future__ import annotations

import sys

import click

from potholes.errors import UserError

DATA_DIR_HELP = "dataset folder (competition layout: train/images, train/mask, test/images, sample_submission.csv)"


TYPE_NAMES = {int: "integer", float: "float", str: "text"}


class Maybe(click.ParamType):
    """A value, or "not given". `mlflow run` logs every MLproject parameter, so an unset one
    is passed as a word that says what happens instead (``preset``, ``latest``, ``auto``...),
    never as an empty string; that word (or nothing) means "not given" here."""

    def __init__(self, inner: type, unset: str, choices: tuple[str, ...] = (), words: tuple[str, ...] = ()):
        self.inner, self.unset, self.choices, self.words = inner, unset, choices, words  # words: passed as they are
        self.name = TYPE_NAMES[inner]

    def get_metavar(self, param, ctx=None) -> str:
        return f"[{'|'.join((*self.choices, self.unset))}]" if self.choices else self.name.upper()

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.strip() in ("", self.unset)):
            return None
        if value in self.words:
            return value
        if self.choices and value not in self.choices:
            self.fail(f"expected one of {[*self.choices, self.unset]}, got '{value}'", param, ctx)
        try:
            return self.inner(value)
        except ValueError:
            alternatives = " or ".join(f"'{word}'" for word in (*self.words, self.unset))
            self.fail(f"expected {'an' if self.name == 'integer' else 'a'} {self.name} or {alternatives}, "
                      f"got '{value}'", param, ctx)


PRESET_INT, PRESET_FLOAT, PRESET_STR = Maybe(int, "preset"), Maybe(float, "preset"), Maybe(str, "preset")
PRESETS = click.Choice(["auto", "full", "cpu", "demo", "smoke"])
PRESET_HELP = ("auto = full with CUDA, else cpu; full = the seed's GPU recipe; demo = about a minute a model, to "
               "see every stage on the synthetic set (not a recipe for photos); smoke = seconds, for tests")


def fail(exc: UserError) -> None:
    """A mistake the user can fix (a bad parameter, bad data, a missing prerequisite): one message
    and exit status 2. Every other exception is a bug and keeps its traceback (exit status 1)."""
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)
