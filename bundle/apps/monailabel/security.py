"""What a request to the SegOne MONAI Label server may carry, and the HTTP guard that checks it before MONAI Label.

MONAI Label 0.8.5 hands request parameters to the bundle config parser (a string starting with ``$`` is evaluated
as Python), joins ids and tags from the URL into file paths, reads whole uploads of any size, answers client mistakes
with bare 500s and allows any origin with credentials. The app answers all of that here (the threat model:
docs/security.md):

- request parameters are data: each infer and train option has a type and a range, unknown options are refused, and
  no string anywhere in a request may look like a config expression (``$``, ``@``, ``%``): :func:`validate_infer_params`,
  :func:`validate_train_params`, :func:`check_plain_data`;
- image ids and label tags are names, never paths: :func:`validate_id`, :func:`validate_tag`;
- :class:`RequestGuard`, an ASGI middleware installed in front of MONAI Label's routes by :func:`install_http_guard`,
  limits request bodies, checks JSON form fields and the infer/train parameters before MONAI Label sees them, and
  answers with a 4xx whose ``detail`` names the problem;
- CORS is off unless an allow-list of origins is configured.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs

from fastapi import HTTPException

__all__ = [
    "DEFAULT_MAX_UPLOAD_MB",
    "INFER_PARAMS",
    "TRAIN_PARAMS",
    "RequestError",
    "RequestGuard",
    "check_plain_data",
    "cors_origins",
    "install_http_guard",
    "validate_id",
    "validate_image_request",
    "validate_infer_params",
    "validate_tag",
    "validate_train_params",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 64
# an image id (a file name without its extension, or a DICOM series UID) and a label tag: names, never paths
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# what monai.bundle.ConfigParser treats specially at the start of a string: an expression, a reference, a macro
CONFIG_PREFIXES = ("$", "@", "%")
_MAX_DEPTH, _MAX_ITEMS, _MAX_STR = 6, 256, 1000


class RequestError(HTTPException):
    """A client mistake: answered with ``status_code`` (4xx) and a ``detail`` that names the problem.

    Args:
        detail: the message for the client.
        status_code: the HTTP status (default 422).
    """

    def __init__(self, detail: str, status_code: int = 422) -> None:
        super().__init__(status_code, detail)


def validate_id(value: Any, what: str = "image id") -> str:
    """Checks that an image (or label) id is a plain name: letters, digits, ``.``, ``_``, ``-``; no path.

    Args:
        value: the id from the request.
        what: what it is, for the message.

    Returns:
        ``value``.

    Raises:
        RequestError: 400 when it is not a string of that form (e.g. ``../x``, ``/abs/path.nii.gz``).
    """
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise RequestError(
            f"invalid {what} {str(value)[:80]!r}: ids are names of up to 200 letters, digits, '.', '_' and '-' "
            "(not starting with '.'), never paths",
            400,
        )
    return value


def validate_tag(value: Any) -> str:
    """Checks that a label tag (``final``, ``original``, ...) is a plain name.

    Args:
        value: the tag from the request.

    Returns:
        ``value``.

    Raises:
        RequestError: 400 when it is not up to 64 letters, digits, ``_`` and ``-``.
    """
    if not isinstance(value, str) or not _TAG.fullmatch(value):
        raise RequestError(
            f"invalid label tag {str(value)[:80]!r}: tags are names of up to 64 letters, digits, '_' and '-'", 400
        )
    return value


def check_plain_data(value: Any, where: str = "request", depth: int = 0) -> None:
    """Checks that a request value is plain JSON data the bundle config parser would not evaluate.

    Args:
        value: a JSON value (dict, list, string, number, bool, null).
        where: its name, for the message.
        depth: nesting depth (callers leave the default).

    Raises:
        RequestError: 422 for a string starting with ``$``, ``@`` or ``%`` (a config expression, reference or
            macro), or for data nested deeper than 6 levels, with more than 256 items, or strings over 1000 chars.
    """
    if depth > _MAX_DEPTH:
        raise RequestError(f"{where}: nested too deeply")
    if isinstance(value, str):
        if value.lstrip().startswith(CONFIG_PREFIXES):
            raise RequestError(
                f"{where}: {value[:60]!r} starts with {value.lstrip()[0]!r}, which the bundle config parser would "
                "evaluate; request parameters are data, never config expressions"
            )
        if len(value) > _MAX_STR:
            raise RequestError(f"{where}: string longer than {_MAX_STR} characters")
    elif isinstance(value, Mapping):
        if len(value) > _MAX_ITEMS:
            raise RequestError(f"{where}: more than {_MAX_ITEMS} entries")
        for k, v in value.items():
            check_plain_data(str(k), f"{where} key {str(k)[:40]!r}", depth + 1)
            check_plain_data(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, (list, tuple)):
        if len(value) > _MAX_ITEMS:
            raise RequestError(f"{where}: more than {_MAX_ITEMS} items")
        for i, v in enumerate(value):
            check_plain_data(v, f"{where}[{i}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"{where}: not a finite number")
    elif value is not None and not isinstance(value, (bool, int, float)):
        raise RequestError(f"{where}: {type(value).__name__} is not JSON data")


# --- option checkers: each returns the value or raises RequestError naming the option ------------------------------


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise RequestError(f"parameter {name!r}: expected true or false, got {v!r}")
    return v


def _int_range(lo: int, hi: int) -> Callable[[str, Any], int]:
    def check(name: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise RequestError(f"parameter {name!r}: expected an integer from {lo} to {hi}, got {v!r}")
        return v

    return check


def _float_range(lo: float, hi: float) -> Callable[[str, Any], float]:
    def check(name: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise RequestError(f"parameter {name!r}: expected a number from {lo} to {hi}, got {v!r}")
        return v

    return check


def _choice(*allowed: Any, first_of_list: bool = False) -> Callable[[str, Any], Any]:
    def check(name: str, v: Any) -> Any:
        # MONAI Label's clients send some options as the list they were offered; MONAI Label then uses its first item
        chosen = v[0] if first_of_list and isinstance(v, list) and v else v
        if chosen not in allowed:
            raise RequestError(f"parameter {name!r}: expected one of {list(allowed)}, got {v!r}")
        return v

    return check


def _pattern(regex: str, hint: str) -> Callable[[str, Any], str]:
    compiled = re.compile(regex)

    def check(name: str, v: Any) -> str:
        if not isinstance(v, str) or not compiled.fullmatch(v):
            raise RequestError(f"parameter {name!r}: expected {hint}, got {str(v)[:80]!r}")
        return v

    return check


_device = _pattern(r"cpu|cuda(:\d{1,2})?", "'cpu', 'cuda' or 'cuda:N'")


def _prompts(name: str, v: Any) -> Any:
    items = v.split(",") if isinstance(v, str) else v
    if not isinstance(items, list) or len(items) > 32 or not all(isinstance(p, str) and len(p) <= 200 for p in items):
        raise RequestError(
            f"parameter {name!r}: expected a list of up to 32 texts (or one comma-separated string) of up to 200 "
            f"characters each, got {str(v)[:80]!r}"
        )
    return v


def _label_info(name: str, v: Any) -> Any:
    if not isinstance(v, list) or len(v) > 64 or not all(isinstance(s, dict) for s in v):
        raise RequestError(f"parameter {name!r}: expected a list of up to 64 segment descriptions (objects)")
    return v


def _model_file(name: str, v: Any) -> Any:
    names = v if isinstance(v, list) else [v]
    if not names or not all(
        isinstance(n, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.pt", n) for n in names
    ):
        raise RequestError(f"parameter {name!r}: expected a model file name such as 'model.pt', got {str(v)[:80]!r}")
    return v


def _empty(name: str, v: Any) -> Any:
    if v not in (None, "", []):
        raise RequestError(f"parameter {name!r}: experiment tracking is not available in this app; leave it empty")
    return v


def _short_text(name: str, v: Any) -> str:
    if not isinstance(v, str) or len(v) > 100:
        raise RequestError(f"parameter {name!r}: expected a text of up to 100 characters")
    return v


# the request parameters of POST /infer/segone (the ``params`` form field) and their checks
INFER_PARAMS: dict[str, Callable[[str, Any], Any]] = {
    "prompts": _prompts,
    "label_info": _label_info,  # OHIF's segment descriptions for output=dicom_seg
    "device": _device,
    "result_extension": _choice(".nii.gz", ".nii", ".nrrd"),
    "result_dtype": _choice("uint8", "uint16", "int16", "int32", "float32"),
    "result_compress": _bool,
    "client_id": _short_text,
}
# the options of POST /train/segone (the JSON body), as MONAI Label's clients send them
TRAIN_PARAMS: dict[str, Callable[[str, Any], Any]] = {
    "max_epochs": _int_range(1, 1000),
    "val_split": _float_range(0.0, 0.9),
    "device": _device,
    "pretrained": _bool,
    "multi_gpu": _bool,
    "gpus": _pattern(r"all|\d{1,2}(,\d{1,2}){0,15}", "'all' or comma-separated GPU indices"),
    "tracking": _choice("None", "none", "", None, first_of_list=True),
    "tracking_uri": _empty,
    "tracking_experiment_name": _empty,
    "tracking_run_name": _empty,
    "run_id": _choice("", "run"),
    "model_filename": _model_file,  # MONAI Label's option; fine-tuning always starts from the served weights
}
# keys MONAI Label's endpoints set themselves, which a client must not override through the parameters
_SERVER_KEYS = ("image", "label", "session", "model", "bundle_path", "save_label", "label_tag", "model_filename")


def _validate(params: Any, schema: Mapping[str, Callable[[str, Any], Any]], what: str, reserved: Iterable[str]) -> dict:
    if not isinstance(params, Mapping):
        raise RequestError(f"{what} parameters must be a JSON object, got {type(params).__name__}", 400)
    check_plain_data(dict(params), f"{what} parameters")
    for name, value in params.items():
        if name in reserved:
            raise RequestError(f"{what} parameter {name!r} is set by the server, not by a request")
        if name not in schema:
            raise RequestError(f"unknown {what} parameter {name!r} (known: {', '.join(sorted(schema))})")
        schema[name](name, value)
    return dict(params)


def validate_infer_params(params: Any) -> dict[str, Any]:
    """Checks the parameters of an infer request (the ``params`` form field) against :data:`INFER_PARAMS`.

    Args:
        params: the decoded JSON.

    Returns:
        ``params`` as a dict.

    Raises:
        RequestError: 400 when it is not a JSON object; 422 naming the parameter when one is unknown, set by the
            server (``image``, ``label``, ``session``, ``save_label``, ...), of the wrong type or out of range, or
            when any string in it looks like a config expression.
    """
    return _validate(params, INFER_PARAMS, "infer", _SERVER_KEYS)


def validate_train_params(params: Any, models: Iterable[str] = ()) -> dict[str, Any]:
    """Checks the options of a training request against :data:`TRAIN_PARAMS`.

    Args:
        params: the decoded JSON body. For the all-models endpoint (``POST /train/``) an entry named after a model
            may hold that model's options.
        models: the trainers' names.

    Returns:
        ``params`` as a dict, without ``model``.

    Raises:
        RequestError: 404 for an unknown ``model``; 400 when it is not a JSON object; 422 naming the option when
            one is unknown, of the wrong type or out of range, or when any string in it looks like a config
            expression (which the bundle config parser would evaluate: MONAI Label passes these options to it as
            config overrides).
    """
    models = set(models)
    if isinstance(params, Mapping) and "model" in params:
        if params["model"] not in models:
            raise RequestError(f"unknown model {params['model']!r} (trainers: {sorted(models)})", 404)
        params = {k: v for k, v in params.items() if k != "model"}
    if not isinstance(params, Mapping):
        return _validate(params, TRAIN_PARAMS, "train", _SERVER_KEYS[:-1])  # raises
    for name in [k for k in params if k in models]:
        _validate(params[name], TRAIN_PARAMS, "train", _SERVER_KEYS[:-1])
    _validate({k: v for k, v in params.items() if k not in models}, TRAIN_PARAMS, "train", _SERVER_KEYS[:-1])
    return dict(params)


def validate_image_request(image: Any, known: Callable[[str], bool], session_root: str | None = None) -> None:
    """Checks the image of an infer request: a study id of the datastore, or a file the server wrote itself.

    MONAI Label's infer endpoint puts an uploaded image in a temporary file and passes its path, and a request with a
    ``session_id`` the session's image under MONAI Label's sessions folder; anything else must be an id.
    An absolute or relative path from a client is refused before the file system is looked at, so the
    answer is the same for existing and missing files.

    Args:
        image: ``request["image"]``.
        known: tells whether an id is in the datastore.
        session_root: MONAI Label's sessions folder when sessions are on.

    Raises:
        RequestError: 400 for a path or an invalid id, 404 for an id that is not in the studies.
    """
    if isinstance(image, str) and os.path.isabs(image):
        real = os.path.realpath(image)
        if os.path.dirname(real) == os.path.realpath(tempfile.gettempdir()) and re.fullmatch(
            r"tmp[A-Za-z0-9_]{8}\.(nii|nii\.gz|nrrd|bin)", os.path.basename(real)
        ):
            return  # the endpoint's own copy of an uploaded image
        if session_root and os.path.commonpath([real, os.path.realpath(session_root)]) == os.path.realpath(
            session_root
        ):
            return  # the image of a session (set by the endpoint from session_id, which the guard checks)
        raise RequestError("image: give the id of a study, not a path", 400)
    validate_id(image)
    if not known(image):
        raise RequestError(f"image {image!r} is not in the studies", 404)


def cors_origins(conf_value: str | None) -> list[str]:
    """The origins allowed to call the server from a browser (OHIF on another origin), or none (CORS off).

    Args:
        conf_value: the app's ``cors_origins`` setting (comma-separated origins) or ``None``; MONAI Label's
            ``MONAI_LABEL_CORS_ORIGINS`` setting is added to it.

    Returns:
        The origins, without trailing slashes; ``[]`` allows no cross-origin request.

    Raises:
        ValueError: for ``*`` or an origin that is not ``http(s)://host[:port]``.
    """
    from monailabel.config import settings

    values = [o.strip() for o in (conf_value or "").split(",") if o.strip()]
    values += [str(o) for o in settings.MONAI_LABEL_CORS_ORIGINS or []]
    origins = []
    for o in values:
        o = o.rstrip("/")
        if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", o):
            raise ValueError(
                f"cors_origins: {o!r} is not an origin such as https://viewer.example.org:3000 ('*' is refused)"
            )
        origins.append(o)
    return sorted(set(origins))


# --- the HTTP guard ---------------------------------------------------------------------------------------------------


class _TooLarge(Exception):
    pass


class RequestGuard:
    """ASGI middleware in front of MONAI Label's routes: body size limit and request checks, answered with 4xx.

    - A body over ``max_body_bytes`` is refused with 413 (from its ``Content-Length`` before anything is read, or
      while it streams in); accepted bodies are spooled to disk and replayed to the route.
    - Form fields ``params`` and ``info`` must be JSON objects of plain data (400/422), infer parameters follow
      :func:`validate_infer_params`, ``image`` and ``session_id`` in the query of an infer request are ids.
    - A training request's JSON body follows :func:`validate_train_params`; ``run_sync=true`` (training inside the
      server's event loop) is refused.

    Args:
        app: the wrapped ASGI app.
        max_body_bytes: the largest request body accepted.
        models: the trainers' names (for the all-models training endpoint), a callable giving them.
        api_prefix: MONAI Label's ``MONAI_LABEL_API_STR``.
    """

    def __init__(
        self, app: Any, max_body_bytes: int, models: Callable[[], Iterable[str]] = tuple, api_prefix: str = ""
    ) -> None:
        self.app = app
        self.max_body_bytes = int(max_body_bytes)
        self.models = models
        self.prefix = api_prefix.rstrip("/")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        """Checks one HTTP request and passes it on, or answers it with a 4xx.

        Args:
            scope: the ASGI scope.
            receive: the ASGI receive channel.
            send: the ASGI send channel.
        """
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            spool = await self._read_body(scope, receive)
        except RequestError as e:
            await self._answer(send, e)
            return
        try:
            replay = self._replay(spool, receive)
            try:
                await self._check(scope, spool, receive)
            except RequestError as e:
                await self._answer(send, e)
                return
            await self.app(scope, replay(), send)
        finally:
            spool.close()

    async def _read_body(self, scope: dict, receive: Callable) -> tempfile.SpooledTemporaryFile:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise RequestError("invalid Content-Length header", 400)
            if int(length) > self.max_body_bytes:
                raise RequestError(self._too_large_message(int(length)), 413)
        spool = tempfile.SpooledTemporaryFile(max_size=1 << 20)
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                spool.close()
                raise RequestError(self._too_large_message(size), 413)
            spool.write(chunk)
            more = message.get("more_body", False)
        spool.seek(0)
        return spool

    def _too_large_message(self, size: int) -> str:
        return (
            f"request body too large: {size / 2**20:.1f} MiB or more, the limit is {self.max_body_bytes / 2**20:.0f} "
            "MiB (the app's max_upload_mb setting)"
        )

    @staticmethod
    def _replay(spool: tempfile.SpooledTemporaryFile, receive: Callable) -> Callable[[], Callable]:
        def make() -> Callable:
            spool.seek(0)
            done = False

            async def replay_receive() -> dict:
                nonlocal done
                if done:
                    return await receive()
                chunk = spool.read(1 << 16)
                more = bool(chunk) and spool.tell() < _size(spool)
                done = not more
                return {"type": "http.request", "body": chunk, "more_body": more}

            return replay_receive

        return make

    async def _check(self, scope: dict, spool: tempfile.SpooledTemporaryFile, receive: Callable) -> None:
        method = scope["method"]
        path = (
            scope["path"][len(self.prefix) :]
            if self.prefix and scope["path"].startswith(self.prefix)
            else scope["path"]
        )
        path = path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        content_type = dict(scope.get("headers", [])).get(b"content-type", b"").decode("latin-1").lower()
        is_infer = method == "POST" and re.fullmatch(r"/infer/[^/]+", path) is not None
        is_train = method == "POST" and re.fullmatch(r"/train(/[^/]+)?", path) is not None
        if is_infer:
            if query.get("image"):
                validate_id(query["image"])
            if query.get("session_id"):
                validate_id(query["session_id"], "session id")
        if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            from starlette.requests import Request

            request = Request(scope, self._replay(spool, receive)())
            try:
                form = await request.form(max_files=4, max_fields=16)
            except Exception as e:  # malformed multipart
                raise RequestError(f"malformed form data: {e}", 400) from e
            try:
                fields = {k: v for k, v in form.items() if k in ("params", "info") and isinstance(v, str)}
            finally:
                await form.close()
            for name, text in fields.items():
                value = _json_object(text, f"form field {name!r}")
                if is_infer and name == "params":
                    validate_infer_params(value)
                else:
                    check_plain_data(value, f"form field {name!r}")
        if is_train:
            if query.get("run_sync", "").lower() in ("1", "true", "yes", "on"):
                raise RequestError(
                    "run_sync is not supported: training runs in the background (GET /train/ for status)"
                )
            body = spool.read()
            spool.seek(0)
            params = _json_object(body.decode("utf-8", "replace"), "training options") if body.strip() else {}
            name = path.split("/")[2] if path.count("/") == 2 else None
            validate_train_params(params if name is None else {**params, "model": name}, self.models())
        elif content_type.startswith("application/json") and method in ("POST", "PUT", "PATCH"):
            body = spool.read()
            spool.seek(0)
            if body.strip():
                try:
                    value = json.loads(body)
                except ValueError as e:
                    raise RequestError(f"request body is not valid JSON: {e}", 400) from e
                check_plain_data(value, "request body")

    @staticmethod
    async def _answer(send: Callable, error: RequestError) -> None:
        body = json.dumps({"detail": error.detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": error.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _size(spool: tempfile.SpooledTemporaryFile) -> int:
    here = spool.tell()
    spool.seek(0, 2)
    end = spool.tell()
    spool.seek(here)
    return end


def _json_object(text: str, what: str) -> dict:
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError as e:
        raise RequestError(f"{what} is not valid JSON: {e}", 400) from e
    if not isinstance(value, dict):
        raise RequestError(f"{what} must be a JSON object, got {type(value).__name__}", 400)
    return value


def install_http_guard(max_body_bytes: int, origins: list[str], models: Callable[[], Iterable[str]]) -> bool:
    """Puts :class:`RequestGuard` in front of MONAI Label's FastAPI app and replaces its allow-everyone CORS.

    MONAI Label builds its app (``monailabel.app:app``) with CORS for any origin with credentials and creates the
    SegOne app inside the server's start-up, after the middleware stack is built; so the stack is rebuilt here with
    the guard outermost (inside Starlette's error handler) and CORS only for ``origins``.

    Args:
        max_body_bytes: the largest request body accepted.
        origins: allowed browser origins; ``[]`` removes CORS altogether.
        models: gives the trainers' names.

    Returns:
        ``True`` when installed; ``False`` outside a server (MONAI Label's training subprocess).
    """
    module = sys.modules.get("monailabel.app")
    if module is None:
        return False
    from fastapi.middleware.cors import CORSMiddleware
    from monailabel.config import settings
    from starlette.middleware import Middleware

    app = module.app
    kept = [m for m in app.user_middleware if m.cls not in (CORSMiddleware, RequestGuard)]
    stack = [
        Middleware(RequestGuard, max_body_bytes=max_body_bytes, models=models, api_prefix=settings.MONAI_LABEL_API_STR)
    ]
    if origins:
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_credentials=True,
                allow_methods=["GET", "POST", "PUT", "DELETE", "HEAD"],
                allow_headers=["*"],
            )
        )
    app.user_middleware = stack + kept
    app.middleware_stack = app.build_middleware_stack()
    logger.info(
        "request guard installed: bodies up to %.0f MiB; CORS %s",
        max_body_bytes / 2**20,
        f"for {origins}" if origins else "off (no cross-origin browser access)",
    )
    return True
