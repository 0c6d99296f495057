"""MONAI Label tasks that serve this repository's bundle in place: inference with text prompts, and fine-tuning.

Both read the bundle's own configs (``configs/inference.json``, ``configs/train.json``) from the repository, so
the server runs exactly the bundle's preprocessing, network, sliding windows and training, with no copy of the
bundle and nothing downloaded.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from fastapi import HTTPException
from monai.inferers import Inferer
from monai.transforms import AsDiscreted, KeepLargestConnectedComponentd, MapLabelValued, SqueezeDimd, ToNumpyd
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask, CallBackTypes
from monailabel.tasks.train.bundle import BundleConstants, BundleTrainTask
from monailabel.transform.post import Restored

from bundle.inference import compile_network, prompted_inference
from bundle.text import PromptEmbeddingTable, PromptSelection, UnknownPromptError
from bundle.transforms import DropSmallAnswersd, answer_thresholds_ml, largest_component_labels
from bundle.utils.checkpoint import load_prompt_table, load_weights, model_structure_volumes
from bundle.utils.config import load_bundle_config
from bundle.utils.threads import set_inference_threads

__all__ = ["SegOneInfer", "SegOneTrain"]

logger = logging.getLogger(__name__)


class SegOneInfer(BasicInferTask):
    """Segmentation by text prompt with the bundle's inference pipeline.

    Request parameters beyond MONAI Label's own: ``prompts`` (a list of texts, or one comma-separated string;
    default every class of ``channel_def``). Prompts naming a class keep its label value; others get the next
    values and need a text encoder (``text_encoder`` in inference.json) to be embedded. The result's label values
    and names are in the result JSON under ``prompt_labels``.

    Args:
        bundle_root: the repository (the bundle) root.
        model_paths: checkpoint files, in increasing priority: the last one that exists is used (the shipped model,
            then fine-tuned weights written by :class:`SegOneTrain`); a changed file is reloaded on the next request.
        overrides: inference.json overrides (e.g. ``num_inference_steps``).
        description: the model's description in ``/info/``.
        threads: the most intra-op threads a request uses on the CPU (default every CPU of the process); fewer
            while other processes keep the cores busy (:func:`bundle.utils.threads.set_inference_threads`).
    """

    def __init__(
        self,
        bundle_root: str | os.PathLike,
        model_paths: Sequence[str | os.PathLike],
        overrides: dict[str, Any] | None = None,
        description: str = "SegOne: text-prompted segmentation by mask diffusion",
        threads: int | None = None,
    ) -> None:
        self.bundle_root = Path(bundle_root)
        self.threads = threads
        self.parser = load_bundle_config("inference.json", bundle_root=self.bundle_root, overrides=overrides)
        # the served model's classes: channel_def, or those its prompt table names (a model trained on other data)
        self.class_names: dict[int, str] = self.parser.get_parsed_content("model_class_names")
        labels = {name: int(value) for value, name in self.class_names.items()}
        network = self.parser.get_parsed_content("network_def", instantiate=True)
        self.preprocessing = self.parser.get_parsed_content("preprocessing", instantiate=True)
        self.invert = self.parser.get_parsed_content("postprocessing", instantiate=True).transforms[0]
        self._inferer: Inferer = self.parser.get_parsed_content("inferer", instantiate=True)
        self._text_encoder = self.parser.get_parsed_content("text_encoder", instantiate=True)
        self._table_lock = threading.Lock()
        self._table_key: tuple | None = None
        self._cached_table: PromptEmbeddingTable | None = None
        self._cached_volumes: dict[str, float] = {}
        super().__init__(
            path=[str(p) for p in model_paths],
            network=network,
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=3,
            description=description,
            model_state_dict="model",
            load_strict=True,
            roi_size=self.parser.get("roi_size"),
            config={"prompts": ""},
        )

    def _table(self) -> PromptEmbeddingTable:
        """The served checkpoint's prompt table, read again only when the file changes (fine-tuning)."""
        return self._model_info()[0]

    def _model_info(self) -> tuple[PromptEmbeddingTable, dict[str, float]]:
        """The served checkpoint's prompt table and structure volumes (the absent rule's scale), read again only
        when the file changes (fine-tuning), never per request."""
        path = self.get_path()
        key = (path, os.stat(path).st_mtime)
        with self._table_lock:
            if self._table_key != key:
                table = load_prompt_table(path, self._text_encoder)
                self._cached_table, self._cached_volumes = table, model_structure_volumes(path)
                self._table_key = key
            return self._cached_table, self._cached_volumes

    def _selection(self, data: dict[str, Any]) -> PromptSelection:
        return PromptSelection(data.get("prompts") or None, self.class_names, self._table)

    def __call__(self, request, callbacks=None):
        # a request naming prompts the model cannot embed is the client's error: answer 422 with the known prompts
        # (MONAI Label turns any other exception into a bare "Internal Server Error")
        try:
            selection = self._selection({**self._config, **request})
        except (UnknownPromptError, ValueError) as e:
            raise HTTPException(status_code=422, detail=str(e)) from e
        # hand the selection to run_inferer and the post transforms through MONAI Label's pre-transform callback
        callbacks = dict(callbacks or {})
        user_callback = callbacks.get(CallBackTypes.PRE_TRANSFORMS)

        def with_selection(data: dict[str, Any]) -> dict[str, Any]:
            data = user_callback(data) if user_callback else data
            data["prompt_selection"] = selection
            return data

        callbacks[CallBackTypes.PRE_TRANSFORMS] = with_selection
        return super().__call__(request, callbacks)

    def pre_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        """inference.json's preprocessing (loading, input checks, orientation, normalisation).

        Args:
            data: the request's data (unused).

        Returns:
            The transforms.
        """
        return list(self.preprocessing.transforms)

    def run_pre_transforms(self, data: dict[str, Any], transforms: Sequence[Callable]) -> dict[str, Any]:
        """Runs the preprocessing; an image that cannot be read or fails the input checks is the client's error.

        Args:
            data: the request's data.
            transforms: the preprocessing.

        Returns:
            The preprocessed data.

        Raises:
            HTTPException: 422 naming the problem, instead of MONAI Label's bare 500.
        """
        try:
            return super().run_pre_transforms(data, transforms)
        except Exception as e:
            logger.info("infer request refused: the image could not be read or prepared: %s", e)
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            image = data.get("image")
            if isinstance(image, str) and image:  # name the study, not the server's file
                reason = reason.replace(image, os.path.basename(image))
            raise HTTPException(
                status_code=422, detail=f"the image could not be read or prepared for inference: {reason[:500]}"
            ) from e

    def _get_network(self, device: str, data: dict[str, Any] | None) -> torch.nn.Module:
        """The network with the served weights, read with ``weights_only=True`` and strictly; cached until the file
        changes (MONAI Label's own loader calls ``torch.load`` without ``weights_only``).

        Args:
            device: where the network runs.
            data: the request's data (unused: a client cannot choose the model file).

        Returns:
            The network in eval mode.

        Raises:
            CheckpointError: naming the file when it is missing, unreadable or does not fit the network.
        """
        path = self.get_path()
        logger.info(f"Infer model path: {path}")
        mtime = os.stat(path).st_mtime
        cached = self._networks.get(device)
        if cached and cached[1] == mtime:
            return cached[0]
        network = load_weights(copy.deepcopy(self.network), path, map_location="cpu").to(torch.device(device))
        network = compile_network(network.eval(), bool(self.parser["compile"]))
        self._networks[device] = (network, mtime)
        return network

    def inferer(self, data: dict[str, Any] | None = None) -> Inferer:
        """The bundle's sliding-window inferer.

        Args:
            data: the request's data (unused: one inferer serves every request).

        Returns:
            inference.json's ``inferer``.
        """
        return self._inferer

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cpu") -> dict[str, Any]:
        """Class probabilities of the request's image for its prompts (:func:`bundle.inference.prompted_inference`).

        Args:
            data: the preprocessed request, with ``prompt_selection`` set in :meth:`__call__`.
            convert_to_batch: unused (the image always gets a batch axis).
            device: where the network runs.

        Returns:
            ``data`` with ``pred`` ``[1 + K, *S]``.
        """
        selection: PromptSelection = data["prompt_selection"]  # set once per request in __call__
        network = self._get_network(device, data)
        image = data[self.input_key]
        image = (image if torch.is_tensor(image) else torch.as_tensor(image))[None].to(torch.device(device))
        if image.device.type == "cpu":  # in the thread that runs it: fewer threads while the cores are busy
            set_inference_threads(self.threads)
        pred = prompted_inference(self._inferer, network, image, selection.embeddings)
        data[self.output_label_key] = pred[0]
        return data

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        """Inverse of the preprocessing, argmax, the "absent" rule, the prompts' label values, and the input geometry.

        Args:
            data: the request's data, with its ``prompt_selection``.

        Returns:
            The transforms that turn ``pred`` into a label map in the input's geometry.
        """
        selection: PromptSelection = (data or {}).get("prompt_selection") or PromptSelection(None, self.class_names)
        largest_labels = largest_component_labels(
            selection.names, self.parser.get_parsed_content("keep_largest"), self.class_names.values()
        )
        largest = [
            KeepLargestConnectedComponentd(keys="pred", applied_labels=largest_labels, independent=True, connectivity=3)
        ]
        return [
            self.invert,
            AsDiscreted(keys="pred", argmax=True),
            DropSmallAnswersd(
                keys="pred",
                min_volume_ml=answer_thresholds_ml(
                    selection.names,
                    float(self.parser.get_parsed_content("min_answer_ml")),
                    float(self.parser.get_parsed_content("answer_volume_fraction")),
                    self._model_info()[1],  # the served file's: fine-tuned weights record theirs
                ),
            ),
            *(largest if largest_labels else []),
            MapLabelValued(
                keys="pred",
                orig_labels=list(range(len(selection.values) + 1)),
                target_labels=[0] + list(selection.values),
            ),
            SqueezeDimd(keys="pred", dim=0),
            ToNumpyd(keys="pred"),
            Restored(keys="pred", ref_image="image", has_channel=False),
        ]

    def writer(self, data: dict[str, Any], extension=None, dtype=None):
        """MONAI Label's writer, with the prompts' label values and names added to the result JSON.

        Args:
            data: the post-processed request.
            extension: the result file's extension.
            dtype: the result's data type.

        Returns:
            ``(result file, result JSON)``; the JSON has ``prompt_labels``.
        """
        selection: PromptSelection = data.pop("prompt_selection")
        result_file, result_json = super().writer(data, extension=extension, dtype=dtype)
        result_json["prompt_labels"] = selection.label_map
        return result_file, result_json


class SegOneTrain(BundleTrainTask):
    """Fine-tunes the bundle's model on the annotated studies through ``configs/train.json``.

    MONAI Label passes the labelled image/label pairs (``train#dataset#data``, ``validate#dataset#data``) and the
    epochs; the starting weights are train.json's ``finetune`` / ``finetune_model_path`` (the served model, unless
    the request says ``pretrained: false``), loaded as a command-line fine-tuning run loads them. It runs ``run``
    without ``initialize``/``finalize``, and train.json needs neither. The new weights go to
    ``output_dir/model.pt`` (with the prompt table), where :class:`SegOneInfer` picks them up on its next request.

    Args:
        bundle_root: the repository (the bundle) root.
        start_weights: the checkpoint fine-tuning starts from (the shipped model, or the last fine-tuned one).
        output_dir: where the training run writes (model.pt, last.pt, report).
        overrides: further train.json overrides.
    """

    def __init__(
        self,
        bundle_root: str | os.PathLike,
        start_weights: Callable[[], str],
        output_dir: str | os.PathLike,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.start_weights = start_weights
        self._pretrained = True  # each request's "pretrained" (MONAI Label's default: true), see _load_checkpoint
        self.output_dir = Path(output_dir)
        self.extra_overrides = dict(overrides or {})
        # train.json uses MONAI Label's default bundle keys (train#dataset#data, train#trainer#max_epochs, ...)
        super().__init__(str(bundle_root), conf={}, const=BundleConstants(), model_dict_key="model", load_strict=True)

    def _load_checkpoint(self, model_pytorch, pretrained, train_handlers) -> None:
        # no CheckpointLoader handler: train.json's own fine-tuning switch loads the starting weights (with its
        # checks and errors naming the file), set in _update_overrides, which runs after this for the same request
        self._pretrained = bool(pretrained)

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        overrides.update(
            {
                "output_dir": str(self.output_dir),
                "resume": False,  # a new fine-tuning run each time, from the served weights (finetune below)
                "val_interval": 1,
                "max_epochs": overrides["train#trainer#max_epochs"],  # the LR schedule's length too
                # the served weights (shipped or last fine-tuned), not bundle_root/models/<name>
                "finetune": self._pretrained,
                "finetune_model_path": self.start_weights(),
                **self.extra_overrides,
            }
        )
        if not overrides.get("validate#dataset#data"):
            # no held-out pairs (val_split 0, or too few labelled studies): validate on the training pairs, so the
            # best-model selection still has a metric
            overrides["validate#dataset#data"] = overrides["train#dataset#data"]
        return overrides
