"""torchrun worker of test_ddp.py: two "nodes" whose run directories are on their own local disks.

Each node works in ROOT/node{GROUP_RANK} and passes the relative ``--out run``, as a user whose ``--out`` is not on
a shared filesystem would. A 2-step run writes its checkpoints on node 0 only; resuming it must then fail on every
rank with one error naming the rank that cannot see the checkpoint. Writes ROOT/rank{R}.json.
"""

import json
import os
import sys
import time
from pathlib import Path

from testkit.train import ToyTask, train_args

from medmoe.distributed import rank
from medmoe.errors import InvalidInputError
from medmoe.train import run_training

root = Path(sys.argv[1])
node = root / f"node{os.environ['GROUP_RANK']}"
node.mkdir(exist_ok=True)
os.chdir(node)
run_training(ToyTask(), train_args("run", "--steps", "2"))
if rank() == 0:
    time.sleep(1.0)
try:
    run_training(ToyTask(), train_args("run", "--steps", "4", "--resume", "latest"))
    outcome = {"error": None}
except InvalidInputError as err:
    outcome = {"error": str(err)}
(root / f"rank{rank()}.json").write_text(json.dumps(outcome))
