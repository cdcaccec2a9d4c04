"""What `seqrl finetune --num-processes N` (or `--num-machines`) starts: `accelerate launch`
itself, minus the report that would bury seqrl's own line.

torch's elastic agent raises `ChildFailedError` whenever a process exits non-zero, and accelerate
lets it end the launcher with a traceback and a report of every process. When the process that
failed first ended the way seqrl ends on purpose (2: a user error, its one line already printed;
75: preempted, its checkpoint written), that report says nothing the line did not, so this
launcher exits with that code instead (and the agent's log line for such an exit is left out
too). Any other failure (a crash, a killed process) keeps accelerate's report."""

from __future__ import annotations

import logging
import sys

from accelerate.commands.launch import main as accelerate_launch
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from seqrl.errors import EXIT_USER_ERROR
from seqrl.preemption import EXIT_PREEMPTED

SAID_EXITS = (EXIT_USER_ERROR, EXIT_PREEMPTED)


class _SaidExits(logging.Filter):
    """Drops the agent's "failed (exitcode: 2)" log line for exits seqrl has already explained."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f"(exitcode: {code})" in record.getMessage() for code in SAID_EXITS)


def main() -> None:
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_SaidExits())
    try:
        accelerate_launch()
    except ChildFailedError as err:
        first = err.get_first_failure()[1].exitcode
        if first in SAID_EXITS:
            sys.exit(first)
        raise


if __name__ == "__main__":
    main()
