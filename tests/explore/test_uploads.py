"""Uploads: multipart bodies split into fields, images read from memory as predict reads files."""

import io

import numpy as np
import pytest
from PIL import Image

from vitkit.data import read_images
from vitkit.explore.uploads import RequestError, multipart_fields, read_upload

from .conftest import multipart, write_png


def test_fields_come_back_byte_for_byte_whatever_bytes_they_hold():
    binary = bytes(range(256)) * 4 + b"\r\n--not-the-boundary\r\n\r\n"
    body, content_type = multipart({"image": ("a.png", binary), "note": ("n.txt", b"")})
    assert multipart_fields(body, content_type) == {"image": binary, "note": b""}


def test_a_preamble_and_a_quoted_boundary_are_understood():
    body = (b"ignored preamble\r\n--b\"x\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n"
            b"DATA\r\n--b\"x--\r\n")
    assert multipart_fields(body, 'multipart/form-data; boundary="b\\"x"') == {"image": b"DATA"}


def test_the_first_of_a_repeated_field_wins():
    body = (b"--B\r\nContent-Disposition: form-data; name=image\r\n\r\nfirst\r\n"
            b"--B\r\nContent-Disposition: form-data; name=image\r\n\r\nsecond\r\n--B--")
    assert multipart_fields(body, "multipart/form-data; boundary=B") == {"image": b"first"}


@pytest.mark.parametrize("body, content_type, message", [
    (b"x", "image/png", "expected a multipart/form-data upload"),
    (b"x", "", "no content type"),
    (b"x", "multipart/form-data", "names no boundary"),
    (b"--B\r\nContent-Disposition: form-data; name=image\r\nDATA", "multipart/form-data; boundary=B", "no header end"),
    (b"--B\r\nContent-Disposition: form-data; name=image\r\n\r\nDATA", "multipart/form-data; boundary=B",
     "no closing boundary"),
])
def test_malformed_bodies_are_refused_with_400(body, content_type, message):
    with pytest.raises(RequestError, match=message) as caught:
        multipart_fields(body, content_type)
    assert caught.value.status == 400


@pytest.mark.parametrize("mode, channels, size", [("RGB", 3, (16, 16)), ("RGBA", 3, (12, 20)), ("L", 1, (16, 16)),
                                                  ("RGB", 1, (9, 7)), ("P", 3, (16, 16))])
def test_an_upload_reads_exactly_as_vitkit_predict_reads_the_same_file(tmp_path, mode, channels, size):
    path = tmp_path / "image.png"
    content = write_png(path, size=(23, 31), seed=1, mode=mode)
    expected = read_images([path], size, channels)[0].numpy()
    got = read_upload(content, size, channels)
    assert got.dtype == np.uint8 and got.shape == (channels, *size)
    assert np.array_equal(got, expected)


def test_the_pixel_limit_applies_as_for_image_files():
    buffer = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buffer, format="PNG")
    before = Image.MAX_IMAGE_PIXELS
    assert read_upload(buffer.getvalue(), (8, 8), 3, max_image_pixels=100 * 100).shape == (3, 8, 8)
    with pytest.raises(RequestError, match="over the limit of 9999 pixels") as caught:
        read_upload(buffer.getvalue(), (8, 8), 3, max_image_pixels=9999)
    assert caught.value.status == 422
    assert Image.MAX_IMAGE_PIXELS == before  # the process-wide limit is put back


@pytest.mark.parametrize("data, message", [(b"", "empty"), (b"GIF89a" + b"\0" * 20, "not a usable image"),
                                           (b"hello", "unknown format")])
def test_what_is_not_an_image_is_refused_with_422(data, message):
    with pytest.raises(RequestError, match=message) as caught:
        read_upload(data, (8, 8), 3)
    assert caught.value.status == 422
