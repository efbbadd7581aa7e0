"""`python -m sftkd_cli` runs the same CLI as the `sftkd` console script (torchrun uses this)."""

from sftkd_cli.cli.app import main

if __name__ == "__main__":
    main()
