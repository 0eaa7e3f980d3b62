"""`python -m lwm ...` is the `lwm` command."""

import sys

from lwm.cli import main

sys.exit(main())
