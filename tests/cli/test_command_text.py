"""A command's help and description are its handler's docstring: first paragraph, then the rest."""

import re

from medmoe.cli.arguments import command_text
from medmoe.cli.main import build_parser
from medmoe.cli.reference import command_parsers


def _handler(args):
    """one line of help,
    wrapped in the source

    The description: its lines
    joined unless kept.
    """


def test_the_first_paragraph_is_the_help_and_the_rest_the_description():
    assert command_text(_handler, keep_lines=False) == ("one line of help, wrapped in the source",
                                                        "The description: its lines joined unless kept.")
    assert command_text(_handler, keep_lines=True)[1] == "The description: its lines\njoined unless kept."
    assert command_text(lambda args: 0, keep_lines=False) == (None, None)


def test_every_command_has_a_help_line_in_its_group_listing():
    """``medmoe GROUP --help`` lists each command with its one-line help (the docstring's first paragraph)."""
    groups = [p for p in command_parsers(build_parser()) if p.commands is not None]
    names = [(group, name) for group in groups for name in group.commands.choices]
    assert len(names) > 25
    for group, name in names:
        listing = group.format_help()
        assert re.search(rf"^\s+{re.escape(name)}[ \t]+\S", listing, flags=re.M) or \
            re.search(rf"^\s+{re.escape(name)}\n\s{{10,}}\S", listing, flags=re.M), (group.prog, name)
