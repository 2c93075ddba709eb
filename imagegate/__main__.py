"""`python -m imagegate` works like `imagegate`."""
import sys

from imagegate.proxy.cli import main

sys.exit(main())
