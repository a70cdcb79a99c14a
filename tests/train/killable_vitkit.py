"""`python -m vitkit`, with one interruption armed at a deterministic point (test-only: used by
test_interruptions.py, never by vitkit itself). Arguments are vitkit's; the environment says
what to do:

  KILLABLE_AFTER_UPDATE=K  KILLABLE_SIGNAL=SIGKILL|SIGTERM  [KILLABLE_TO_GROUP=1]
      send the signal to this process right after its optimiser update number K (counted
      over the whole run, resumes included), before any checkpoint of that update; with
      KILLABLE_TO_GROUP to its whole process group (its DataLoader workers too, as a
      scheduler or Ctrl-C does; start it in a session of its own);
  KILLABLE_BEFORE_RENAME=NAME:K
      SIGKILL this process in the middle of its K-th write of a file called NAME: the
      temporary file is complete, the rename into place has not happened;
  KILLABLE_FILE_SIZE_LIMIT=BYTES
      no file may grow beyond BYTES (RLIMIT_FSIZE, SIGXFSZ ignored): writes fail with EFBIG,
      as on a full disk;
  KILLABLE_NO_PLOTS=1
      skip the summary's plots, which take most of a tiny run's time.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def arm() -> None:
    from vitkit.train.loop import Trainer

    if "KILLABLE_AFTER_UPDATE" in os.environ:
        k = int(os.environ["KILLABLE_AFTER_UPDATE"])
        signum = signal.Signals[os.environ["KILLABLE_SIGNAL"]]
        update = Trainer._update

        def update_then_signal(self, *args):
            applied = update(self, *args)
            if self.progress["update"] == k:
                if os.environ.get("KILLABLE_TO_GROUP"):
                    os.killpg(os.getpgid(0), signum)
                else:
                    os.kill(os.getpid(), signum)
            return applied

        Trainer._update = update_then_signal
    if "KILLABLE_BEFORE_RENAME" in os.environ:
        name, k = os.environ["KILLABLE_BEFORE_RENAME"].rsplit(":", 1)
        replace, seen = os.replace, []

        def replace_or_die(src, dst, *args, **kwargs):
            if Path(dst).name == name:
                seen.append(dst)
                if len(seen) == int(k):
                    os.kill(os.getpid(), signal.SIGKILL)
            return replace(src, dst, *args, **kwargs)

        os.replace = replace_or_die
    if "KILLABLE_FILE_SIZE_LIMIT" in os.environ:
        import resource

        limit = int(os.environ["KILLABLE_FILE_SIZE_LIMIT"])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    if os.environ.get("KILLABLE_NO_PLOTS"):
        import vitkit.train.plots

        vitkit.train.plots.plot_curves = lambda *args: None
        vitkit.train.plots.plot_confusion = lambda *args, **kwargs: None


if __name__ == "__main__":
    arm()
    from vitkit.cli.main import main

    sys.exit(main(sys.argv[1:]))
