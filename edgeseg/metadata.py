"""What travels inside an exported ``.tflite``: labels, input spec, output kind, provenance.

Format: a ZIP archive appended to the TFLite flatbuffer holding ``edgeseg.json`` (and a plain
``labels.txt`` for other tools). This is the same trick TFLite's own metadata uses for its
associated files: interpreters read the flatbuffer from its root table and never look past its
end, and ``zipfile`` finds an archive from its end-of-central-directory record, so both readers
see what they need in one file. `tests/test_segmenter.py` loads such a model in every
interpreter that is installed.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field

from edgeseg.errors import ModelError
from edgeseg.labels import LabelSet
from edgeseg.preprocess import InputSpec

METADATA_NAME = "edgeseg.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelMetadata:
    """Everything the runtime needs to use a model without side files.

    Attributes:
        labels: class names and palette, index 0 = not labelled.
        input: how frames are prepared (size, normalisation).
        output: ``"logits"`` or ``"class_map"`` (ArgMax inside the model).
        provenance: free-form facts: source model, calibration set, converter version, ...
    """

    labels: LabelSet
    input: InputSpec
    output: str = "logits"
    provenance: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": "edgeseg",
                "version": FORMAT_VERSION,
                "labels": self.labels.to_dict(),
                "input": self.input.to_dict(),
                "output": self.output,
                "provenance": self.provenance,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> "ModelMetadata":
        data = json.loads(text)
        return cls(
            labels=LabelSet.from_dict(data["labels"]),
            input=InputSpec.from_dict(data["input"]),
            output=str(data.get("output", "logits")),
            provenance=dict(data.get("provenance", {})),
        )


def strip_metadata(model_bytes: bytes) -> bytes:
    """Return the flatbuffer alone (anything appended after it removed)."""
    start = _archive_start(model_bytes)
    return model_bytes if start is None else model_bytes[:start]


def attach_metadata(model_bytes: bytes, metadata: ModelMetadata) -> bytes:
    """Append (or replace) the edgeseg metadata archive of a TFLite flatbuffer."""
    flatbuffer = strip_metadata(model_bytes)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(METADATA_NAME, metadata.to_json())
        archive.writestr("labels.txt", "\n".join(metadata.labels.names) + "\n")
    return flatbuffer + buffer.getvalue()


class MetadataError(ModelError, ValueError):
    """The embedded metadata is there but damaged (the model itself may still run)."""


def read_metadata(model_bytes: bytes) -> ModelMetadata | None:
    """The embedded metadata, or None for a model exported by another tool.

    Raises:
        MetadataError: an archive is appended but cannot be read: a damaged ZIP (bad CRC, broken
            deflate data), JSON that does not parse, or missing or mistyped fields.
    """
    if _archive_start(model_bytes) is None:
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as archive:
            if METADATA_NAME not in archive.namelist():
                return None
            return ModelMetadata.from_json(archive.read(METADATA_NAME).decode("utf-8"))
    except (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetadataError(f"unreadable: {exc.__class__.__name__}") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MetadataError(f"a field is missing or of the wrong type: {exc.__class__.__name__} {exc}") from exc


def _archive_start(model_bytes: bytes) -> int | None:
    """Offset where an appended ZIP begins, or None when there is none."""
    # End-of-central-directory record: signature, then the central directory's size and offset
    # (relative to the archive start) at bytes 12..20. The comment is empty in what we write.
    eocd = model_bytes.rfind(b"PK\x05\x06", max(0, len(model_bytes) - 65_557))
    if eocd < 0 or eocd + 22 > len(model_bytes):
        return None
    cd_size = int.from_bytes(model_bytes[eocd + 12 : eocd + 16], "little")
    cd_offset = int.from_bytes(model_bytes[eocd + 16 : eocd + 20], "little")
    start = eocd - cd_size - cd_offset
    if start < 8 or model_bytes[start : start + 4] != b"PK\x03\x04":
        return None
    return start
