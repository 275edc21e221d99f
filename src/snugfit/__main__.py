import sys

from snugfit.app.cli import main

sys.exit(main())
