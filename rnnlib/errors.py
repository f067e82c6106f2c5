"""Errors a user can fix. The CLI prints these without a traceback and exits with code 2."""


class UserError(Exception):
    """Bad input from the user: a config, a data file, a bundle. The message says the fix."""


class ConfigError(UserError):
    """A config key, type or value is wrong. Carries every problem found, not just the first;
    the message shows the first ``SHOWN`` of them."""

    SHOWN = 20

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        self.source = source
        lines = [f"  - {p}" for p in self.problems[:self.SHOWN]]
        if len(self.problems) > self.SHOWN:
            lines.append(f"  ... and {len(self.problems) - self.SHOWN} more (fix these and run again)")
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n" + "\n".join(lines))


class DataError(UserError):
    """A data file cannot be used at all (missing, not UTF-8, no usable series)."""


class BundleError(UserError):
    """A model bundle is missing, tampered with, or does not fit the model or data."""
