"""``python -m sshfleet`` is the ``sshfleet`` command."""

import sys

from sshfleet._cli import main

sys.exit(main())
