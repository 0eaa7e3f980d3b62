"""`python -m lwm ...` is the `lwm` command (launchers too: `torchrun -m lwm train CONFIG`)."""

import sys

from lwm.cli import main

sys.exit(main())
