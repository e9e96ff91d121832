"""The one exception type users see: a one-line message naming the culprit (file:line, layer, blob, image)."""


class CaffeinitError(Exception):
    """Bad input or an unsupported net. The CLI prints ``caffeinit: error: <message>`` and exits 1."""


def layer_error(layer_name: str, layer_type: str, message: str) -> CaffeinitError:
    """An error about one layer, in the project's standard wording."""
    return CaffeinitError(f"layer '{layer_name}' ({layer_type}): {message}")
