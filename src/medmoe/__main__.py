"""`python -m medmoe ...` (and `torchrun -m medmoe ...`) run the command line."""

import sys

from medmoe.cli.main import main

sys.exit(main())
