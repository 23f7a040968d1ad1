"""One behaviour shared by the dataclass configs (tokenizer, aligners, training): built from a
dict, an unknown name is an error that lists the valid ones, so a typo never goes unnoticed."""
from __future__ import annotations

from dataclasses import asdict, fields


class Config:
    """Mixin for ``@dataclass`` configs: :meth:`from_dict` (strict) and :meth:`to_dict`."""

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise TypeError(f"unknown {cls.__name__} parameter(s) {unknown}; valid: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)
