"""The `linepulse` command as tests run it: this interpreter, the checkout's composition
root (services/app), so a test needs neither the console script nor an installed package."""

import sys

LINEPULSE = (sys.executable, "-m", "services.app")
