"""Link the faces found on the key frames into per-person tracks."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from inference.faces import pair_nearest
from weights import TrackSpec


@dataclass
class Track:
    """One person's face across the key frames: key position -> box [x0, y0, x1, y1, score] (followed by the
    landmarks [lx0, ly0, ..., lx4, ly4] where the detector gives them)."""

    boxes: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def last(self) -> int:
        return max(self.boxes)

    def box_at(self, frame: int, keys: list[int]) -> np.ndarray:
        """The detection row at any frame index, every column (box, score, landmarks) linearly interpolated between
        the nearest detections."""
        frames = np.array([keys[pos] for pos in sorted(self.boxes)], np.float64)
        boxes = np.stack([self.boxes[pos] for pos in sorted(self.boxes)])
        return np.array([np.interp(frame, frames, column) for column in boxes.T], np.float32)

    def union(self) -> np.ndarray:
        """The smallest box holding every detection of the track."""
        boxes = np.stack([box[:4] for box in self.boxes.values()])
        return np.concatenate([boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)]).astype(np.float32)

    def span(self, keys: list[int]) -> tuple[int, int]:
        """First and last frame index where the face was detected."""
        return keys[min(self.boxes)], keys[self.last]


def link_tracks(boxes_per_key: list[np.ndarray], spec: TrackSpec) -> list[Track]:
    """Greedy linking across key frames, nearest faces first; a track may skip up to `max_gap` key frames.

    Distance in face sizes rather than IoU: between key frames a third of a second apart a face often moves
    further than its IoU tolerates, while two people's faces are rarely within one face size of each other.
    """
    tracks: list[Track] = []
    for pos, boxes in enumerate(boxes_per_key):
        open_tracks = [t for t in tracks if pos - t.last <= spec.max_gap + 1]
        pairs = pair_nearest([t.boxes[t.last] for t in open_tracks], boxes, spec.max_shift)
        for ti, bi in pairs:
            open_tracks[ti].boxes[pos] = boxes[bi]
        taken_boxes = {bi for _, bi in pairs}
        tracks.extend(Track({pos: box}) for bi, box in enumerate(boxes) if bi not in taken_boxes)
    confirmed = [t for t in tracks if len(t.boxes) >= spec.min_detections]
    longest = max((len(t.boxes) for t in tracks), default=0)
    return confirmed or [t for t in tracks if len(t.boxes) == longest]
