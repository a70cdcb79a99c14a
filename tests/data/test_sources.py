"""load_data on the bundled digits and on image folders in both layouts; read_images."""

from __future__ import annotations

import sys

import pytest
import torch
from PIL import Image

from data_writers import write_class_folder, write_image
from vitkit.data import load_data, read_images
from vitkit.errors import ConfigError


def _all_labels(splits) -> torch.Tensor:
    return torch.cat([splits.train.labels, splits.val.labels, splits.test.labels])


def test_digits_is_the_default_and_splits_every_image_once():
    splits = load_data()
    assert splits.source == "digits"
    assert splits.class_names == [str(i) for i in range(10)]
    assert (splits.channels, splits.image_size) == (1, (8, 8))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1259, 179, 359)
    assert splits.train.images.dtype == torch.uint8 and splits.train.labels.dtype == torch.int64
    assert torch.bincount(_all_labels(splits)).sum() == 1797


def test_digits_split_depends_only_on_the_seed():
    a, b, c = load_data(split_seed=3), load_data(split_seed=3), load_data(split_seed=4)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, c.train.images)


def test_digits_converted_to_rgb_and_resized_on_request():
    splits = load_data(image_size=16, channels=3)
    assert splits.train.images.shape[1:] == (3, 16, 16)
    grey = load_data().train.images
    assert torch.equal(splits.train.images[:, 0], splits.train.images[:, 2])
    # Bicubic upsampling keeps the mean brightness close to the original.
    assert abs(splits.train.images.float().mean() - grey.float().mean()) < 2.0


def test_class_folder_layout_is_split_stratified(image_folder):
    splits = load_data(str(image_folder), val_fraction=0.2, test_fraction=0.2, quiet=True)
    assert splits.class_names == ["cat", "dog", "eel"]
    assert splits.source == f"folder:{image_folder}"
    assert splits.train.images.shape[1:] == (3, 6, 8)
    for part in (splits.val, splits.test):
        assert torch.bincount(part.labels, minlength=3).tolist() == [2, 2, 1]
    assert torch.bincount(splits.train.labels).tolist() == [6, 6, 3]


def test_folder_pixels_and_labels_match_the_files(tmp_path):
    root = tmp_path / "colours"
    write_image(root / "red" / "a.png", (4, 4), "RGB", (200, 10, 30))
    write_image(root / "green" / "b.png", (4, 4), "RGB", (5, 250, 60))
    splits = load_data(str(root), val_fraction=0, test_fraction=0, quiet=True)
    assert splits.class_names == ["green", "red"]
    by_label = {int(l): img for img, l in zip(splits.train.images, splits.train.labels)}
    assert by_label[1][:, 0, 0].tolist() == [200, 10, 30]
    assert by_label[0][:, 3, 3].tolist() == [5, 250, 60]


def test_train_val_test_folders_are_used_as_given(tmp_path):
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        write_class_folder(tmp_path / "d" / split, {"a": n, "b": n}, size=(5, 5), mode="L", suffix=".jpg")
    splits = load_data(str(tmp_path / "d"), quiet=True)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 6)
    assert splits.channels == 1 and splits.image_size == (5, 5)


def test_only_train_and_test_folders_carve_val_from_train(tmp_path):
    write_class_folder(tmp_path / "d" / "train", {"a": 10, "b": 10}, size=(5, 5))
    write_class_folder(tmp_path / "d" / "test", {"a": 3, "b": 3}, size=(5, 5))
    splits = load_data(str(tmp_path / "d"), val_fraction=0.2, quiet=True)
    assert torch.bincount(splits.val.labels).tolist() == [2, 2]
    assert torch.bincount(splits.train.labels).tolist() == [8, 8]
    assert len(splits.test) == 6


def test_mixed_sizes_take_the_most_common_size_and_say_so(tmp_path):
    root = tmp_path / "d"
    for i in range(3):
        write_image(root / "a" / f"{i}.png", (10, 7))
    write_image(root / "b" / "big.png", (20, 20))
    write_image(root / "b" / "small.png", (3, 3))
    splits = load_data(str(root), val_fraction=0, test_fraction=0, quiet=True)
    assert splits.image_size == (7, 10)
    assert any("resized 2 of 5 images to 7x10" in note for note in splits.notes)
    chosen = load_data(str(root), image_size=(4, 6), val_fraction=0, test_fraction=0, quiet=True)
    assert chosen.image_size == (4, 6)


@pytest.mark.parametrize("mode, expected_channels", [("L", 1), ("LA", 1), ("1", 1), ("I;16", 1),
                                                     ("RGB", 3), ("RGBA", 3), ("P", 3), ("CMYK", 3)])
def test_image_modes_convert_to_grey_or_rgb(tmp_path, mode, expected_channels):
    suffix = ".jpg" if mode == "CMYK" else ".png"
    write_class_folder(tmp_path / "d", {"a": 2, "b": 2}, size=(4, 4), mode=mode, suffix=suffix)
    splits = load_data(str(tmp_path / "d"), val_fraction=0, test_fraction=0, quiet=True)
    assert splits.channels == expected_channels
    assert splits.train.images.dtype == torch.uint8


def test_transparent_pixels_are_laid_over_white_and_16_bit_is_scaled(tmp_path):
    write_image(tmp_path / "d" / "a" / "clear.png", (2, 2), "RGBA", (0, 0, 0, 0))
    write_image(tmp_path / "e" / "a" / "deep.png", (2, 2), "I;16", 65535)
    clear = load_data(str(tmp_path / "d"), val_fraction=0, test_fraction=0, quiet=True).train.images
    deep = load_data(str(tmp_path / "e"), val_fraction=0, test_fraction=0, quiet=True).train.images
    assert clear.unique().tolist() == [255] and clear.shape[1] == 3
    assert deep.unique().tolist() == [255] and deep.shape[1] == 1


def test_a_grey_and_an_rgb_file_together_give_rgb_unless_asked(tmp_path):
    write_image(tmp_path / "d" / "a" / "grey.png", (4, 4), "L", 100)
    write_image(tmp_path / "d" / "b" / "rgb.png", (4, 4), "RGB", 100)
    assert load_data(str(tmp_path / "d"), val_fraction=0, test_fraction=0, quiet=True).channels == 3
    grey = load_data(str(tmp_path / "d"), channels=1, val_fraction=0, test_fraction=0, quiet=True)
    assert grey.channels == 1 and grey.train.images.unique().tolist() == [100]


def test_read_images_resizes_to_the_model_input(tmp_path):
    paths = [write_image(tmp_path / "x.png", (20, 10), "RGB", 40),
             write_image(tmp_path / "y.jpg", (3, 3), "L", 200)]
    images = read_images(paths, 8, 3, quiet=True)
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.uint8
    assert images[0].unique().tolist() == [40]
    assert abs(int(images[1].float().mean()) - 200) <= 1
    assert read_images([str(paths[0])], (4, 6), 1, quiet=True).shape == (1, 1, 4, 6)


@pytest.mark.parametrize("kwargs", [{"val_fraction": 0.6, "test_fraction": 0.4}, {"val_fraction": -0.1},
                                    {"channels": 4}])
def test_option_values_that_make_no_sense_are_refused(kwargs):
    with pytest.raises(ConfigError):
        load_data(**kwargs)


def test_photos_turned_by_exif_are_read_upright(tmp_path):
    turned = Image.new("RGB", (8, 4), (250, 0, 0))
    turned.paste((0, 0, 250), (0, 0, 4, 4))  # left half blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    for i in range(2):
        path = tmp_path / "d" / f"c{i}" / "photo.png"
        path.parent.mkdir(parents=True)
        turned.save(path, exif=exif)
    splits = load_data(tmp_path / "d", val_fraction=0, test_fraction=0, quiet=True)
    image = splits.train.images[0]
    assert splits.image_size == (8, 4)
    assert image[:, 0, 0].tolist() == [0, 0, 250] and image[:, 7, 0].tolist() == [250, 0, 0]


def test_no_progress_bar_when_stderr_is_not_a_terminal_but_a_line_per_phase(tmp_path, capfd):
    root = write_class_folder(tmp_path / "d", {"cat": 2, "dog": 2})
    load_data(str(root), val_fraction=0, test_fraction=0)
    lines = capfd.readouterr().err.splitlines()
    assert "\r" not in "".join(lines)  # no bar redrawn in place
    assert [line.split(":")[0] for line in lines] == ["checking images", "reading images"]
    assert all(line.split(": ")[1].startswith("4 img in ") for line in lines)


def test_a_progress_bar_on_a_terminal_unless_quiet(tmp_path, capsys, monkeypatch):
    root = write_class_folder(tmp_path / "d", {"cat": 2, "dog": 2})
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    load_data(str(root), val_fraction=0, test_fraction=0)
    assert "reading images" in capsys.readouterr().err
    load_data(str(root), val_fraction=0, test_fraction=0, quiet=True)
    assert capsys.readouterr().err == ""
