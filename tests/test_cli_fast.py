"""The command line answers ``--help`` and ``poisonclip list ...`` (every choice)
without loading torch: the parsers import light modules only, and each command imports the library
when it runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "open_clip", "sklearn", "matplotlib", "submitit")


def heavy_imports_after(code: str) -> list[str]:
    """The heavy libraries loaded by running ``code`` in a fresh interpreter after importing the CLI."""
    script = (
        "import contextlib, io, sys\n"
        "from poisonclip.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n    {code}\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_help_of_every_command_loads_no_heavy_library():
    from poisonclip.cli import build_parser
    from tests.test_cli_bad_inputs import subcommands

    helps = [[], *(list(path) for path in subcommands(build_parser()))]
    code = f"for argv in {helps!r}:\n        try: main([*argv, '--help'])\n        except SystemExit: pass"
    assert heavy_imports_after(code) == []


@pytest.mark.parametrize("what", ["presets", "models", "attacks", "triggers", "detectors", "defenses"])
def test_listing_loads_no_heavy_library(what):
    assert heavy_imports_after(f"assert main(['list', {what!r}]) == 0") == []


@pytest.mark.parametrize("command", [["poison", "backdoor"], ["evaluate"], ["demo"]])
def test_backdoor_commands_offer_every_trigger_and_its_parameters(command, capsys):
    from poisonclip.attacks.triggers import get_trigger, list_triggers
    from poisonclip.attacks.triggers.base import parameters
    from poisonclip.cli import main

    with pytest.raises(SystemExit):
        main([*command, "--help"])
    shown = capsys.readouterr().out.split()
    names = {f.name for trigger in list_triggers() for f in parameters(get_trigger(trigger))}
    assert {"--trigger", *(f"--{name.replace('_', '-')}" for name in names)} <= set(shown)
    assert ("--trigger-from" in shown) == (command == ["evaluate"])


def test_a_reader_that_leaves_early_gets_no_traceback():
    # As `poisonclip list triggers | head -1`: the pipe is closed before the command writes.
    command = [
        sys.executable,
        "-c",
        "import sys; from poisonclip.cli import main; sys.exit(main(sys.argv[1:]))",
    ]
    done = subprocess.Popen([*command, "list", "triggers"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done.stdout.close()
    assert done.stderr.read() == b""
    assert done.wait() == 1
