"""The option machinery of ``amps-eval``: defaults read from the settings dataclasses, shown in ``--help``.

* `default_of` reads a dataclass field's default, so that an option's default is the settings'
  own, never a second copy;
* `HelpFormatter` ends every option's help with ``(default: X)``; an option whose default is None
  must say in its own help what happens then (``default: ...``; tests/test_cli_options.py checks
  every subcommand);
* `Parser` accepts lmms-eval's spelling of every option (``--batch_size`` for ``--batch-size``,
  ``--model_args`` for ``--model-args``; shown once in ``--help``), and answers a mistyped
  subcommand, choice or option with the closest valid one ("did you mean").
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from amps_eval.vocabulary import closest, did_you_mean, split_numbers

__all__ = ["HelpFormatter", "Parser", "default_of", "numbers", "optional_float", "show_default", "version"]


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls`` (its factory called for a default_factory)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise ValueError(f"{cls.__name__}.{name} has no default")
    raise ValueError(f"{cls.__name__} has no field {name!r}")


def show_default(value: Any) -> str:
    """How ``--help`` writes a default: lists comma-separated, numbers with ``:g``."""
    if isinstance(value, (tuple, list)):
        return ",".join(show_default(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def numbers(what: str, example: str = "0.05,0.1,0.2"):
    """An argparse ``type``: a list of finite numbers separated by ``,`` or ``/``."""

    def parse(text: str) -> tuple[float, ...]:
        try:
            values = split_numbers(text, what, example)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        if not values:
            raise argparse.ArgumentTypeError(f"{what} needs at least one number, e.g. {example}; got {text!r}")
        return values

    parse.__name__ = "numbers"  # argparse's "invalid numbers value" message
    return parse


def optional_float(what: str):
    """An argparse ``type``: a finite number > 0, or ``none``."""

    def parse(text: str) -> float | None:
        if text.strip().lower() == "none":
            return None
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (value > 0 and value != float("inf")):
            raise argparse.ArgumentTypeError(f"{what} takes a finite number > 0 or 'none', got {text!r}")
        return value

    parse.__name__ = "optional_float"
    return parse


def version() -> str:
    """The installed amps-eval version (the package metadata, as pip shows it)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("amps-eval")
    except PackageNotFoundError:
        return "unknown (not installed: run `pip install -e .`)"


def _is_flag(action: argparse.Action) -> bool:
    return action.nargs == 0  # store_true / store_false / help / version


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default at the end of its help; lmms-eval spellings not listed twice."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and not _is_flag(action) and not action.required
                and action.default not in (None, argparse.SUPPRESS) and "default:" not in text):
            text = f"{text} (default: {show_default(action.default).replace('%', '%%')})".strip()
        return text

    def _format_action_invocation(self, action: argparse.Action) -> str:
        aliases = getattr(action, "lmms_eval_aliases", ())
        if not aliases:
            return super()._format_action_invocation(action)
        shown = argparse.Action([s for s in action.option_strings if s not in aliases], action.dest,
                                nargs=action.nargs, metavar=action.metavar, choices=action.choices)
        return super()._format_action_invocation(shown)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser with lmms-eval's underscore spellings and "did you mean" errors."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        aliases = tuple(alias for alias in ("--" + n[2:].replace("-", "_") for n in names if n.startswith("--"))
                        if alias not in names)
        action = super().add_argument(*names, *aliases, **kwargs)
        action.lmms_eval_aliases = aliases
        return action

    def _get_option_tuples(self, option_string):
        # an abbreviation matching both spellings of one option is not ambiguous
        seen, unique = set(), []
        for match in super()._get_option_tuples(option_string):
            if id(match[0]) not in seen:
                seen.add(id(match[0]))
                unique.append(match)
        return unique

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            choices = [str(c) for c in action.choices]
            raise argparse.ArgumentError(action, f"invalid choice: {value!r}{did_you_mean(value, choices)} "
                                                 f"(choose from {', '.join(map(repr, choices))})")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self._chosen_subparser(parsed)
            options = [s for s in parser._option_string_actions if s.startswith("--")]
            guesses = [closest(extra.split("=", 1)[0], options) for extra in extras if extra.startswith("--")]
            guesses = [g for g in guesses if g]
            hint = f"; did you mean {' '.join(guesses)}?" if guesses else ""
            parser.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return parsed

    def _chosen_subparser(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = getattr(parsed, action.dest or "", None)
                if chosen in action.choices:
                    return action.choices[chosen]
        return self
