"""Simulator: replays the openb GPU traces through the scheduling framework (the extender's own code).

- `simulate(nodes_csv, pods_csv, policy, seeds, ratio)`: the paper's workload-inflation experiment
  (engine), returning a SimResult whose `to_json()` is the `hami simulate` output;
- `replay(nodes_csv, pods_csv, policy)`: arrivals and departures in time, with a retry queue (replay);
- `report.write_inflation / write_replay(dir, result)`: CSV + an HTML index of every run in a directory;
- `cli.simulate`: the `hami simulate` command.
"""

from hami.sim.engine import SimResult, run_seed, simulate
from hami.sim.policies import POLICIES, Policy
from hami.sim.replay import ReplayResult, replay
from hami.sim.trace import TaskShape, TraceNode, TraceTask, load_nodes, load_pods

__all__ = ["POLICIES", "Policy", "ReplayResult", "SimResult", "TaskShape", "TraceNode", "TraceTask", "load_nodes",
           "load_pods", "replay", "run_seed", "simulate"]
