"""Enums and wire keys defined once for the whole project."""

from __future__ import annotations

from enum import StrEnum


class SplitName(StrEnum):
    """Dataset splits of a manifest (Medical Segmentation Decathlon convention)."""

    TRAINING = "training"
    VALIDATION = "validation"
    TEST = "test"


class ImageFormat(StrEnum):
    """How a scan is stored on disk; picks the reader (nibabel, pydicom or Pillow)."""

    NIFTI = "nifti"  # .nii / .nii.gz
    DICOM = "dicom"  # a folder holding one DICOM series (or a single .dcm file)
    PIL = "pil"  # .png / .jpg / .jpeg / .tif / .tiff / .gif / .bmp


class ValidationCheck(StrEnum):
    """Names of the checks ``fedseg data validate`` runs; each problem names one."""

    MANIFEST = "manifest"  # the manifest itself does not load
    SPLIT = "split"  # a declared split is empty
    PATH = "path"  # a path escapes the manifest folder (or data_root)
    EXISTS = "exists"
    READABLE = "readable"
    DIMS = "dims"  # spatial dimensions do not suit the task
    CHANNELS = "channels"
    SHAPE = "shape"  # image and label spatial shapes differ
    GEOMETRY = "geometry"  # image and label affines differ
    LABELS = "labels"  # undeclared label values
    DUPLICATE = "duplicate"  # one file listed twice (leakage between splits)
    FOREGROUND = "foreground"  # a warning: implausible foreground share (inverted mask?)


class BundleKind(StrEnum):
    """What the tensors of a weights bundle are: full weights or a difference to the global model."""

    FULL = "full"
    DIFF = "diff"


class NormKind(StrEnum):
    """Normalisation layer of the U-Net."""

    BATCH = "batch"
    INSTANCE = "instance"


class OptimizerName(StrEnum):
    """Local optimiser a site uses."""

    SGD = "sgd"  # momentum 0.9
    SGD_NESTEROV = "sgd_nesterov"  # momentum 0.99, Nesterov (nnU-Net's choice)
    ADAM = "adam"
    ADAMW = "adamw"


class InputFit(StrEnum):
    """How a scan is brought to the network's input size (and a prediction back)."""

    PATCH = "patch"  # random patches in training, sliding-window inference at the native grid
    RESIZE = "resize"  # each slice (2D) or volume (3D) resized to the patch size, and back


class Precision(StrEnum):
    """Arithmetic of the forward pass in training and inference."""

    AUTO = "auto"  # bf16 autocast where the CPU or GPU supports it, else fp32
    FP32 = "fp32"
    BF16 = "bf16"


class LrSchedule(StrEnum):
    """Learning-rate schedule across the whole federation (the round says where we are)."""

    CONSTANT = "constant"
    POLY = "poly"  # lr * (1 - progress) ** 0.9, progress over all rounds of the experiment


class PersonalizationMethod(StrEnum):
    """Inside-personalisation method of an experiment."""

    NONE = "none"  # plain FedAvg: the global model only
    IOPFL = "iopfl"
    FEDBN = "fedbn"
    FEDPROX = "fedprox"
    DITTO = "ditto"


# Keys of the safetensors ``__metadata__`` header of a weights bundle.
META_FORMAT = "fedseg_format"
META_FORMAT_VERSION = "1"
META_SPEC_HASH = "spec_hash"
META_ROUND = "round"
META_KIND = "kind"
META_NUM_SAMPLES = "num_samples"
META_CODEC = "codec"
META_CODEC_PARAMS = "codec_params"
META_DTYPE = "wire_dtype"

# HTTP headers shared by the aggregator and the site agent.
HEADER_SHA256 = "X-Content-SHA256"
HEADER_NUM_SAMPLES = "X-Num-Samples"
HEADER_METRICS = "X-Metrics"
# A long poll that asks for the model with its task (``GET /tasks/next?model=1``) gets both in
# one body: the assignment's JSON (``HEADER_TASK_BYTES`` bytes), then the model's bundle
# (sha256 in ``HEADER_SHA256``). Models over ``INLINE_MODEL_MAX_BYTES`` come as plain JSON; the
# site then downloads the model as before.
HEADER_TASK_BYTES = "X-Task-Bytes"
MEDIA_TASK_AND_MODEL = "application/vnd.fedseg.task-and-model"
INLINE_MODEL_MAX_BYTES = 16 * 1024 * 1024

API_PREFIX = "/api/v1"


class RouterGate(StrEnum):
    """How the outside router mixes its experts (``personalization.outside.layers``)."""

    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"  # normalised by its sum


class LogLevel(StrEnum):
    """Log level of the aggregator (``FEDSEG_LOG_LEVEL``) and of ``fedseg site run --log-level``."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class DeviceName(StrEnum):
    """Torch device a site trains and infers on (``FEDSEG_SITE_DEVICE``, ``--device``)."""

    CPU = "cpu"
    CUDA = "cuda"
    AUTO = "auto"  # cuda when torch sees one, else cpu
