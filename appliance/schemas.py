"""Request and response schemas shared by routes (names say their role: …Create, …Update, …Public)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Task = Literal["classification", "detection"]


def _storable(text: str) -> str:
    if "\x00" in text:  # PostgreSQL's text cannot hold it (SQLite's can): refused on every backend alike
        raise ValueError("must not contain a NUL character (\\u0000)")
    return text


StoredText = Annotated[str, AfterValidator(_storable)]  # a body's text that is stored as it is


class StrictBody(BaseModel):
    """Bodies refuse unknown fields so a typo is an error, not silently ignored, and take JSON types
    as they are: `true` is not 1, `"5"` is not 5 (the UI sends typed JSON); NaN and infinity are refused."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=True, allow_inf_nan=False)


class ProjectCreate(StrictBody):
    name: StoredText = Field(min_length=1, max_length=200)
    task: Task
    description: StoredText = Field(default="", max_length=5000)


class ProjectUpdate(StrictBody):
    name: StoredText | None = Field(default=None, min_length=1, max_length=200)
    description: StoredText | None = Field(default=None, max_length=5000)


class ProjectPublic(BaseModel):
    id: str
    name: str
    task: Task
    description: str
    created_at: datetime
    updated_at: datetime
    image_count: int = 0
    experiment_count: int = 0


# ---------------------------------------------------------------- responses (the `data` of each envelope)
#
# Every JSON route declares one of these as its response model, so /docs documents every field and a
# service dict that grows a key without its field here fails (`extra="forbid"`) instead of vanishing.
# Shapes read from JSON the Ray side stored (epoch records, per-sample results) allow extra keys, so a
# stored record is returned as it is. The few free-form blobs are `dict[str, Any]`, described as such
# and listed in tests/api/test_openapi_schemas.py.

Timestamp = Annotated[datetime, Field(description="ISO 8601, UTC")]
Number = int | float  # a count keeps its integer form, a mean its fraction: the JSON stays as the service made it


class PublicModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StoredRecord(BaseModel):
    """Read from JSON the Ray side stored: the documented fields, plus any others stored with them."""

    model_config = ConfigDict(extra="allow")


class Deleted(PublicModel):
    id: str = Field(description="The id of the deleted record")
    deleted: Literal[True] = True


# -- system

class HealthPublic(PublicModel):
    ray: bool = Field(description="The Ray cluster answers")
    database: bool = Field(description="The database answers `SELECT 1`")
    workspace_writable: bool = Field(description="A file can be written in the workspace")
    version: str = Field(description="The appliance's version")


class HealthDown(BaseModel):
    """503: an error envelope (so monitors see UNAVAILABLE) that still carries every part's state."""

    status: Literal["error"] = "error"
    error: dict[str, str] = Field(description="`{code: UNAVAILABLE, message: 'Down: <parts>'}`")
    data: HealthPublic


class GpuPublic(PublicModel):
    index: int
    name: str
    memory_total: int = Field(description="Bytes")
    memory_used: int = Field(description="Bytes")
    utilization: int = Field(description="Percent, 0-100")
    temperature: int = Field(description="Degrees Celsius")


class GpusPublic(PublicModel):
    gpus: list[GpuPublic]
    reason: str | None = Field(description="Why the list is empty (no NVML, no GPU); null when GPUs were found")


class ProjectUsage(PublicModel):
    project_id: str
    name: str
    bytes: int = Field(description="Bytes of the project's folder (images, runs, exports)")


class WorkspaceUsagePublic(PublicModel):
    path: str = Field(description="The workspace folder on the server")
    projects: list[ProjectUsage]
    free_bytes: int
    total_bytes: int


class JobPublic(PublicModel):
    kind: Literal["import", "training", "evaluation", "export"]
    id: str
    project_id: str
    status: str = Field(description="queued | running | cancelling (an import asked to stop)")
    done: int | None = Field(description="Items (epochs for training) done")
    total: int | None = Field(description="Items (epochs for training) in all")
    created_at: Timestamp


# -- datasets

class ImportWarningPublic(PublicModel):
    file: str = Field(description="Path relative to the dataset root (image or annotation file)")
    reason: str


class ImportJobPublic(PublicModel):
    id: str
    project_id: str
    status: str = Field(description="queued | running | cancelling | completed | failed | cancelled")
    format: str = Field(description="The requested format: auto | folder | csv | coco | yolo | voc")
    source: str = Field(description="The server folder, or `upload:<name>` for a ZIP upload")
    yaml_file: str | None = Field(None, description="YOLO: the root YAML read for class names, when one was named")
    detected: str = Field(description="What the reader found (e.g. `coco (1 annotation file)`); empty until parsed")
    done: int
    total: int
    added: int = Field(description="Images added to the dataset")
    skipped: int = Field(description="Files skipped (each named in warnings)")
    duplicates: int = Field(description="Images already in the project (same content), not added again")
    warnings: list[ImportWarningPublic]
    error: str | None
    created_at: Timestamp
    started_at: datetime | None = Field(None, description="When it started running (null while queued)")
    finished_at: datetime | None
    images_per_s: float | None = Field(
        None, description="Images checked per second since it started (`done` / elapsed); null until one is")
    eta_s: float | None = Field(
        None, description="Seconds left at that rate while queued work remains (running only); else null")


class ClassCount(PublicModel):
    name: str
    images: int = Field(description="Images of this class (detection: images with at least one box of it)")
    boxes: int


class Stats(PublicModel):
    min: Number
    max: Number
    mean: Number
    median: Number


class ClassImbalance(PublicModel):
    ratio: float | None = Field(description="Images of the largest class / of the smallest; null with < 2 classes")
    largest: str | None
    smallest: str | None
    advice: str


class HealthLimits(PublicModel):
    tiny_side: int = Field(description="Pixels: an image whose shorter side is below this is tiny")
    huge_side: int = Field(description="Pixels: an image whose longer side is above this is huge")
    extreme_aspect: float = Field(description="width/height above this (or below its inverse) is extreme")


class DatasetHealth(PublicModel):
    near_duplicate_distance: int = Field(description="Hamming threshold (bits of the 64-bit perceptual hash)")
    near_duplicate_groups: int | None = Field(description="Groups of near-duplicate images; null while `pending`")
    near_duplicate_images: int | None = Field(description="Images in a near-duplicate group; null while `pending`")
    unhashed_images: int = Field(description="Images without a perceptual hash yet (left out of the checks)")
    pending: bool = Field(description="The near-duplicate groups are still being computed (after the images "
                          "changed); ask again shortly")
    class_imbalance: ClassImbalance
    tiny_images: int
    huge_images: int
    extreme_aspect_images: int
    degenerate_boxes: int = Field(description="Boxes under 1 px wide or high (zero/negative area included) or "
                                  "reaching outside the image")
    degenerate_box_images: int
    limits: HealthLimits


class HealthImage(PublicModel):
    id: str
    filename: str
    original_name: str
    label: str | None
    width: int
    height: int
    phash: str | None = Field(description="64-bit perceptual hash, 16 hex digits")
    thumbnail_url: str


class NearDuplicateGroup(PublicModel):
    size: int
    exact: bool = Field(description="Every image of the group has the same perceptual hash")
    distinct_hashes: int
    images: list[HealthImage]


class LeakPair(PublicModel):
    distance: int = Field(description="Bits between the two perceptual hashes (0: same hash)")
    subset: Literal["val", "test"] = Field(description="The held-out subset of `held_out_image`")
    train_image: HealthImage
    held_out_image: HealthImage


class SplitLeaks(PublicModel):
    split_id: str
    distance: int
    count: int = Field(description="Near-duplicate pairs with one image in train and one in val or test")
    by_subset: dict[str, int] = Field(description="`count` per held-out subset (val, test)")
    pairs: list[LeakPair] = Field(description="The first pairs (exact-hash first)")
    truncated: bool = Field(description="More pairs than listed")
    unhashed_images: int


class DatasetSummaryPublic(PublicModel):
    project_id: str
    task: Task
    image_count: int
    classes: list[ClassCount]
    box_count: int
    boxes_per_class: dict[str, int]
    boxes_per_image: Stats | None = Field(description="Detection only; null for classification or no images")
    width: Stats | None = Field(description="Pixels; null without images")
    height: Stats | None = Field(description="Pixels; null without images")
    aspect_ratio: Stats | None = Field(description="width / height; null without images")
    images_without_labels: int
    near_duplicate_groups: int | None = Field(description="Groups of near-duplicate images (see `health`); "
                                              "null while `health.pending`")
    health: DatasetHealth
    warnings: list[str] = Field(description="Dataset health warnings (e.g. strong class imbalance)")
    last_import: ImportJobPublic | None


class BoxPublic(PublicModel):
    label: str
    x1: float = Field(description="Pixels of the stored image")
    y1: float
    x2: float
    y2: float
    difficult: bool = Field(False, description="Pascal VOC's `difficult` flag: evaluation ignores the object")


class ImagePublic(PublicModel):
    id: str
    filename: str = Field(description="The stored (content-addressed) file name")
    original_name: str = Field(description="The name in the imported dataset")
    width: int
    height: int
    size_bytes: int
    label: str | None = Field(description="Classification label; null for detection or unlabeled images")
    subset_hint: str | None = Field(description="train | val | test when the dataset said so")
    sha256: str
    boxes: list[BoxPublic]
    url: str
    thumbnail_url: str


# -- splits

class SubsetValues(PublicModel):
    train: float
    val: float
    test: float


class SubsetCounts(PublicModel):
    train: int
    val: int
    test: int


class SplitCounts(PublicModel):
    total: SubsetCounts
    per_class: dict[str, dict[str, int]] = Field(
        description="subset → class → images holding that class (a detection image counts for each class it contains)")
    classes: list[str] = Field(description="The classes (`(no boxes)` for detection images without boxes)")


class SplitPublic(PublicModel):
    id: str
    project_id: str
    name: str
    ratios: SubsetValues = Field(description="As asked; for a split as imported, the imported subsets' shares")
    seed: int
    stratified: bool
    from_source: bool = Field(description="The split keeps the subsets the dataset was imported with")
    counts: SplitCounts
    warnings: list[str] = Field(description="Human text: a subset asked for that is empty, classes missing from a subset")
    created_at: Timestamp


# -- training

class ModelSpecPublic(PublicModel):
    name: str
    task: Task
    parameters: int
    default_image_size: int = Field(description="Pixels (square)")
    weights_file: str = Field(description="The pretrained-weights file looked up in the weights cache")


class ExperimentParams(StoredRecord):
    """The hyperparameters the experiment was created with (see the create request), plus task and image size."""

    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    scheduler: str
    image_size: int = Field(description="Pixels (square); the model's default when the request left it out")
    augmentations: list[str]
    pretrained: bool
    seed: int
    early_stopping_patience: int | None
    mixed_precision: bool
    class_weighted_loss: bool
    task: Task


class EpochPublic(StoredRecord):
    """One validated epoch, as the run reported it (also the SSE `epoch_end` event)."""

    epoch: int = Field(description="1-based")
    epochs: int = Field(description="The run's total epochs")
    train_loss: float | None
    val_loss: float | None
    val_metric: float | None = Field(description="accuracy (classification) or mAP@.5 (detection)")
    lr: float | None
    seconds: float
    images_per_s: float


class MajorityBaseline(PublicModel):
    """Always answering the most frequent class of the same images (issue #13; null for detection)."""

    class_name: str = Field(description="The most frequent class (ties: first in class order)")
    count: int = Field(description="Images of that class")
    total: int = Field(description="Images compared (experiment: the val subset; evaluation: the evaluated subset)")
    share: float = Field(description="count / total: the accuracy of always answering class_name")


class BaselineFields(PublicModel):
    majority_baseline: MajorityBaseline | None = Field(
        description="Classification: the majority-class baseline of the images the accuracy is measured on; "
        "null for detection or before there are images")
    beats_baseline: bool | None = Field(
        description="Whether the accuracy (experiment: best val accuracy) gets at least one image more right "
        "than majority_baseline; null while there is no accuracy yet or no baseline")
    baseline_warning: str | None = Field(
        description="Human text when beats_baseline is false, e.g. \"No better than always answering 'ants' (48.8%)\"")


class ExperimentPublic(BaselineFields):
    id: str
    project_id: str
    split_id: str
    name: str
    model: str
    params: ExperimentParams
    class_names: list[str]
    status: str = Field(description="created | queued | running | completed | failed | stopped | interrupted")
    best_metric: float | None = Field(description="Best val_metric so far")
    epochs_done: int
    epochs: int | None = Field(description="Total epochs (params.epochs)")
    metric_name: str = Field(description="`accuracy` or `mAP@.5`")
    error: str | None
    created_at: Timestamp
    started_at: datetime | None = Field(description="When the current (or last) attempt started")
    finished_at: datetime | None
    run_seconds: float = Field(description="Seconds trained by the run's ended attempts (resumes add up)")
    duration_s: float | None = Field(description="Seconds trained over all attempts, the running one included; "
                                                 "null if it never ran")


class ExperimentDetailPublic(ExperimentPublic):
    history: list[EpochPublic]


class StopRequested(PublicModel):
    id: str
    stop_requested: Literal[True] = True


# -- evaluation

class ClassificationHeadline(PublicModel):
    accuracy: float
    macro_f1: float
    top5: float | None = Field(description="null with 5 classes or fewer")


class DetectionHeadline(PublicModel):
    map: float | None = Field(description="COCO mAP@[.5:.95]")
    map50: float | None
    map75: float | None


class NoHeadline(PublicModel):
    """`{}` until the evaluation has results."""


class EvaluationPublic(BaselineFields):
    id: str
    project_id: str
    experiment_id: str
    experiment_name: str | None
    model: str | None
    subset: str = Field(description="test | val")
    checkpoint: str = Field(description="best | last")
    status: str = Field(description="queued | running | completed | failed")
    done: int
    total: int
    error: str | None
    created_at: Timestamp
    finished_at: datetime | None
    headline: ClassificationHeadline | DetectionHeadline | NoHeadline
    waiting: str | None = Field(None, description="While queued, what Ray's scheduler says its task waits for: "
                                "\"Waiting for a GPU share\" (every GPU share is taken, e.g. by a training run) or "
                                "\"Waiting for a free CPU\"; null otherwise")


class EvaluationDetailPublic(EvaluationPublic):
    metrics: dict[str, Any] = Field(
        description="Free-form by task; `{}` until completed. Classification: accuracy, top5, macro/weighted "
        "P/R/F1, per_class, confusion_matrix. Detection: map, map50, map75, mar100, per_class AP, pr_curves, "
        "confusion_matrix (last index = background)"
    )


class TopScore(PublicModel):
    index: int
    name: str
    score: float


class GroundTruthBoxes(PublicModel):
    boxes: list[list[float]] = Field(description="[x1, y1, x2, y2] in pixels")
    labels: list[int] = Field(description="Class indices")
    difficult: list[bool] | None = Field(None, description="Ground truth only: Pascal VOC's `difficult` flag "
                                         "per box (ignored by the metrics); absent in older results")


class PredictedBoxes(PublicModel):
    boxes: list[list[float]] = Field(description="[x1, y1, x2, y2] in pixels")
    labels: list[int] = Field(description="Class indices")
    scores: list[float]


class _SampleHead(StoredRecord):
    image_id: str
    rank: int = Field(description="0 = worst")
    is_error: bool
    label: str | None = Field(description="The true class (detection: of the first true box)")
    index: int = Field(description="Position in the evaluated subset")
    id: int | str
    original_name: str | None = Field(
        default=None, description="The image's path in the imported dataset (`val/ants/x.jpg`); None once deleted")


class ClassificationSample(_SampleHead):
    true: int
    true_name: str
    pred: int
    pred_name: str
    score: float = Field(description="Score of the predicted class")
    true_score: float = Field(description="Score of the true class")
    correct: bool
    cell: list[int] = Field(description="Confusion-matrix cell [truth, prediction]")
    top: list[TopScore]
    filename: str
    width: int
    height: int
    url: str
    thumbnail_url: str


class DetectionSample(_SampleHead):
    num_gt: int
    num_pred: int
    missed: int
    false_positives: int
    mislabeled: int
    errors: int
    max_score: float
    cells: list[list[int]] = Field(description="Confusion-matrix cells [truth, prediction] the image falls in")
    gt: GroundTruthBoxes
    pred: PredictedBoxes
    filename: str
    width: int
    height: int
    url: str
    thumbnail_url: str


EvalSamplePublic = ClassificationSample | DetectionSample


class _PredictionBase(PublicModel):
    experiment_id: str
    checkpoint: Literal["best", "last"]
    image_id: str | None = Field(description="The dataset image; null for an upload")
    width: int
    height: int
    classes: list[str] = Field(description="The experiment's class names")


class ClassificationPrediction(_PredictionBase):
    probs: list[float] = Field(description="Per class, in `classes` order")
    label: int
    class_name: str


class DetectionPrediction(_PredictionBase):
    boxes: list[list[float]] = Field(description="[x1, y1, x2, y2] in pixels of the image")
    scores: list[float] = Field(description="Scores >= 0.05")
    labels: list[int]
    class_names: list[str]


PredictionPublic = ClassificationPrediction | DetectionPrediction


# -- export

class ExportMetricPublic(PublicModel):
    name: str = Field(description="`accuracy` or `mAP@.5`")
    subset: str
    images: int
    pytorch: float | None
    exported: float | None
    delta: float | None = Field(description="exported - pytorch")
    flagged: bool = Field(description="The exported model is more than 1 point worse")


class ExportPublic(PublicModel):
    id: str
    project_id: str
    experiment_id: str
    experiment_name: str | None
    model: str | None
    format: str = Field(description="onnx | torchscript | tensorrt")
    precision: str = Field(description="fp32 | fp16")
    dynamic_batch: bool
    opset: int | None
    status: str = Field(description="queued | running | completed | failed")
    size_bytes: int | None = Field(description="The model file's size once completed")
    parity: dict[str, Any] | None = Field(description="Free-form: the exported model's outputs against PyTorch's "
                                          "(max differences, tolerance, passed)")
    latency: dict[str, Any] | None = Field(description="Free-form: PyTorch vs exported timings at batch 1 and N")
    metric: ExportMetricPublic | None
    stage: str | None = Field(description="exporting | verifying | done while it runs")
    info: dict[str, Any] = Field(description="Free-form: the whole record the export job wrote")
    error: str | None
    created_at: Timestamp
    finished_at: datetime | None
    download_url: str | None = Field(description="Set once completed")


# -- pretrained weights (issue #13 item 8)

class WeightsFetch(StrictBody):
    models: list[str] | None = Field(
        default=None, max_length=100,
        description="Catalog models whose weights to download, in this order; default: every model. "
                    "Files already in the cache are kept.",
    )


class WeightsModelPublic(PublicModel):
    name: str
    task: Task
    weights_file: str
    available: bool = Field(description="The file is in the weights cache: Pretrained can be ticked")


class WeightsDownloadPublic(PublicModel):
    status: str = Field(description="running | completed | failed")
    models: list[str] = Field(description="The models whose files this download fetches")
    files_done: int
    files_total: int
    current: str | None = Field(description="The file being fetched (the one that failed, when failed)")
    bytes_done: int = Field(description="Bytes of `current` so far")
    bytes_total: int | None = Field(description="Size of `current`, when the server sends it")
    error: str | None = Field(description="Why it failed: unreachable host (offline), HTTP error, bad checksum")
    started_at: Timestamp
    finished_at: datetime | None


class WeightsPublic(PublicModel):
    models: list[WeightsModelPublic]
    source: str = Field(description="The host the files are downloaded from (AISTUDIO_WEIGHTS_URL or torchvision's)")
    download: WeightsDownloadPublic | None = Field(description="The latest download since the appliance started")


# -- deployments (issue #16)


class ReplicasPublic(PublicModel):
    running: int = Field(description="Replicas Serve reports RUNNING")
    target: int = Field(description="Replicas Serve is starting or running")


class EndpointFiguresPublic(PublicModel):
    requests: int = Field(description="Requests answered since the endpoint (re)started, errors included")
    errors: int = Field(description="Answers with a 4xx/5xx status")
    p50_ms: float | None = Field(description="Median latency in the replica over the last 2000 requests")
    p99_ms: float | None = Field(description="99th percentile latency over the last 2000 requests")
    rps: float = Field(description="Requests per second over the last 10 s")


class DeploymentPublic(PublicModel):
    id: str
    project_id: str
    export_id: str
    name: str
    status: Literal["deploying", "running", "failed", "stopped"]
    url: str = Field(description="POST an image here: /models/<name>/predict")
    format: str | None
    model: str | None
    experiment_name: str | None
    task: Task
    min_replicas: int
    max_replicas: int
    gpu_fraction: float
    max_batch_size: int
    batch_wait_ms: float
    auth: Literal["key", "none"]
    replicas: ReplicasPublic
    metrics: EndpointFiguresPublic
    error: str | None
    created_at: Timestamp
    updated_at: Timestamp


class DeploymentCreated(DeploymentPublic):
    api_key: str | None = Field(description="The endpoint's key (auth=key): shown only in this answer, stored hashed")
