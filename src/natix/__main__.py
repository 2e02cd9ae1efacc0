"""`python -m natix` (and `torchrun ... -m natix finetune ...`): the command line."""

from natix.cli import main

if __name__ == "__main__":
    main()
