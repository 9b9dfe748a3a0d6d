"""The fine-tuning worker's training runs, forked from a forkserver that has imported torch, transformers, peft,
TRL and datasets.

Each job trains in a child process of its own (`loradock train`), so that cancelling it is a signal away and a
crash in training cannot take the worker down. Started as a new interpreter, each child imported torch,
transformers, peft, TRL and datasets again: 12 of the 19 s that a 5-step job on a tiny model took on 2 vCPUs of AMD
EPYC Milan. The worker starts multiprocessing's forkserver once, which does those imports while the worker waits for
jobs, and forks each job's child from it: the same job then took 5 s. The forkserver has only imported modules,
with no threads started, so forking from it is safe.

The child runs `loradock train` as the console script does, with its output in the job's log, and is named after
the command line it runs (setproctitle), as the spawned child was. It dies with the worker: its parent is the
forkserver, so Linux's parent-death signal would wait for the forkserver instead: the child watches the worker's
end of the pipe multiprocessing gives it and kills itself when the worker is gone, even by SIGKILL
(`adapters.processes.stop_with_the_starting_process`).
"""

from __future__ import annotations

import multiprocessing
import sys
from multiprocessing.process import BaseProcess
from pathlib import Path

from adapters import processes

PRELOAD = [
    "adapters.cli",
    "training.cli",
    "training.finetune",
    "datasets",
    "peft",
    "trl.trainer.sft_trainer",
    "trl.trainer.dpo_trainer",
    "transformers.models.llama.modeling_llama",
]
"""What `loradock train` imports before its first step (Llama, the family of the demo and test models; another
family is imported in the child)."""


def start_forkserver() -> None:
    """Start the forkserver; it imports `PRELOAD` while the caller goes on."""
    processes.start_forkserver(PRELOAD)


def start_training(arguments: list[str], log: Path) -> BaseProcess:
    """`loradock ARGUMENTS` in a child forked from the forkserver (started now if it was not), its output appended to
    `log`."""
    start_forkserver()
    process = multiprocessing.get_context("forkserver").Process(
        target=_run, args=(arguments, str(log)), name="loradock train"
    )
    process.start()
    return process


def _run(arguments: list[str], log: str) -> None:
    processes.stop_with_the_starting_process()
    processes.write_output_to(Path(log))  # as `loradock train` wrote to the log when it was spawned
    import setproctitle

    from adapters.cli import main

    setproctitle.setproctitle(" ".join(["loradock", *arguments]))
    sys.argv = ["loradock", *arguments]
    main()
