"""The SegOne MONAI Label app: serves this repository's bundle in place under the model name ``segone``.

    monailabel start_server --app bundle/apps/monailabel --studies DIR --host 127.0.0.1 --port 8000

Optional ``--conf KEY VALUE`` settings:

- ``bundle_root``: the bundle (default: this repository);
- ``models_dir``: where fine-tuned weights go (default: ``<app>/model``); inference uses ``models_dir/model.pt``
  when it exists, the shipped ``models/model.pt`` otherwise;
- ``num_inference_steps``: DDIM steps (default: inference.json's);
- ``skip_trainers``: ``true`` to serve inference only.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from bundle.apps.monailabel.tasks import SegOneInfer, SegOneTrain
from bundle.utils.config import BUNDLE_ROOT, bundle_metadata

logger = logging.getLogger(__name__)


MODEL_NAME = "segone"


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def check_bind_address(argv: list[str]) -> None:
    """Refuses MONAI Label's default of listening on every interface unless ``--host`` was given explicitly.

    ``monailabel start_server`` binds to 0.0.0.0 when ``--host`` is left out, which would expose unauthenticated
    inference and training to the network. Only the server command is checked (MONAI Label also runs the app in
    subprocesses for training, with other arguments).
    """
    if "start_server" not in argv:
        return
    hosts = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--host", "-i")]
    if not hosts:
        raise SystemExit(
            "SegOne's MONAI Label app listens on loopback unless told otherwise: add --host 127.0.0.1 (or a public "
            "address together with MONAI Label's authentication, see docs/monailabel.md)."
        )
    from monailabel.config import settings

    if hosts[-1] not in ("127.0.0.1", "localhost", "::1") and not settings.MONAI_LABEL_AUTH_ENABLE:
        logger.warning(
            "serving on %s without authentication: anyone who can reach this port can run inference and training "
            "(set MONAI_LABEL_AUTH_ENABLE and a Keycloak realm, see docs/monailabel.md)",
            hosts[-1],
        )


class SegOneApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        check_bind_address(sys.argv)
        # MONAI Label looks up dcmqi's itkimage2segimage (DICOM SEG for DICOMweb studies) on PATH and downloads it
        # when absent; the environment's own copy (the dcmqi wheel) is next to this interpreter
        # a DICOMweb PACS is searched for MR series: MONAI Label's default filter is {"Modality": "CT"}, which
        # start_server also exports to the environment, so only that default value is replaced
        from monailabel.config import settings

        if settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER == {"Modality": "CT"}:
            settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER = {"Modality": "MR"}
        env_bin = os.path.dirname(sys.executable)
        if env_bin not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = env_bin + os.pathsep + os.environ.get("PATH", "")
        self.bundle_root = Path(conf.get("bundle_root", BUNDLE_ROOT)).resolve()
        self.models_dir = Path(conf.get("models_dir", Path(app_dir) / "model")).resolve()
        self.shipped_model = self.bundle_root / "models" / "model.pt"
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

    def _infer_overrides(self) -> dict[str, Any]:
        overrides: dict[str, Any] = {}
        if "num_inference_steps" in self.conf:
            overrides["num_inference_steps"] = int(self.conf["num_inference_steps"])
        return overrides

    def _current_weights(self) -> str:
        return str(self.finetuned_model if self.finetuned_model.is_file() else self.shipped_model)

    def init_infers(self) -> dict[str, InferTask]:
        return {
            MODEL_NAME: SegOneInfer(
                self.bundle_root, [self.shipped_model, self.finetuned_model], overrides=self._infer_overrides()
            )
        }

    def init_trainers(self) -> dict[str, TrainTask]:
        if _truthy(self.conf.get("skip_trainers", "false")):
            return {}
        os.makedirs(self.models_dir, exist_ok=True)
        return {MODEL_NAME: SegOneTrain(self.bundle_root, self._current_weights, self.models_dir)}

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First()}
