"""``python -m poisonclip.cli``: the ``poisonclip`` command."""

import sys

from poisonclip.cli import main

sys.exit(main())
