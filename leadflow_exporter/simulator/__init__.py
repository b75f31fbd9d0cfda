"""A realistic fake DialogTech LeadFlow History Report API, with ground truth.

Used by ``leadflow-exporter demo`` / ``simulate``, the end-to-end tests and the benchmarks. The
traffic model works on its own too (no web server), for backtests. See docs/simulator.md.
"""

from leadflow_exporter.simulator.app import (
    DEFAULT_CREDENTIALS,
    HISTORY_PATH,
    MAX_PAGE_SIZE,
    STATE_KEY,
    Credentials,
    RunningSimulator,
    SimulatorState,
    create_app,
    run_simulator,
    start_simulator,
)
from leadflow_exporter.simulator.call import LEAD_STATUSES, STATUS_KEYS, Call
from leadflow_exporter.simulator.model import MAX_CALL_SECONDS, TrafficModel
from leadflow_exporter.simulator.render import render
from leadflow_exporter.simulator.scenarios import SCENARIOS, Scenario, Schedule, apply_scenario
from leadflow_exporter.simulator.truth import compute_truth, totals

__all__ = [
    "DEFAULT_CREDENTIALS",
    "HISTORY_PATH",
    "LEAD_STATUSES",
    "MAX_CALL_SECONDS",
    "MAX_PAGE_SIZE",
    "SCENARIOS",
    "STATE_KEY",
    "STATUS_KEYS",
    "Call",
    "Credentials",
    "RunningSimulator",
    "Scenario",
    "Schedule",
    "SimulatorState",
    "TrafficModel",
    "apply_scenario",
    "compute_truth",
    "create_app",
    "render",
    "run_simulator",
    "start_simulator",
    "totals",
]
