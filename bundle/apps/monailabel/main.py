"""The SegOne MONAI Label app: serves this repository's bundle in place under the model name ``segone``.

    monailabel start_server --app bundle/apps/monailabel --studies DIR --host 127.0.0.1 --port 8000

Optional ``--conf KEY VALUE`` settings:

- ``bundle_root``: the bundle (default: this repository);
- ``models_dir``: where fine-tuned weights go (default: ``<app>/model``); inference uses ``models_dir/model.pt``
  when it exists, the shipped ``models/model.pt`` otherwise;
- ``model``: the model file served (default: the shipped ``models/model.pt``; e.g. ``runs/suite/model.pt``, a
  model trained on a suite), its classes those of its prompt table;
- ``num_inference_steps``: DDIM steps (default: inference.json's);
- ``max_anisotropy``, ``min_answer_ml``, ``answer_volume_fraction``: inference.json's input check and "absent" rule
  (the suite model is served with ``max_anisotropy 8`` for thick-slice stacks; docs/suite.md);
- ``thick_slice_ratio``: inference.json's windows planned from each volume's spacing and size (a model trained with
  ``--thick_slice_ratio 3`` is served with ``3``; docs/suite.md);
- ``coordinate_channels``: ``true`` for a model trained with ``--coordinate_channels True`` (the voxels' positions as
  input channels, docs/suite.md), in inference and fine-tuning;
- ``keep_largest``: ``true`` to keep only the largest connected component of every structure, or the structures'
  names, comma-separated (``right ventricle,left ventricle,liver``: those; as chosen per structure on validation by
  ``scripts/experiments/largest_component.py``); default inference.json's (none);
- ``compile``: ``true`` to run the network through ``torch.compile`` (inference.json's ``compile``): the first
  request of each image size or thread count compiles (about half a minute), later ones take about x0.7 of the time;
- ``skip_trainers``: ``true`` to serve inference only;
- ``max_upload_mb``: the largest request body accepted (default 64);
- ``cors_origins``: comma-separated browser origins allowed to call the server (e.g. OHIF on another origin);
  default none: CORS is off;
- ``threads``: the most CPU threads one inference uses (default: every CPU; fewer while the cores are busy, see
  ``bundle.utils.threads``).

On a CPU that other work shares, start the server with ``OMP_WAIT_POLICY=PASSIVE`` in its environment (OpenMP
reads it when torch loads, before the app can set it; docs/benchmarks.md, "Latency on a busy CPU"):

    OMP_WAIT_POLICY=PASSIVE monailabel start_server --app bundle/apps/monailabel --studies DIR --host 127.0.0.1

Requests are checked before MONAI Label acts on them (``security.py``, ``datastore.py``; docs/security.md).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from bundle.apps.monailabel.datastore import SafeLocalDatastore, make_safe
from bundle.apps.monailabel.security import (
    DEFAULT_MAX_UPLOAD_MB,
    RequestError,
    cors_origins,
    install_http_guard,
    validate_image_request,
    validate_train_params,
)
from bundle.apps.monailabel.tasks import SegOneInfer, SegOneTrain
from bundle.utils.config import BUNDLE_ROOT, bundle_metadata
from bundle.utils.memory import keep_freed_memory
from bundle.utils.threads import apply_thread_env

logger = logging.getLogger(__name__)


MODEL_NAME = "segone"


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _largest_choice(value: Any) -> bool | list[str]:
    # inference.json's keep_largest: a switch, or the structures' names, comma-separated
    text = str(value).strip()
    if text.lower() in ("", "0", "false", "no", "off"):
        return False
    if _truthy(text):
        return True
    return [name.strip() for name in text.split(",") if name.strip()]


# the app's --conf settings that are inference.json keys, with the type each is read as
INFER_CONF_KINDS = (
    ("num_inference_steps", int),
    ("max_anisotropy", float),
    ("thick_slice_ratio", float),
    ("coordinate_channels", _truthy),
    ("min_answer_ml", float),
    ("answer_volume_fraction", float),
    ("keep_largest", _largest_choice),
    ("compile", _truthy),
)


def infer_conf_overrides(conf: dict[str, Any]) -> dict[str, Any]:
    """The inference.json overrides that the app's ``--conf`` settings ask for.

    Args:
        conf: MONAI Label's ``--conf KEY VALUE`` settings (strings).

    Returns:
        Each :data:`INFER_CONF_KINDS` key present in ``conf``, read as its type.
    """
    return {key: kind(conf[key]) for key, kind in INFER_CONF_KINDS if key in conf}


def _hosts(argv: list[str]) -> list[str]:
    hosts = []
    for i, a in enumerate(argv):
        if a in ("--host", "-i") and i + 1 < len(argv):
            hosts.append(argv[i + 1])
        elif a.startswith(("--host=", "-i=")):
            hosts.append(a.split("=", 1)[1])
    return hosts


def check_bind_address(argv: list[str]) -> None:
    """Refuses MONAI Label's default of listening on every interface unless ``--host`` was given explicitly.

    ``monailabel start_server`` binds to 0.0.0.0 when ``--host`` is left out, which would expose unauthenticated
    inference and training to the network. Only the server command is checked (MONAI Label also runs the app in
    subprocesses for training, with other arguments). ``--host X``, ``--host=X`` and ``-i X`` are understood.

    Args:
        argv: the process's command line (``sys.argv``).

    Raises:
        SystemExit: for ``start_server`` without ``--host``.
    """
    if "start_server" not in argv:
        return
    hosts = _hosts(argv)
    if not hosts:
        raise SystemExit(
            "SegOne's MONAI Label app listens on loopback unless told otherwise: add --host 127.0.0.1 (or a public "
            "address together with MONAI Label's authentication, see docs/security.md)."
        )
    if hosts[-1] not in ("127.0.0.1", "localhost", "::1") and not settings.MONAI_LABEL_AUTH_ENABLE:
        logger.warning(
            "serving on %s without authentication: anyone who can reach this port can run inference and training "
            "(set MONAI_LABEL_AUTH_ENABLE and a Keycloak realm, and TLS, see docs/security.md)",
            hosts[-1],
        )


class SegOneApp(MONAILabelApp):
    """The SegOne MONAI Label app: the bundle's infer and fine-tuning tasks behind checked requests.

    Args:
        app_dir: this folder.
        studies: a studies folder or a DICOMweb URL.
        conf: the ``--conf`` settings (see the module docstring).

    Raises:
        SystemExit: for ``start_server`` without ``--host``.
        ValueError: for an invalid ``max_upload_mb``, ``cors_origins`` or ``threads`` setting.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        check_bind_address(sys.argv)
        max_upload_mb = float(conf.get("max_upload_mb", DEFAULT_MAX_UPLOAD_MB))
        if not max_upload_mb > 0:
            raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}")
        origins = cors_origins(conf.get("cors_origins"))
        self.threads = int(conf["threads"]) if conf.get("threads") else None
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        # torch is loaded by now: the OpenMP defaults reach only MONAI Label's subprocesses (training)
        apply_thread_env()
        keep_freed_memory()
        # MONAI Label looks up dcmqi's itkimage2segimage (DICOM SEG for DICOMweb studies) on PATH and downloads it
        # when absent; the environment's own copy (the dcmqi wheel) is next to this interpreter
        # a DICOMweb PACS is searched for MR series: MONAI Label's default filter is {"Modality": "CT"}, which
        # start_server also exports to the environment, so only that default value is replaced
        if settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER == {"Modality": "CT"}:
            settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER = {"Modality": "MR"}
        env_bin = os.path.dirname(sys.executable)
        if env_bin not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = env_bin + os.pathsep + os.environ.get("PATH", "")
        self.bundle_root = Path(conf.get("bundle_root", BUNDLE_ROOT)).resolve()
        self.models_dir = Path(conf.get("models_dir", Path(app_dir) / "model")).resolve()
        model = conf.get("model")
        self.shipped_model = (self.bundle_root / model).resolve() if model else self.bundle_root / "models" / "model.pt"
        if model and not self.shipped_model.is_file():
            raise FileNotFoundError(f"--conf model {model}: {self.shipped_model} is not a file")
        self.finetuned_model = self.models_dir / "model.pt"
        meta = bundle_metadata(self.bundle_root)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SegOne",
            description=meta.get("description", "SegOne"),
            version=meta.get("version", "0"),
        )
        # in the server (not in MONAI Label's training subprocess): checks in front of MONAI Label's routes
        install_http_guard(int(max_upload_mb * 2**20), origins, lambda: list(self._trainers))

    def init_datastore(self) -> Datastore:
        """The studies: a folder (ids, tags and uploads checked) or a DICOMweb PACS (ids and tags checked).

        Returns:
            The datastore.
        """
        if self.studies.startswith(("http://", "https://")):
            self.studies = self.studies.rstrip("/").strip()
            return make_safe(self.init_remote_datastore())
        return SafeLocalDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """Runs inference on a study of the datastore or an uploaded image; a client path is refused.

        Args:
            request: MONAI Label's infer request (``model``, ``image``, the parameters).
            datastore: the datastore (default the app's).

        Returns:
            MONAI Label's result (``label``, ``params``).

        Raises:
            RequestError: 404 for an unknown model or study, 400 for an image given as a path or an invalid id.
        """
        if request.get("model") not in self._infers:
            raise RequestError(f"unknown model {request.get('model')!r} (models: {sorted(self._infers)})", 404)
        store = datastore or self.datastore()
        sessions = self.sessions()
        validate_image_request(
            request.get("image"), lambda i: i in store.list_images(), sessions.store_path if sessions else None
        )
        return super().infer(request, datastore)

    def train(self, request: dict[str, Any]) -> dict[str, Any]:
        """Runs fine-tuning (in MONAI Label's training subprocess) after checking the options again.

        Args:
            request: the training request (``model`` and the options of
                :data:`~bundle.apps.monailabel.security.TRAIN_PARAMS`).

        Returns:
            MONAI Label's training result.

        Raises:
            RequestError: for an unknown model, or an option of the wrong type, out of range or a config expression.
        """
        # what MONAI Label itself adds to the checked request on its way to this subprocess
        options = {k: v for k, v in request.items() if k not in ("bundle_path", "local_rank")}
        validate_train_params(options, list(self._trainers))
        return super().train(request)

    def _infer_overrides(self) -> dict[str, Any]:
        overrides = infer_conf_overrides(self.conf)
        if self.conf.get("model"):
            overrides["ckpt_path"] = str(self.shipped_model)  # its prompt table names the served classes
        return overrides

    def _current_weights(self) -> str:
        return str(self.finetuned_model if self.finetuned_model.is_file() else self.shipped_model)

    def init_infers(self) -> dict[str, InferTask]:
        """The ``segone`` infer task.

        Returns:
            ``{"segone": SegOneInfer}``.
        """
        return {
            MODEL_NAME: SegOneInfer(
                self.bundle_root,
                [self.shipped_model, self.finetuned_model],
                overrides=self._infer_overrides(),
                threads=self.threads,
            )
        }

    def init_trainers(self) -> dict[str, TrainTask]:
        """The ``segone`` fine-tuning task, unless ``skip_trainers`` is set.

        Returns:
            ``{"segone": SegOneTrain}`` or ``{}``.
        """
        if _truthy(self.conf.get("skip_trainers", "false")):
            return {}
        os.makedirs(self.models_dir, exist_ok=True)
        # the network's inputs must be the served model's: its positions as channels or not
        shape = {k: v for k, v in infer_conf_overrides(self.conf).items() if k == "coordinate_channels"}
        return {MODEL_NAME: SegOneTrain(self.bundle_root, self._current_weights, self.models_dir, overrides=shape)}

    def init_strategies(self) -> dict[str, Strategy]:
        """MONAI Label's ``random`` and ``first`` active-learning strategies.

        Returns:
            The strategies by name.
        """
        return {"random": Random(), "first": First()}
