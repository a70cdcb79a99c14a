"""Every way a data source can be wrong ends in one DataError line naming the problem."""

from __future__ import annotations

import pytest
from PIL import Image

from data_writers import write_class_folder, write_image
from vitkit.data import load_data, read_images
from vitkit.errors import DataError


def _load(path, **kwargs):
    return load_data(str(path), val_fraction=0, test_fraction=0, quiet=True, **kwargs)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="not found: no such file or folder; give 'digits'") as err:
        load_data(str(tmp_path / "nowhere"))
    _one_line(err)


def test_unsupported_file_and_archive(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DataError, match="unsupported file type"):
        load_data(str(tmp_path / "notes.txt"))
    with pytest.raises(DataError, match="an archive: extract it"):
        load_data(str(tmp_path / "cifar-10-python.tar.gz"))


def test_empty_folder(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="is empty; put the images of each class in their own sub-folder"):
        _load(tmp_path / "d")


def test_folder_of_images_without_class_folders(tmp_path):
    write_image(tmp_path / "d" / "a.png")
    with pytest.raises(DataError, match="holds images but no class sub-folders"):
        _load(tmp_path / "d")


def test_folders_with_no_images(tmp_path):
    (tmp_path / "d" / "cat").mkdir(parents=True)
    (tmp_path / "d" / "cat" / "readme.txt").write_text("no pictures here")
    with pytest.raises(DataError, match=r"no images found under .*d \(looked for .bmp"):
        _load(tmp_path / "d")


def test_a_class_folder_with_no_images(tmp_path):
    write_class_folder(tmp_path / "d", {"cat": 2, "dog": 2})
    (tmp_path / "d" / "eel").mkdir()
    with pytest.raises(DataError, match="class folder.s. eel in .* have no images"):
        _load(tmp_path / "d")


def test_corrupt_files_are_listed_by_name(tmp_path):
    root = write_class_folder(tmp_path / "d", {"cat": 3, "dog": 3})
    (root / "cat" / "garbage.png").write_bytes(b"\x89PNG but not really")
    (root / "dog" / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError) as err:
        _load(root)
    message = _one_line(err)
    assert message.startswith(f"2 unreadable image file(s) in {root}: ")
    assert "garbage.png (not a readable image" in message and "empty.jpg (not a readable image" in message
    assert message.endswith("or pass skip_bad_images=True (--skip-bad-images)")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_files_are_caught(tmp_path, suffix):
    root = write_class_folder(tmp_path / "d", {"cat": 2, "dog": 2}, suffix=suffix)
    noisy = Image.effect_noise((64, 64), 60).convert("RGB")
    noisy.save(root / "cat" / f"cut{suffix}")
    data = (root / "cat" / f"cut{suffix}").read_bytes()
    (root / "cat" / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    expected = rf"1 unreadable image file.s. in .*: cat/cut\{suffix} \((corrupt or truncated|not)"
    with pytest.raises(DataError, match=expected):
        _load(root)


def test_every_bad_file_is_named_at_once_under_its_class_folder(tmp_path):
    # An unknown format fails on the header, a truncated file only when decoded: both are in the
    # first error, not the truncated one after the other is fixed.
    root = write_class_folder(tmp_path / "d" / "train", {"cat": 2, "dog": 2}).parent
    write_class_folder(root / "test", {"cat": 1, "dog": 1})
    (root / "train" / "cat" / "notes.png").write_bytes(b"plain text, not an image")
    Image.effect_noise((64, 64), 60).convert("RGB").save(root / "train" / "dog" / "cut.png")
    data = (root / "train" / "dog" / "cut.png").read_bytes()
    (root / "train" / "dog" / "cut.png").write_bytes(data[: len(data) // 2])
    (root / "test" / "dog" / "empty.png").write_bytes(b"")
    with pytest.raises(DataError) as err:
        _load(root)
    message = _one_line(err)
    assert message.startswith(f"3 unreadable image file(s) in {root}: "
                              "test/dog/empty.png (not a readable image: unknown format or damaged header), "
                              "train/cat/notes.png (not a readable image: unknown format or damaged header), "
                              "train/dog/cut.png (corrupt or truncated (image file is truncated")
    assert message.endswith("; fix or delete them, or pass skip_bad_images=True (--skip-bad-images)")
    splits = load_data(str(root), quiet=True, skip_bad_images=True)
    assert (len(splits.train) + len(splits.val), len(splits.test)) == (4, 2)
    assert splits.notes[0].startswith("skipped 3 unreadable image file(s): test/dog/empty.png")


def test_skip_bad_images_keeps_the_rest_and_counts_the_skipped(tmp_path):
    root = write_class_folder(tmp_path / "d", {"cat": 3, "dog": 3})
    for i in range(12):
        (root / "dog" / f"bad{i:02d}.png").write_bytes(b"junk")
    splits = _load(root, skip_bad_images=True)
    assert len(splits.train) == 6
    assert len(splits.notes) == 1
    assert splits.notes[0].startswith("skipped 12 unreadable image file(s): dog/bad00.png (not a readable image")
    assert "dog/bad09.png" in splits.notes[0] and "bad10" not in splits.notes[0]
    assert splits.notes[0].endswith("and 2 more")


def test_every_file_bad_is_an_error_even_when_skipping(tmp_path):
    (tmp_path / "d" / "cat").mkdir(parents=True)
    (tmp_path / "d" / "cat" / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="none of the 1 image files under .* can be read: cat/x.png"):
        _load(tmp_path / "d", skip_bad_images=True)


def test_unsupported_mode_is_named(tmp_path):
    root = write_class_folder(tmp_path / "d", {"cat": 2, "dog": 2})
    Image.new("F", (4, 4), 0.5).save(root / "cat" / "float.tiff")
    with pytest.raises(DataError, match=r"float.tiff \(image mode F is not supported; save it as 8-bit"):
        _load(root)


def test_images_over_the_pixel_limit_are_refused_until_it_is_raised(tmp_path):
    root = write_class_folder(tmp_path / "d", {"cat": 2, "dog": 2}, size=(4, 4))
    write_image(root / "cat" / "huge.png", (60, 60))
    write_image(root / "dog" / "vast.png", (200, 200))  # beyond twice the limit: Pillow's hard error
    expected = "huge.png .over the limit of 1000 pixels; raise max_image_pixels"
    with pytest.raises(DataError, match=expected) as err:
        _load(root, max_image_pixels=1000)
    assert "vast.png (over the limit" in str(err.value)
    assert _load(root, max_image_pixels=50_000).image_size == (4, 4)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485


def test_read_images_names_missing_and_corrupt_files(tmp_path):
    good = write_image(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="1 image file.s. not found: .*missing.png"):
        read_images([good, tmp_path / "missing.png"], 8, 3)
    expected = r"1 unreadable image file.s. in the given files: bad.png \(not a readable"
    with pytest.raises(DataError, match=expected):
        read_images([good, tmp_path / "bad.png"], 8, 3)

