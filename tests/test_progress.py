"""Progress: a bar on any terminal (one that reports no width too), plain lines elsewhere."""

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import vitkit
from vitkit.progress import Progress, terminal_shape, track

SRC = str(Path(vitkit.__file__).resolve().parents[1])


def run_on_a_terminal(code: str, columns: int) -> str:
    """What `code` writes to stderr when stderr is a terminal `columns` wide (0: none reported)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24 if columns else 0, columns, 0, 0))
    process = subprocess.Popen([sys.executable, "-c", code], stderr=terminal, stdout=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": SRC})
    os.close(terminal)
    written = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(controller, 1 << 16)
        except OSError:  # the terminal's other end closed: the process is done
            break
        if not chunk:
            break
        written += chunk
    os.close(controller)
    assert process.wait(timeout=60) == 0
    return written.decode("utf-8", "replace")


BAR = "from vitkit.progress import track\nfor _ in track(range(7), 'checking images'): pass\n"


def drawn_bars(written: str) -> list[str]:
    """The bar's drawings (tqdm redraws in place after a carriage return)."""
    return [line for line in written.split("\r") if line.startswith("checking images:")]


def test_a_terminal_that_reports_no_width_still_gets_the_bar():
    # Plain tqdm draws nothing at all there: its width is taken as -1 and the bar trimmed away.
    bars = drawn_bars(run_on_a_terminal(BAR, columns=0))
    assert bars and "/7 [" in bars[0] and "img/s]" in bars[0]
    assert all(len(bar) == 79 for bar in bars)  # the 80-column fallback


def test_a_terminal_of_known_width_gets_a_bar_of_that_width():
    bars = drawn_bars(run_on_a_terminal(BAR, columns=50))
    assert bars and all(len(bar) == 49 for bar in bars)


def test_terminal_shape_falls_back_when_there_is_no_terminal():
    assert terminal_shape(io.StringIO()) == (79, 23)


def test_off_a_terminal_one_line_per_phase_and_per_milestone():
    stream = io.StringIO()
    with Progress(10, "train", "img", stream=stream) as bar:
        for epoch in (1, 2):
            bar.update(5)
            bar.milestone(f"epoch {epoch}/2  loss 0.5")
        bar.set_postfix(val_acc="0.9")
        bar.write("warning: something")
    lines = stream.getvalue().splitlines()
    assert lines[:3] == ["epoch 1/2  loss 0.5", "epoch 2/2  loss 0.5", "warning: something"]
    assert len(lines) == 4 and re.fullmatch(r"train: 10 img in \d+\.\d s \([\d,.]+ img/s\); val_acc 0\.9", lines[3])


def test_an_empty_phase_prints_nothing_and_quiet_prints_nothing_at_all():
    stream = io.StringIO()
    with Progress(0, "reading images", stream=stream):
        pass
    with Progress(3, "reading images", stream=stream, quiet=True) as bar:
        bar.update(3)
        bar.milestone("epoch 1/1")
        bar.write("a line")
    assert stream.getvalue() == ""


def test_a_resumed_count_reports_the_work_of_this_run():
    stream = io.StringIO()
    with Progress(100, "train", "img", initial=60, stream=stream) as bar:
        bar.update(40)
    assert re.fullmatch(r"train: 100 img in \d+\.\d s \([\d,.]+ img/s\)\n", stream.getvalue())


def test_long_phases_off_a_terminal_say_how_far_they_are(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("vitkit.progress.time.perf_counter", lambda: now[0])
    stream = io.StringIO()
    with Progress(30, "features", "img", stream=stream) as bar:
        for seconds in (61.0, 62.0, 125.0):  # a line at 61 s, none a second later, one at 125 s
            now[0] = seconds
            bar.update(10)
        now[0] = 130.0
    assert stream.getvalue().splitlines() == [
        "features: 10/30 img in 61.0 s (0.16 img/s)",
        "features: 30/30 img in 125.0 s (0.24 img/s)",
        "features: 30 img in 130.0 s (0.23 img/s)"]


def test_track_yields_every_item_and_counts_them(capsys):
    assert list(track(["a", "b"], "files", "file")) == ["a", "b"]
    assert re.fullmatch(r"files: 2 file in \d+\.\d s \([\d,.]+ file/s\)\n", capsys.readouterr().err)


def test_silenced_quiets_every_progress_inside_it_and_only_there():
    from vitkit.progress import silenced

    stream = io.StringIO()
    with silenced():
        with Progress(2, "inside", stream=stream) as bar:
            bar.update(2)
            bar.milestone("epoch 1/1")
    with Progress(2, "after", stream=stream) as bar:
        bar.update(2)
    assert stream.getvalue().startswith("after: 2 img in ") and "inside" not in stream.getvalue()
