"""MediaPipe's hair and selfie segmentation models, made loadable by the Tasks `ImageSegmenter`.

The published .tflite files (google-ai-edge/mediapipe, see SOURCE_*) cannot be used as shipped:
they carry no TFLite metadata, which ImageSegmenter needs for its input normalisation, and the hair
model takes 4 input channels (RGB plus the previous frame's mask) where ImageSegmenter accepts 1
or 3. `prepare_model` rewrites the flatbuffer with the schema modules bundled in the mediapipe wheel
(the wheel's metadata writer would import `_pywrap_metadata_version`, missing from mediapipe 1.2.2,
so the metadata flatbuffer is written here directly):

- hair only: the 4th input channel is dropped from the first convolution (`conv2d/Kernel`
  [8,2,2,4] -> [8,2,2,3]) and from the input tensor. For a still photo MediaPipe feeds zeros
  there (no previous frame), so the 3-channel model computes exactly the same thing.
- both: metadata with the input normalisation (mean 0, std 255: RGB in [0, 1]), the output's
  activation (SOFTMAX over the hair model's (background, hair) logits; NONE for the selfie model,
  which outputs a probability already) and the minimum metadata parser version.

The bytes of the sources and of the prepared models are pinned by sha256: `python -m backend setup`
(setup_assets.ensure_segmentation) refuses anything else.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import LikenessError
from .paths import cache_dirs

SOURCE_REPO = "google-ai-edge/mediapipe"
# The parent of the commit that removed the legacy models from the repository.
SOURCE_COMMIT = "63e679d99ca45b30514a9d84c9351a2d77bb9ba0"

# Enum values of mediapipe/tasks/metadata/image_segmenter_metadata_schema.fbs (Activation).
ACTIVATION_NONE = 0
ACTIVATION_SOFTMAX = 2


@dataclass(frozen=True)
class SegmentationModel:
    key: str                  # "hair" or "person"
    source_name: str          # file name in the source folder
    repo_path: str            # path in SOURCE_REPO at SOURCE_COMMIT
    source_sha256: str        # of the published file
    prepared_name: str        # file name in the cache folder
    prepared_sha256: str      # of prepare_model's output for that source
    activation: int           # ACTIVATION_*
    drop_previous_mask_channel: bool

    def provenance(self) -> str:
        """Where the published file comes from, for messages."""
        return (f"{self.source_name} comes from the {SOURCE_REPO} repository, commit {SOURCE_COMMIT}, "
                f"file {self.repo_path} (https://github.com/{SOURCE_REPO}/blob/{SOURCE_COMMIT}/{self.repo_path}; "
                "Apache License 2.0)")


HAIR = SegmentationModel(
    key="hair",
    source_name="hair_segmentation.tflite",
    repo_path="mediapipe/models/hair_segmentation.tflite",
    source_sha256="d2c940c4fd80edeaf38f5d7387d1b4235ee320ed120080df67c663e749e77633",
    prepared_name="hair_segmentation.rgb-metadata.tflite",
    prepared_sha256="0ae3727349609ed9303c97dcd7a86ffa4ffbcd6b7e1c9f170ddfe6d00bc86fc0",
    activation=ACTIVATION_SOFTMAX,
    drop_previous_mask_channel=True,
)
PERSON = SegmentationModel(
    key="person",
    source_name="selfie_segmentation.tflite",
    repo_path="mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
    source_sha256="8d13b7fae74af625c641226813616a2117bd6bca19eb3b75574621fc08557f27",
    prepared_name="selfie_segmentation.metadata.tflite",
    prepared_sha256="465b1dcf41531d8207de97e503c1925d146ad9285a881cf6c9c99d6c263389c7",
    activation=ACTIVATION_NONE,
    drop_previous_mask_channel=False,
)
MODELS = (HAIR, PERSON)

TFLITE_IDENTIFIER = b"TFL3"
METADATA_IDENTIFIER = b"M001"           # ModelMetadata (metadata_schema.fbs)
SEGMENTER_OPTIONS_IDENTIFIER = b"V001"  # ImageSegmenterOptions (image_segmenter_metadata_schema.fbs)
METADATA_BUFFER_NAME = "TFLITE_METADATA"
SEGMENTER_METADATA_NAME = "SEGMENTER_METADATA"   # the name ImageSegmenter looks up
# Subgraph custom metadata is a schema member of metadata parser 1.5.0
# (mediapipe/tasks/cc/metadata/metadata_version.cc); nothing else here is newer than 1.0.0.
MIN_PARSER_VERSION = "1.5.0"
FIRST_CONV_KERNEL = b"conv2d/Kernel"
BUILTIN_CONV_2D = 3


def prepare_model(raw: bytes, model: SegmentationModel) -> bytes:
    """The task-ready bytes of `model` from its published bytes (deterministic)."""
    import flatbuffers
    from mediapipe.tasks.metadata import schema_py_generated as tfl

    if not tfl.Model.ModelBufferHasIdentifier(raw, 0):
        raise ValueError(f"{model.source_name} is not a TFLite flatbuffer")
    tree = tfl.ModelT.InitFromObj(tfl.Model.GetRootAsModel(raw, 0))
    if len(tree.subgraphs) != 1:
        raise ValueError(f"{model.source_name}: expected one subgraph, found {len(tree.subgraphs)}")
    if any(m.name.decode() == METADATA_BUFFER_NAME for m in tree.metadata or []):
        raise ValueError(f"{model.source_name} already has TFLite metadata")
    if model.drop_previous_mask_channel:
        _drop_last_input_channel(tree)
    _attach_metadata(tree, _metadata_bytes(model))
    builder = flatbuffers.Builder(0)
    builder.Finish(tree.Pack(builder), TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def _drop_last_input_channel(tree) -> None:
    """Remove the last channel of the only input, which only the first CONV_2D reads."""
    graph = tree.subgraphs[0]
    (input_index,) = graph.inputs
    image = graph.tensors[input_index]
    if list(image.shape) != [1, 512, 512, 4]:
        raise ValueError(f"hair model input has shape {list(image.shape)}, expected [1, 512, 512, 4]")
    readers = [op for op in graph.operators if input_index in list(op.inputs)]
    if len(readers) != 1:
        raise ValueError(f"the model input feeds {len(readers)} operators, expected one convolution")
    conv = readers[0]
    code = tree.operatorCodes[conv.opcodeIndex]
    if max(code.builtinCode, code.deprecatedBuiltinCode) != BUILTIN_CONV_2D or list(conv.inputs)[0] != input_index:
        raise ValueError("the model input does not feed a CONV_2D as its data input")
    kernel = graph.tensors[conv.inputs[1]]
    if kernel.name != FIRST_CONV_KERNEL or list(kernel.shape) != [8, 2, 2, 4] or kernel.type != 0:  # 0: FLOAT32
        raise ValueError(f"unexpected first kernel {kernel.name!r} {list(kernel.shape)} type {kernel.type}")
    if sum(t.buffer == kernel.buffer for t in graph.tensors) != 1:
        raise ValueError("the first kernel's buffer is shared with another tensor")

    # TFLite CONV_2D kernels are [out, kh, kw, in], little-endian float32.
    weights = np.frombuffer(bytes(tree.buffers[kernel.buffer].data), dtype="<f4").reshape(8, 2, 2, 4)
    tree.buffers[kernel.buffer].data = np.frombuffer(np.ascontiguousarray(weights[..., :3]).tobytes(), np.uint8)
    kernel.shape = np.array([8, 2, 2, 3], dtype=np.int32)
    image.shape = np.array([1, 512, 512, 3], dtype=np.int32)
    for tensor in (kernel, image):
        if tensor.shapeSignature is not None and len(tensor.shapeSignature):
            tensor.shapeSignature = np.array(list(tensor.shapeSignature[:-1]) + [3], dtype=np.int32)


def _metadata_bytes(model: SegmentationModel) -> bytes:
    """A ModelMetadata flatbuffer like the one the wheel's image_segmenter metadata writer makes."""
    import flatbuffers
    from mediapipe.tasks.metadata import image_segmenter_metadata_schema_py_generated as seg
    from mediapipe.tasks.metadata import metadata_schema_py_generated as md

    options = seg.ImageSegmenterOptionsT()
    options.activation = model.activation
    builder = flatbuffers.Builder(0)
    builder.Finish(options.Pack(builder), SEGMENTER_OPTIONS_IDENTIFIER)
    custom = md.CustomMetadataT()
    custom.name = SEGMENTER_METADATA_NAME
    custom.data = list(bytes(builder.Output()))

    image = md.TensorMetadataT()
    image.name = "image"
    image.description = "RGB image, normalised to [0, 1]."
    image.content = md.ContentT()
    image.content.contentPropertiesType = md.ContentProperties.ImageProperties
    image.content.contentProperties = md.ImagePropertiesT()
    image.content.contentProperties.colorSpace = md.ColorSpaceType.RGB
    normalisation = md.ProcessUnitT()
    normalisation.optionsType = md.ProcessUnitOptions.NormalizationOptions
    normalisation.options = md.NormalizationOptionsT()
    normalisation.options.mean = [0.0]
    normalisation.options.std = [255.0]
    image.processUnits = [normalisation]
    image.stats = md.StatsT()
    image.stats.min = [0.0]
    image.stats.max = [1.0]

    masks = md.TensorMetadataT()
    masks.name = "segmentation_masks"
    masks.description = ("(background, hair) logits" if model.key == "hair" else "person probability")
    masks.content = md.ContentT()
    masks.content.contentPropertiesType = md.ContentProperties.ImageProperties
    masks.content.contentProperties = md.ImagePropertiesT()
    masks.content.contentProperties.colorSpace = md.ColorSpaceType.GRAYSCALE
    masks.content.range = md.ValueRangeT()
    masks.content.range.min = 1
    masks.content.range.max = 2
    masks.stats = md.StatsT()

    subgraph = md.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    subgraph.outputTensorMetadata = [masks]
    subgraph.customMetadata = [custom]

    root = md.ModelMetadataT()
    root.name = f"MediaPipe {model.source_name}"
    root.description = f"{model.repo_path} at {SOURCE_REPO}@{SOURCE_COMMIT}, prepared for ImageSegmenter"
    root.author = "Google / MediaPipe"
    root.license = "Apache License 2.0"
    root.subgraphMetadata = [subgraph]
    root.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(0)
    builder.Finish(root.Pack(builder), METADATA_IDENTIFIER)
    return bytes(builder.Output())


def _attach_metadata(tree, metadata: bytes) -> None:
    """Store `metadata` as a new buffer named TFLITE_METADATA (what MetadataPopulator does)."""
    from mediapipe.tasks.metadata import schema_py_generated as tfl

    buffer = tfl.BufferT()
    buffer.data = np.frombuffer(metadata, dtype=np.uint8)
    tree.buffers = list(tree.buffers or []) + [buffer]
    entry = tfl.MetadataT()
    entry.name = METADATA_BUFFER_NAME
    entry.buffer = len(tree.buffers) - 1
    tree.metadata = list(tree.metadata or []) + [entry]


# ---------------------------------------------------------------------------------------------
# The prepared files at run time


def prepared_candidates(model: SegmentationModel, explicit_dir: str | os.PathLike | None = None) -> list[Path]:
    folders = [Path(explicit_dir)] if explicit_dir else cache_dirs()
    return [folder / model.prepared_name for folder in folders]


def find_prepared(model: SegmentationModel, explicit_dir: str | os.PathLike | None = None) -> Path:
    """The first prepared copy of `model` with the expected sha256 (a stale or damaged copy is
    passed over, so the message below says how to make a good one)."""
    from .setup_assets import sha256_of

    candidates = prepared_candidates(model, explicit_dir)
    for path in candidates:
        if path.is_file() and sha256_of(path) == model.prepared_sha256:
            return path
    raise LikenessError(
        "ASSETS_MISSING",
        f"the prepared MediaPipe {model.key} segmentation model {model.prepared_name} was not found in "
        + ", ".join(str(c.parent) for c in candidates)
        + ". Run `python -m backend setup` (it prepares it from the published model, see the set-up notes).",
    )
