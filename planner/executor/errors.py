"""The executor's own error, defined without torch so that the CLI can catch it before anything heavy loads."""


class CompatError(RuntimeError):
    """The installed diffusers or accelerate moved an attribute the executor relies on (`compat.self_check`)."""
