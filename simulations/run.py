"""Run a fedgate federation in Flower's simulation runtime: ``python -m simulations.run``
is ``fedgate simulate`` (fedgate/launch/simulation.py)."""

import sys

from fedgate.launch.simulation import main

if __name__ == "__main__":
    sys.exit(main())
