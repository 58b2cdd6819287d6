"""User-facing errors: raised with a message a user can act on, turned into exit code 2 by the CLI."""


class UserError(Exception):
    """Bad input from the user (device, file, config, endpoint, model): exit code 2, no traceback."""

    exit_code = 2


class ConfigError(UserError):
    """An invalid config file or value; the message names the key, the line and the reason."""


class DeviceError(UserError):
    """An audio device that does not exist or cannot be opened; the message lists the devices."""


class CheckpointError(UserError):
    """A model file that is not a soundwatch checkpoint or does not match what was expected."""
