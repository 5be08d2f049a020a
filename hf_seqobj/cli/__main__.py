"""`python -m hf_seqobj.cli ...`: the `hf-seqobj` command (as `accelerate launch` starts it in each process)."""

import sys

from hf_seqobj.cli.commands import main


if __name__ == "__main__":
    sys.exit(main())
