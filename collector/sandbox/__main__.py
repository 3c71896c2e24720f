"""`python -m collector.sandbox`: the sandbox API alone (prints its base URL)."""

from collector.sandbox.server import main

main()
