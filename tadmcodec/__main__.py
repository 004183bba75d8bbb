"""`python -m tadmcodec` is the same as the `tadm` command."""

from tadmcodec.cli import entry

if __name__ == "__main__":
    entry()
