"""A VitkitError is one line, whatever names from a damaged file its message quotes."""

from vitkit.errors import CheckpointError, VitkitError


def test_line_breaks_in_a_message_are_escaped():
    error = CheckpointError("m.pth: unexpected b\nlocks.0.attn\r.qkv\u2028.bias\x00")
    assert str(error) == "m.pth: unexpected b\\nlocks.0.attn\\r.qkv\\u2028.bias\\x00"
    assert len(str(error).splitlines()) == 1
    assert str(VitkitError("plain, tabs\tand all")) == "plain, tabs\\tand all"


def test_printable_escapes_line_breaks_and_the_bytes_of_names_that_are_not_utf8():
    from vitkit.errors import printable

    folder_name = (b"caf\xe9" + b"\n" + b"x").decode("utf-8", "surrogateescape")  # a Latin-1 folder name
    assert printable(folder_name) == "caf\\xe9\\nx"
    assert printable("chat noir, été") == "chat noir, été"
    assert printable("\ud800 lone high") == "\\ud800 lone high"
    shown = printable(folder_name)
    assert shown.encode("utf-8") and len(shown.splitlines()) == 1
    assert str(VitkitError(f"class {folder_name} is empty")) == "class caf\\xe9\\nx is empty"


def test_argument_errors_are_also_python_value_and_type_errors():
    from vitkit.errors import ConfigError, ConfigTypeError, ConfigValueError

    assert issubclass(ConfigValueError, ConfigError) and issubclass(ConfigValueError, ValueError)
    assert issubclass(ConfigTypeError, ConfigError) and issubclass(ConfigTypeError, TypeError)
    assert str(ConfigValueError("image_size must be positive")) == "image_size must be positive"
