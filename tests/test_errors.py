"""A VitkitError is one line, whatever names from a damaged file its message quotes."""

from vitkit.errors import CheckpointError, VitkitError


def test_line_breaks_in_a_message_are_escaped():
    error = CheckpointError("m.pth: unexpected b\nlocks.0.attn\r.qkv\u2028.bias\x00")
    assert str(error) == "m.pth: unexpected b\\nlocks.0.attn\\r.qkv\\u2028.bias\\x00"
    assert len(str(error).splitlines()) == 1
    assert str(VitkitError("plain, tabs\tand all")) == "plain, tabs\\tand all"
