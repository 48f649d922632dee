"""Average several trained models into one flat Keras graph (one model file, one TFLite export).

Models of one recipe trained with different seeds make different mistakes on frames none of them
saw; the mean of their logits is right more often than either (configs/lodo/README.md: +1.8 mIoU on
a held-out drive for two seeds). Each member's layers are copied into one graph under the prefix
``m<i>_``, fed by one input, and a final ``Average`` layer takes the mean of their logits. A flat
graph, not members nested as sub-models, so every converter rewrite that walks the layers (the
static upsampling of the Edge TPU export, the float32 copy of mixed-precision models) sees them all.

    python -m train average runs/camvid_lite/last.keras runs/camvid_lite_seed8/last.keras \\
        -o runs/camvid_lite_pair/last.keras
"""

from __future__ import annotations

from pathlib import Path

import keras

from edgeseg.errors import UsageError
from edgeseg.labels import LabelsError, read_labels_json


class EnsembleError(UsageError, ValueError):
    """Bad input to `average`; the message says how to fix it."""


def average_models(members: list[keras.Model], name: str = "average") -> keras.Model:
    """One functional model whose output is the mean of the members' outputs (same weights, copied).

    Raises:
        EnsembleError: fewer than two members, or members with different input or output shapes.
    """
    if len(members) < 2:
        raise EnsembleError(f"averaging needs at least two models, got {len(members)}; pass two or more .keras files")
    first = members[0]
    for index, member in enumerate(members[1:], start=1):
        if tuple(member.input_shape[1:]) != tuple(first.input_shape[1:]):
            raise EnsembleError(f"model {index + 1} takes input {tuple(member.input_shape[1:])}, model 1 takes"
                                f" {tuple(first.input_shape[1:])}; average models trained at one input size")
        if tuple(member.output_shape[1:]) != tuple(first.output_shape[1:]):
            raise EnsembleError(f"model {index + 1} outputs {tuple(member.output_shape[1:])}, model 1 outputs"
                                f" {tuple(first.output_shape[1:])}; average models with the same classes and"
                                " output size")
    image = keras.Input(shape=first.input_shape[1:], name="image")
    outputs = []
    for index, member in enumerate(members):
        prefix = f"m{index}_"

        def renamed(layer, prefix=prefix):
            return layer.__class__.from_config({**layer.get_config(), "name": prefix + layer.name})

        copy = keras.models.clone_model(member, input_tensors=image, clone_function=renamed)
        copy.set_weights(member.get_weights())
        outputs.append(copy.output)
    mean = keras.layers.Average(name="logits_mean", dtype="float32")(outputs)
    return keras.Model(image, mean, name=name)


def average_files(sources: list[Path], output: Path) -> tuple[Path, keras.Model]:
    """Load the `.keras` models `sources`, average them and save the result to `output` atomically;
    the members' ``labels.json`` (which must agree) goes beside it.

    Raises:
        EnsembleError: a missing or unloadable model, members that do not fit together, labels that
            differ, an output that would overwrite a member.
        OutputError: the output cannot be written (nothing half-written is left).
    """
    from .run import load_saved, save_derived

    sources = [Path(source) for source in sources]
    output = Path(output)
    if output.suffix != ".keras":
        raise EnsembleError(f"output {output} is not a .keras file; name it {output.with_suffix('.keras').name}")
    for source in sources:
        if output.resolve() == source.resolve():
            raise EnsembleError(f"output {output} is one of the models; write the average elsewhere")
    members = []
    for source in sources:
        try:
            members.append(load_saved(source, "member", "pass .keras files saved by `python -m train`"))
        except ValueError as exc:
            raise EnsembleError(str(exc)) from exc
    found = [path for path in (source.parent / "labels.json" for source in sources) if path.is_file()]
    try:
        label_sets = {read_labels_json(path) for path in found}  # as `convert` reads them
    except LabelsError as exc:
        raise EnsembleError(str(exc)) from exc
    if len(label_sets) > 1:
        raise EnsembleError(f"the models' labels differ ({', '.join(map(str, found))}); average models trained on"
                            " the same dataset")
    model = average_models(members, name=output.parent.name or "average")
    save_derived(model, output, found[0] if found else None)
    return output, model
