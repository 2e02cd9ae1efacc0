"""``python -m natix.cli``: the ``natix`` command."""

from natix.cli import main

if __name__ == "__main__":
    main()
