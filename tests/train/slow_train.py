"""``python -m tests.train.slow_train DELAY ARGS...``: the ``slidergan ARGS`` command with a sleep
of DELAY seconds after every training step, so the kill -9 resume test can kill a run between
two checkpoints. The slowdown lives here, not in the library."""
import sys
import time

from train.trainer import Trainer
from workflows.cli import main as cli


def main() -> int:
    delay = float(sys.argv[1])
    step = Trainer.train_step

    def slow_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        time.sleep(delay)
        return out

    Trainer.train_step = slow_step
    return cli(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
