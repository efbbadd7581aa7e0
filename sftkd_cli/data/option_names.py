"""How a prepare option is named in an error: as `sftkd prepare-data` spells it (`--size 0 16`) or
as a plan's key (`plan.yaml: data.options.size: [0, 16]`), and `OptionError`, an option's value
refused deep in preparing, where only its key is at hand. Imports nothing of sftkd's but its
errors, so that the sources and volume readers can raise `OptionError` without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sftkd_cli.errors import SftkdError

#: the command's flags that are not --<the key, '_' as '-'>
_FLAGS = {"accelerations": "--acc", "mask_files": "--mask-file"}


@dataclass(frozen=True)
class OptionNames:
    """How an error names an option and its value: as the prepare-data command spells it
    ('--size 32 32'; the default) or, with a `prefix`, as a plan's key ('plan.yaml:
    data.options.size: [32]'; `ref`, for another option within the message: 'task sr')."""

    prefix: str = ""

    def __call__(self, key: str, shown: str = "") -> str:
        if not self.prefix:
            return f"{_FLAGS.get(key, '--' + key.replace('_', '-'))} {shown}".rstrip()
        return f"{self.prefix}{key}" + (f": {shown}" if shown else "")

    def ref(self, key: str, shown: str = "") -> str:
        return self(key, shown) if not self.prefix else f"{key} {shown}".rstrip()


class OptionError(SftkdError):
    """A prepare option's value refused while preparing, where only the option's key is at hand
    (a too-large --downsample, an unknown --val id): worded as `name` does, by default as the
    command spells it; `worded` words it again for a plan ('plan.yaml: data.options.val: 'x': ...')."""

    def __init__(self, key: str, value: Any, problem: str, name: OptionNames = OptionNames()) -> None:
        self.key, self.value, self.problem, self.name = key, value, problem, name
        super().__init__(f"{name(key, repr(value) if name.prefix else str(value))}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole (a worker's error), not from its message
        return type(self), (self.key, self.value, self.problem, self.name)

    def worded(self, name: OptionNames) -> OptionError:
        """The same error, the option named as `name` does."""
        return OptionError(self.key, self.value, self.problem, name)
