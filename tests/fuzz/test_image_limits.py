"""Decompression bombs: image files whose few kilobytes decode to more pixels than the limit
are refused by default, naming the limit and how to raise it, and read once the user raises it:
by argument, by $VITKIT_MAX_IMAGE_PIXELS, or by --max-image-pixels on every command that reads
images (0 = no limit)."""

from __future__ import annotations

import functools
import zlib

import pytest
from PIL import Image

import vitkit
from vitkit.cli.main import main
from vitkit.data import load_data, read_image_files, read_images
from vitkit.errors import ConfigError, DataError

from .harness import memory_cap
from .test_images_fuzz import png_declaring
from .valid_files import image_file, tiny_model

DEFAULT = 89_478_485


@functools.cache
def bomb(side: int) -> bytes:
    """A 1-bit black PNG of side x side pixels: rows of zeros, which deflate to almost nothing."""
    rows = (b"\0" + bytes((side + 7) // 8)) * side
    return png_declaring(side, side, zlib.compress(rows, 9), bit_depth=1, colour=0)


def test_a_small_png_that_decodes_to_90_million_pixels_is_refused_by_default(tmp_path):
    (tmp_path / "bomb.png").write_bytes(bomb(9500))
    assert (tmp_path / "bomb.png").stat().st_size < 20_000
    with pytest.raises(DataError) as refused:
        read_images([tmp_path / "bomb.png"], 8, 1)
    message = str(refused.value)
    assert f"bomb.png (over the limit of {DEFAULT} pixels; raise max_image_pixels" in message
    assert "--max-image-pixels N or VITKIT_MAX_IMAGE_PIXELS=N, 0 for none" in message
    assert Image.MAX_IMAGE_PIXELS == DEFAULT


def test_the_same_bomb_is_read_once_the_limit_is_raised(tmp_path, monkeypatch):
    (tmp_path / "bomb.png").write_bytes(bomb(9500))
    monkeypatch.setenv("VITKIT_MAX_IMAGE_PIXELS", "100000000")
    with memory_cap():
        images = read_images([tmp_path / "bomb.png"], 8, 1)
    assert images.shape == (1, 1, 8, 8) and int(images.max()) == 0


@pytest.mark.parametrize("limit, env, readable", [
    (1_000_000, None, False), (2_000_000, None, True), (0, None, True),
    (None, "1000000", False), (None, "0", True), (0, "1000", True), (1_000_000, "0", False),
])
def test_the_argument_then_the_environment_then_the_default_decide(tmp_path, monkeypatch, limit, env, readable):
    (tmp_path / "bomb.png").write_bytes(bomb(1100))  # 1,210,000 pixels
    if env is not None:
        monkeypatch.setenv("VITKIT_MAX_IMAGE_PIXELS", env)
    if readable:
        assert read_images([tmp_path / "bomb.png"], 8, 1, max_image_pixels=limit).shape == (1, 1, 8, 8)
        assert read_image_files([tmp_path / "bomb.png"], 1, max_image_pixels=limit)[0].shape == (1, 1100, 1100)
    else:
        with pytest.raises(DataError, match="over the limit of 1000000 pixels"):
            read_images([tmp_path / "bomb.png"], 8, 1, max_image_pixels=limit)


def test_limits_that_are_not_a_number_of_pixels(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(image_file("PNG"))
    with pytest.raises(ConfigError, match="max_image_pixels must be a number of pixels, 0 for no limit"):
        read_images([tmp_path / "a.png"], 8, 3, max_image_pixels=-1)
    monkeypatch.setenv("VITKIT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ConfigError, match="VITKIT_MAX_IMAGE_PIXELS='lots' must be a number of pixels"):
        read_images([tmp_path / "a.png"], 8, 3)


@pytest.fixture
def bomb_folder(tmp_path):
    """Two classes of small PNGs, one of them a 1.2-megapixel bomb."""
    for label in ("cat", "dog"):
        (tmp_path / "d" / label).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "d" / label / f"{i}.png").write_bytes(image_file("PNG"))
    (tmp_path / "d" / "dog" / "bomb.png").write_bytes(bomb(1100))
    vitkit.save(tiny_model(num_classes=2), tmp_path / "m.safetensors")
    return tmp_path


def test_a_folder_data_set_with_a_bomb(bomb_folder):
    with pytest.raises(DataError, match=r"1 unreadable image file.s. in .*: dog/bomb.png \(over the limit of 1000000"):
        load_data(str(bomb_folder / "d"), max_image_pixels=1_000_000, quiet=True)
    assert len(load_data(str(bomb_folder / "d"), max_image_pixels=0, val_fraction=0, test_fraction=0,
                         quiet=True).train) == 7


COMMANDS = {
    "train": ["train", "--data", "{d}", "--out", "{tmp}/run", "--epochs", "1"],
    "pretrain": ["pretrain", "--data", "{d}", "--out", "{tmp}/pre", "--epochs", "1"],
    "eval": ["eval", "{m}", "--data", "{d}"],
    "predict": ["predict", "{m}", "{d}/dog/bomb.png"],
    "fewshot": ["fewshot", "{m}", "--data", "{d}", "--no-cache"],
    "probe": ["probe", "{m}", "--data", "{d}", "--no-cache"],
    "analyze --images": ["analyze", "{m}", "--out", "{tmp}/a", "--images", "{d}/dog/bomb.png"],
    "analyze --data": ["analyze", "{m}", "--out", "{tmp}/a", "--data", "{d}"],
    "experiment": ["experiment", "posemb", "--data", "{d}", "--out", "{tmp}/e", "--epochs", "1"],
    "shard": ["shard", "{d}", "--out", "{tmp}/shards"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_that_reads_images_takes_the_limit(bomb_folder, command, capsys):
    paths = {"d": bomb_folder / "d", "m": bomb_folder / "m.safetensors", "tmp": bomb_folder}
    argv = [arg.format(**paths) for arg in COMMANDS[command]]
    assert main([*argv, "--max-image-pixels", "1000000", "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "bomb.png (over the limit of 1000000 pixels; raise max_image_pixels (--max-image-pixels N" in error


def test_predict_reads_the_bomb_with_the_limit_off(bomb_folder, capsys):
    assert main(["predict", str(bomb_folder / "m.safetensors"), str(bomb_folder / "d/dog/bomb.png"),
                 "--max-image-pixels", "0", "--json"]) == 0
    assert '"image":' in capsys.readouterr().out


def test_regression_analyze_images_over_twice_the_limit(bomb_folder, capsys):
    # vitkit analyze --images opened files with Pillow directly: DecompressionBombError (not an
    # OSError) escaped as a traceback, and the limit could not be raised.
    (bomb_folder / "huge.png").write_bytes(png_declaring(100_000, 100_000))
    argv = ["analyze", str(bomb_folder / "m.safetensors"), "--out", str(bomb_folder / "a"), "--images",
            str(bomb_folder / "huge.png"), "--quiet"]
    assert main(argv) == 2
    assert f"huge.png (over the limit of {DEFAULT} pixels" in capsys.readouterr().err
