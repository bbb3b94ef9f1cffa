"""`python -m services.app`: the `linepulse` command from a checkout (tests, benchmarks)."""

from services.app.cli import main

if __name__ == "__main__":
    main()
