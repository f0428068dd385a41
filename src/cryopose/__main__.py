"""``python -m cryopose``: the command line (also ``torchrun -m cryopose train ...``)."""

from cryopose.cli.main import main

if __name__ == "__main__":
    main()
