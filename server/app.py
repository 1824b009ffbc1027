"""fedgate's ServerApp: read the run config, run the rounds (see server.federation)."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedgate import strategies
from fedgate.config import FedgateConfig
from server.federation import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    cfg = strategies.check(FedgateConfig.from_flat(context.run_config))
    run_federation(grid, cfg, run_id=context.run_id)
