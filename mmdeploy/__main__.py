"""`python -m mmdeploy ...` (also what `torchrun -m mmdeploy train ...` runs)."""
from mmdeploy.cli import main

if __name__ == "__main__":
    main()
