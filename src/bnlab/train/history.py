"""Per-epoch training metrics: :class:`EpochRecord` rows collected in a :class:`History`.

Accuracies are in percent (0-100) and losses are mean per-sample losses, as the training
loop prints them.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from os import PathLike
from typing import Any, overload

__all__ = ["EpochRecord", "History"]


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's metrics.

    ``train_loss``/``train_acc``: sample-weighted mean loss and accuracy (%) over the
    epoch's training batches, in train mode while the weights moved. ``test_loss``/
    ``test_acc``: mean per-sample loss and accuracy (%) on the test loader after the epoch,
    in eval mode. ``seconds``: wall time of the whole epoch (training and test evaluation).
    ``samples_per_s``: training samples per second of the training phase (this process's
    own in multi-process training).
    ``peak_memory_bytes``: the device's peak memory during the epoch (see
    :class:`bnlab.memory.GPUMemoryManager`).
    """

    epoch: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    seconds: float
    samples_per_s: float
    peak_memory_bytes: int

    TIMING_FIELDS = ("seconds", "samples_per_s", "peak_memory_bytes")

    def metrics(self) -> dict[str, float]:
        """The fields that do not depend on timing or the machine (epoch, losses, accs)."""
        return {k: v for k, v in asdict(self).items() if k not in self.TIMING_FIELDS}


_FIELD_NAMES = tuple(f.name for f in fields(EpochRecord))
_INT_FIELDS = ("epoch", "peak_memory_bytes")


class History:
    """An ordered, list-like sequence of :class:`EpochRecord`, one per epoch run.

    ``to_dict``/``from_dict`` round-trip through JSON types exactly; ``to_csv`` writes one
    row per epoch with a header of the record's field names.
    """

    def __init__(self, records: Iterable[EpochRecord] = ()) -> None:
        self._records: list[EpochRecord] = list(records)

    def append(self, record: EpochRecord) -> None:
        self._records.append(record)

    def extend(self, records: Iterable[EpochRecord]) -> None:
        self._records.extend(records)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[EpochRecord]:
        return iter(self._records)

    @overload
    def __getitem__(self, index: int) -> EpochRecord: ...
    @overload
    def __getitem__(self, index: slice) -> History: ...
    def __getitem__(self, index: int | slice) -> EpochRecord | History:
        if isinstance(index, slice):
            return History(self._records[index])
        return self._records[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, History) and self._records == other._records

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        # Short on purpose: notebooks display the value train_classify returns.
        if not self._records:
            return "History(0 epochs)"
        epochs = f"{len(self)} epoch" + ("s" if len(self) != 1 else "")
        best = max(self._records, key=lambda r: r.test_acc)
        return (
            f"History({epochs}, final test acc {self.final_test_acc:.2f}%, "
            f"best {best.test_acc:.2f}% at epoch {best.epoch})"
        )

    def column(self, name: str) -> list[Any]:
        """The values of field ``name`` across epochs, e.g. ``column("test_acc")``."""
        if name not in _FIELD_NAMES:
            raise KeyError(f"unknown field {name!r}; fields: {', '.join(_FIELD_NAMES)}")
        return [getattr(r, name) for r in self._records]

    def _last(self) -> EpochRecord:
        if not self._records:
            raise ValueError("History is empty: no epoch has been recorded")
        return self._records[-1]

    @property
    def epochs(self) -> list[int]:
        return self.column("epoch")

    @property
    def final_test_acc(self) -> float:
        return self._last().test_acc

    @property
    def final_train_loss(self) -> float:
        return self._last().train_loss

    @property
    def best_test_acc(self) -> float:
        self._last()
        return max(r.test_acc for r in self._records)

    @property
    def best_epoch(self) -> int:
        """Epoch of the best test accuracy (the first one on ties)."""
        self._last()
        return max(self._records, key=lambda r: r.test_acc).epoch

    @property
    def mean_epoch_seconds(self) -> float:
        self._last()
        return math.fsum(r.seconds for r in self._records) / len(self._records)

    @property
    def peak_memory_bytes(self) -> int:
        """The largest per-epoch peak."""
        self._last()
        return max(r.peak_memory_bytes for r in self._records)

    def to_dict(self) -> dict[str, Any]:
        """``{"epochs": [record as dict, ...]}``: JSON-serialisable."""
        return {"epochs": [asdict(r) for r in self._records]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict`; raises ValueError for anything else: not a dict with
        an ``"epochs"`` list, rows with missing or unknown fields, or values of other types
        (integers where ints belong, numbers where floats do)."""
        if not isinstance(data, dict) or not isinstance(data.get("epochs"), list):
            raise ValueError(f"a history is a dict with an 'epochs' list, got {data!r:.80}")
        records = []
        for i, row in enumerate(data["epochs"]):
            if not isinstance(row, dict) or set(row) != set(_FIELD_NAMES):
                fields = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise ValueError(
                    f"history row {i} has fields {fields}; expected {list(_FIELD_NAMES)}"
                )
            for name in _FIELD_NAMES:
                value = row[name]
                is_int = isinstance(value, int) and not isinstance(value, bool)
                if not (is_int if name in _INT_FIELDS else is_int or isinstance(value, float)):
                    kind = "an int" if name in _INT_FIELDS else "a number"
                    raise ValueError(f"history row {i}: {name} must be {kind}, got {value!r}")
            records.append(EpochRecord(**{name: (int(row[name]) if name in _INT_FIELDS
                                                 else float(row[name]))
                                          for name in _FIELD_NAMES}))
        return cls(records)

    def csv_text(self) -> str:
        """One CSV row per epoch (floats in full precision) after a header row."""
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(_FIELD_NAMES)
        for r in self._records:
            writer.writerow([repr(getattr(r, name)) for name in _FIELD_NAMES])
        return text.getvalue()

    def to_csv(self, path: str | PathLike[str]) -> None:
        """Write :meth:`csv_text` to ``path``."""
        with open(path, "w", newline="") as f:
            f.write(self.csv_text())
