"""Record each finished video durably, so a killed run resumes without redoing or duplicating any."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def json_or_none(line: str):
    """The JSON value of a line, or None for a line that is not JSON (torn by a kill, say)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


class Journal:
    """Append-only record of finished videos.

    The first line fingerprints the run (manifest, frames, videos); a journal of another run is discarded.
    """

    def __init__(self, path: Path, fingerprint: dict):
        self.path = path
        self.fingerprint = fingerprint
        self.file = None

    def read(self) -> dict[str, dict]:
        """This run's finished records by file name (none from another run's journal); a line torn by a kill is
        left out."""
        records: dict[str, dict] = {}
        if self.path.is_file():
            lines = self.path.read_text(errors="replace").splitlines()
            header = json_or_none(lines[0]) if lines else None
            if header == {"fingerprint": self.fingerprint}:
                for line in lines[1:]:
                    record = json_or_none(line)
                    if isinstance(record, dict) and "filename" in record and "label" in record:
                        records[record["filename"]] = record
            else:
                log.warning("%s belongs to another run (manifest, frames or videos differ); starting afresh", self.path)
        return records

    def open(self, records: dict[str, dict]) -> None:
        """Rewrite the file with the fingerprint and `records` only (what `read` kept), then open it to append."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w") as f:
            f.write(json.dumps({"fingerprint": self.fingerprint}) + "\n")
            f.writelines(json.dumps(record) + "\n" for record in records.values())
        os.replace(temporary, self.path)
        self.file = open(self.path, "a")

    def append(self, record: dict) -> None:
        """Record one finished video durably before it counts as done."""
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self, finished: bool) -> None:
        """Close; a finished run's journal is removed (its rows are in the submission)."""
        if self.file:
            self.file.close()
        if finished:
            self.path.unlink(missing_ok=True)
