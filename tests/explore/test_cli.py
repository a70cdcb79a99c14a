"""`vitkit explore` as a user runs it: a subprocess that prints its address, serves, and stops
cleanly on Ctrl-C or SIGTERM."""

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import vitkit

from .conftest import Client, make_model, write_png

SRC = str(Path(vitkit.__file__).resolve().parents[1])
ADDRESS = re.compile(r"http://127\.0\.0\.1:(\d+)/")


class Running:
    """`vitkit explore ARGS` in a subprocess; `address` once it has printed it."""

    def __init__(self, *args):
        env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "vitkit", "explore", *map(str, args)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def address(self) -> str:
        printed = []
        while True:
            line = self.lines.get(timeout=120)
            if line is None:
                raise AssertionError(f"exited before printing its address: {printed} {self.process.stderr.read()}")
            printed.append(line)
            if ADDRESS.fullmatch(line.rstrip("\n")):  # on a line of its own
                return line.strip()

    def stop(self, signum) -> tuple[int, str]:
        self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout=60)
        finally:
            self.process.kill()
        return code, self.process.stderr.read()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("explore") / "grey.safetensors"
    vitkit.save(make_model("token", in_chans=1, class_names=tuple("abcde")), path)
    return path


@pytest.mark.parametrize("signum, codes", [(signal.SIGINT, (0, 130)), (signal.SIGTERM, (0,))])
def test_serves_on_a_free_port_and_stops_cleanly(checkpoint, tmp_path, signum, codes):
    run = Running(checkpoint, "--port", "0", "--data", "digits")
    try:
        address = run.address()
        client = Client(address)
        summary = client.get("/api/model").json()
        assert summary["name"] == "grey.safetensors" and summary["samples"]["count"] > 0
        sample = client.get("/api/sample/0").json()
        assert sample["sample"]["label"] in [str(d) for d in range(10)]  # the digits' class names
        image = tmp_path / "photo.png"
        answer = client.predict(write_png(image)).json()
        assert [p["label"] for p in answer["predictions"]] and len(answer["rollout"]) == 4
        assert client.get("/").status == 200
    finally:
        code, stderr = run.stop(signum)
    assert code in codes, stderr
    assert "Traceback" not in stderr


def test_a_port_in_use_is_one_clean_line(checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "vitkit", "explore", str(checkpoint), "--port", str(port)],
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0] and "--port 0" in lines[0]


def test_a_model_without_attention_is_one_clean_line(tmp_path):
    path = tmp_path / "resnet.safetensors"
    vitkit.save(vitkit.create_model("custom", image_size=32, num_classes=3, width=16, depth=0, num_heads=2, mlp_dim=32,
                                    stem="resnet", patch_size=1, resnet_layers=(1,), pool="gap"), path)
    result = subprocess.run([sys.executable, "-m", "vitkit", "explore", str(path), "--port", "0"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no attention layers" in result.stderr
