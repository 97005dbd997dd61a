"""``--help`` of every command: each option has a text (with its default), the usage line names the command,
``dretriever train --help`` lists the methods and the shared options, ``dretriever --version``."""

import argparse
import importlib.metadata

import pytest

from dretriever import __version__
from dretriever.cli import COMMANDS, main
from dretriever.train.registry import METHODS


def run_help(argv, monkeypatch, capsys):
    """``(parser, printed help)`` of ``dretriever <argv> --help``, which must exit 0."""
    parsers = []
    print_help = argparse.ArgumentParser.print_help

    def record(self, file=None):
        parsers.append(self)
        return print_help(self, file)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", record)
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert len(parsers) == 1
    return parsers[0], capsys.readouterr().out


def without_text(parser) -> list[str]:
    return [a.option_strings[-1] for a in parser._actions
            if a.option_strings and a.help is not argparse.SUPPRESS and not (a.help or "").strip()]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_of_every_command_has_a_text_and_the_usage_names_the_command(command, monkeypatch, capsys):
    parser, out = run_help(command.split(), monkeypatch, capsys)
    assert without_text(parser) == []
    assert out.startswith(f"usage: dretriever {command} [")
    assert "'option_strings'" not in out  # a % in a text was taken as a format
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"
               and not isinstance(a, argparse._StoreFalseAction)]  # --no_X: "the same as --X false"
    helps = {a.dest: parser._get_formatter()._get_help_string(a) for a in options}
    assert [d for d, h in helps.items() if "default:" not in h and "(default " not in h and "required" not in h] \
        == []


@pytest.mark.parametrize("method", list(METHODS))
def test_every_option_of_every_training_method_has_a_text(method, monkeypatch, capsys):
    parser, out = run_help(["train", "--method", method], monkeypatch, capsys)
    assert without_text(parser) == []
    assert out.startswith("usage: dretriever train [RECIPE.yaml] [--method METHOD] [--field value ...]")


def test_train_help_without_a_method_lists_the_methods_and_the_shared_options(monkeypatch, capsys):
    parser, out = run_help(["train"], monkeypatch, capsys)
    for method in METHODS:
        assert f"\n  {method} " in out
    flat = " ".join(out.split())
    assert "--lr LR peak learning rate of AdamW, after warm-up (default: 2e-05)" in flat
    assert "--output_dir OUTPUT_DIR, --output-dir OUTPUT_DIR folder for checkpoints/, final/, best/, log.jsonl " \
           "(required)" in flat
    assert "--no_progress, --no-progress the same as --progress false" in flat
    assert without_text(parser) == []


def test_defaults_are_shown_once_and_none_reads_none(monkeypatch, capsys):
    _, out = run_help(["serve"], monkeypatch, capsys)
    flat = " ".join(out.split())
    assert "--port PORT TCP port to listen on (default: 8000)" in flat
    assert "--model MODEL query encoder (default: the manifest's) --precision" in flat  # stated once, by the text
    assert "(default: None)" not in out
    _, out = run_help(["datastore", "build"], monkeypatch, capsys)
    assert "passages go to shard crc32(id) % shards) (default: 4)" in " ".join(out.split())


def test_version_and_the_command_list(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"dretriever {__version__}\n"
    assert __version__ == importlib.metadata.version("dretriever")
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dretriever <command> [options]") and "\n  datastore build   raw text" in out
    assert main(["nonsense"]) == 2
    assert "usage: dretriever <command>" in capsys.readouterr().err
