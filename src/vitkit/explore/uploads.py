"""Uploads: a multipart/form-data body split into its fields, and an image read from memory
with the limits and conversions of the image-file readers (what `vitkit predict` reads)."""

from __future__ import annotations

import io
import threading
from email.message import Message

import numpy as np

from vitkit.data.images import BadImage, Size, pixel_limit, read_header, read_pixels
from vitkit.errors import DataError

# The size of a request body taken by default: camera photos are a few MB.
DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024
# Pillow's pixel limit is one process-wide setting that `pixel_limit` changes for the length of
# a decode; requests decoding in parallel would restore each other's value.
_DECODING = threading.Lock()


class RequestError(DataError, ValueError):
    """A request the server cannot serve, with the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _header_params(name: str, value: str) -> Message:
    header = Message()
    header[name] = value
    return header


def multipart_fields(body: bytes, content_type: str) -> dict[str, bytes]:
    """The fields of a multipart/form-data body (RFC 7578), name -> content; the first of a
    repeated name wins. RequestError 400 for another content type or a malformed body."""
    header = _header_params("content-type", content_type or "")
    if header.get_content_type() != "multipart/form-data":
        raise RequestError(400, f"expected a multipart/form-data upload, got {content_type or 'no content type'!r}; "
                                "send the file as the form field 'image' (curl -F image=@photo.jpg)")
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise RequestError(400, "the multipart upload names no boundary")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    chunks = (b"\r\n" + body).split(delimiter)
    fields: dict[str, bytes] = {}
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            return fields
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise RequestError(400, "malformed multipart upload: a part has no header end")
        disposition = next((line.split(b":", 1)[1].decode("latin-1").strip() for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-disposition:")), None)
        name = _header_params("content-disposition", disposition).get_param(
            "name", header="content-disposition") if disposition else None
        if isinstance(name, str):
            fields.setdefault(name, content)
    raise RequestError(400, "malformed multipart upload: no closing boundary (was the upload cut short?)")


def read_upload(data: bytes, size: Size | None, channels: int, max_image_pixels: int | None = None) -> np.ndarray:
    """An uploaded image file's bytes -> (C, H, W) uint8, resized to `size` or at its own size
    (None), exactly as the image-file readers read a file of the same bytes; RequestError 422
    naming the problem when it is not a usable image (not an image, damaged, more pixels than
    the limit)."""
    if not data:
        raise RequestError(422, "the upload is empty")
    try:
        with _DECODING, pixel_limit(max_image_pixels):
            if size is None:
                size = read_header(io.BytesIO(data)).size
            return read_pixels(io.BytesIO(data), size, channels)
    except BadImage as e:
        raise RequestError(422, f"the upload is not a usable image: {e}") from None
