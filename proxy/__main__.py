"""`python -m proxy` works like `imagegate`."""
import sys

from proxy.cli import main

sys.exit(main())
