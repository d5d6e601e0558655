"""``run`` and ``run_quiet``: the command line called in this process, as the user-data tests call it."""

import contextlib
import io

from poisonclip.cli import main


def run(args) -> int:
    return main([str(a) for a in args])


def run_quiet(args) -> tuple[int, str]:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = run(args)
    return code, out.getvalue()
