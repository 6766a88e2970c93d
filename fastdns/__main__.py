"""`python -m fastdns`: the same command line as the `fastdns` script."""

from fastdns.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
