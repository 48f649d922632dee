"""Segmentation as data: one JSON line per frame, and triggers that act when a class appears.

    edgeseg video clip.mp4 --jsonl frames.jsonl
    edgeseg camera --on "pedestrian>0.05" --exec "notify-send person" --on "car>0.2" --snapshot shots/

JSON line schema (one object per processed frame, keys always present):
    frame         0-based index of the processed frame
    time          wall-clock capture time, seconds since the epoch (time.time())
    wall_time     wall-clock time the line was written
    inference_ms  the model's invoke time
    latency_ms    capture -> overlay ready
    shares        {class name: fraction of the labelled pixels}, classes present only; the
                  fractions sum to 1 (class 0, "not labelled", is left out)

A trigger ``NAME>X`` (or ``NAME<X``) fires once when the share of NAME crosses X, and re-arms only
after it crosses back beyond X -/+ the clear margin (hysteresis, so a share hovering at X does
not fire every frame), and at most once per `min_interval` seconds. Its action (a command or a
snapshot) runs on a worker thread, never on the pipeline's; a command gets the frame's JSON line
on stdin and EDGESEG_CLASS / EDGESEG_SHARE / EDGESEG_FRAME in its environment.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.atomic import output_error
from edgeseg.errors import InputError, OutputError
from edgeseg.pipeline import FrameResult

DEFAULT_CLEAR_MARGIN = 0.5  # re-arm at half the threshold (for ">"), or 1.5x (for "<")
DEFAULT_MIN_INTERVAL_S = 2.0
ACTION_QUEUE = 16  # actions waiting for the worker; more are dropped (and counted), never waited for


def frame_record(result: FrameResult) -> dict:
    """The JSON line of one frame (schema in the module docstring)."""
    return {"frame": result.index, "time": round(result.captured, 4), "wall_time": round(time.time(), 4),
            "inference_ms": round(result.inference_ms, 3), "latency_ms": round(result.latency_ms, 2),
            "shares": result.shares()}


class JsonlWriter:
    """Append one line per frame to `path`, flushed as it goes (a killed run keeps every line so far)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise OutputError(f"--jsonl {path} is a folder; pass a file name such as {path / 'frames.jsonl'}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise output_error(self.path, exc) from exc
        self.lines = 0

    def write(self, record: dict) -> None:
        try:
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._file.flush()
        except OSError as exc:
            raise output_error(self.path, exc) from exc
        self.lines += 1

    def close(self) -> None:
        self._file.close()


@dataclass
class Trigger:
    """One ``--on`` rule and its action (`command` or `snapshot_dir`)."""

    name: str
    above: bool
    threshold: float
    clear: float
    command: str | None = None
    snapshot_dir: Path | None = None
    min_interval: float = DEFAULT_MIN_INTERVAL_S
    armed: bool = True
    last_fired: float = field(default=-1e9)
    fired: int = 0

    def check(self, share: float, now: float) -> bool:
        """Whether this frame's `share` fires the trigger (updates the hysteresis state)."""
        crossed = share > self.threshold if self.above else share < self.threshold
        cleared = share < self.clear if self.above else share > self.clear
        if not self.armed:
            if cleared:
                self.armed = True
            return False
        if crossed and now - self.last_fired >= self.min_interval:
            self.armed, self.last_fired = False, now
            self.fired += 1
            return True
        return False


EXPRESSION = re.compile(r"^\s*([A-Za-z0-9_ \-]+?)\s*([<>])\s*([0-9]*\.?[0-9]+)\s*$")


def parse_trigger(text: str, class_names: list[str], clear: float | None = None) -> Trigger:
    """``pedestrian>0.05`` -> Trigger; one-line InputError naming the problem otherwise."""
    match = EXPRESSION.match(text)
    if not match:
        raise InputError(f"--on {text!r} is not NAME>SHARE or NAME<SHARE (e.g. \"pedestrian>0.05\")")
    name, sign, value = match.group(1).strip(), match.group(2), float(match.group(3))
    if name not in class_names:
        raise InputError(f"--on {text!r}: the model has no class {name!r}; its classes: {', '.join(class_names[1:])}")
    if not 0.0 <= value <= 1.0:
        raise InputError(f"--on {text!r}: the share must be between 0 and 1 (a fraction of the labelled pixels)")
    above = sign == ">"
    if clear is None:
        clear = value * DEFAULT_CLEAR_MARGIN if above else min(1.0, value * (2 - DEFAULT_CLEAR_MARGIN))
    if (above and clear > value) or (not above and clear < value):
        raise InputError(f"--on-clear {clear} must lie on the other side of {value} from where {text!r} fires")
    return Trigger(name=name, above=above, threshold=value, clear=clear)


class Triggers:
    """Evaluate triggers per frame; run their actions on one worker thread, in order."""

    def __init__(self, triggers: list[Trigger]) -> None:
        self.triggers = triggers
        self.dropped = 0
        self._actions: queue.Queue = queue.Queue(maxsize=ACTION_QUEUE)
        self._worker = threading.Thread(target=self._work, name="triggers", daemon=True)
        self._worker.start()
        self.errors: list[str] = []

    def __call__(self, result: FrameResult, record: dict) -> None:
        now = time.monotonic()
        for trigger in self.triggers:
            share = record["shares"].get(trigger.name, 0.0)
            if trigger.check(share, now):
                image = result.image.copy() if trigger.snapshot_dir is not None else None
                try:
                    self._actions.put_nowait((trigger, record, share, image))
                except queue.Full:
                    self.dropped += 1

    def _work(self) -> None:
        while (item := self._actions.get()) is not None:
            trigger, record, share, image = item
            try:
                if trigger.snapshot_dir is not None:
                    from edgeseg.sinks import write_image

                    write_image(trigger.snapshot_dir / f"{trigger.name}_{record['frame']:06d}.jpg", image)
                if trigger.command:
                    env = {**os.environ, "EDGESEG_CLASS": trigger.name, "EDGESEG_SHARE": f"{share:.6f}",
                           "EDGESEG_FRAME": str(record["frame"])}
                    subprocess.run(shlex.split(trigger.command), input=json.dumps(record), text=True, env=env,
                                   timeout=60, check=False, stdout=subprocess.DEVNULL)
            except (OSError, subprocess.SubprocessError, OutputError) as exc:
                self.errors.append(f"trigger {trigger.name}: {exc}")

    def close(self, timeout: float = 30.0) -> None:
        """Let queued actions finish (up to `timeout`), then stop the worker."""
        self._actions.put(None)
        self._worker.join(timeout)


def build_triggers(on: list[str], execs: list[str], snapshot: Path | None, clear: float | None,
                   min_interval: float, class_names: list[str]) -> list[Trigger]:
    """Pair each ``--on`` with the ``--exec`` in the same position (or with ``--snapshot``).

    Raises:
        InputError: bad expressions, an --exec without --on, or an --on with no action.
    """
    if len(execs) > len(on):
        raise InputError(f"{len(execs)} --exec for {len(on)} --on; give one --on per --exec (in the same order)")
    triggers = []
    for index, text in enumerate(on):
        trigger = parse_trigger(text, class_names, clear)
        trigger.command = execs[index] if index < len(execs) else None
        trigger.snapshot_dir = snapshot
        trigger.min_interval = min_interval
        if trigger.command is None and snapshot is None:
            raise InputError(f"--on {text!r} has no action; add --exec \"COMMAND\" or --snapshot DIR")
        if trigger.command is not None and not shlex.split(trigger.command):
            raise InputError(f"--exec for {text!r} is empty; give a command")
        triggers.append(trigger)
    if snapshot is not None:
        try:
            Path(snapshot).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"--snapshot {snapshot} cannot be created ({exc.strerror}); choose another folder") from exc
    return triggers
