"""Publishing a run to the Hugging Face Hub, and checking beforehand that it can succeed.

Failures (no token, the Hub unreachable, a token the Hub rejects, a repo that already holds something
else) raise :class:`HubPushError` with a message saying what to do; the local export is written
completely before anything is sent, so it is intact on disk whatever happens.
"""
import contextlib
import os
from typing import List, Optional, Union

from .card import MODEL_CARD_TAG, read_run, write_model_card, write_training_record

__all__ = ["HubPushError", "check_push_access", "push_run_to_hub"]

#: Files never uploaded: pickled weights (the export is safetensors only).
_IGNORE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt", ".cache/*", ".gitattributes"]
PathLike = Union[str, os.PathLike]


class HubPushError(ValueError):
    """A push to the Hub failed; the message says why and where the intact local export is."""


def _is_network_error(err: BaseException) -> bool:
    """Connection / timeout errors of the HTTP client huggingface_hub uses (httpx2, httpx or requests)."""
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    root = type(err).__module__.split(".")[0]
    return root in ("httpx2", "httpx", "requests", "urllib3") and "Status" not in type(err).__name__


def _remote_conflict(api, repo_id: str) -> Optional[List[str]]:
    """The files of an existing repo that was not published by this module, or None."""
    from huggingface_hub.errors import RepositoryNotFoundError
    from huggingface_hub import ModelCard

    try:
        files = api.list_repo_files(repo_id, repo_type="model")
    except RepositoryNotFoundError:
        return None
    content = [f for f in files if f != ".gitattributes"]
    if not content:
        return None
    if "README.md" in content:
        readme = api.hf_hub_download(repo_id, "README.md", repo_type="model")
        tags = ModelCard.load(readme, ignore_metadata_errors=True).data.to_dict().get("tags") or []
        if MODEL_CARD_TAG in tags:
            return None
    return sorted(content)


def _check_repo_id(repo_id: str, repo_type: str) -> None:
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"the Hub {repo_type} repo must be 'ORG/NAME', got {repo_id!r}")


def _hub_api(repo_id: str, token: Optional[str], endpoint: Optional[str], where: str, repo_type: str = "model"):
    """An ``HfApi`` with a token, or HubPushError when there is none."""
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise HubPushError(f"no Hugging Face token to push the {repo_type} {repo_id!r}: log in with `hf auth login`, "
                           f"set HF_TOKEN, or pass token=... {where}")
    return HfApi(endpoint=endpoint, token=token, library_name="spl_losses")


@contextlib.contextmanager
def _hub_errors(api, repo_id: str, where: str):
    """Turn the HTTP client's failures into HubPushError messages that say what to do."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HubPushError:
        raise
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status in (401, 403):
            raise HubPushError(f"the Hub at {api.endpoint} rejected the token (HTTP {status}) for {repo_id!r}: "
                               f"check that it is valid and has write access. {where}") from err
        raise HubPushError(f"the Hub at {api.endpoint} answered HTTP {status} for {repo_id!r}: {err}. "
                           f"{where}") from err
    except Exception as err:
        if _is_network_error(err):
            raise HubPushError(f"could not reach the Hub at {api.endpoint} ({type(err).__name__}: {err}) for "
                               f"{repo_id!r}: check the network or HF_ENDPOINT. {where}") from err
        raise


def check_push_access(repo_id: str, token: Optional[str] = None, endpoint: Optional[str] = None,
                      repo_type: str = "model") -> str:
    """Check, before any work, that a push to ``repo_id`` can succeed: a token exists and the Hub accepts it.

    One ``whoami`` request: a missing token, an unreachable endpoint or a rejected token fails in
    seconds, before a training run or a dataset build spends hours.

    Args:
        repo_id: ``ORG/NAME``.
        token: A Hub token; None uses the saved login / ``HF_TOKEN``.
        endpoint: The Hub endpoint (default: ``HF_ENDPOINT`` or huggingface.co).
        repo_type: ``"model"`` or ``"dataset"`` (named in messages).

    Returns:
        The user name the token belongs to.

    Raises:
        ValueError: ``repo_id`` is not ``ORG/NAME``.
        HubPushError: no token, the Hub unreachable, or the token rejected.
    """
    _check_repo_id(repo_id, repo_type)
    where = "(checked before any work was done)"
    api = _hub_api(repo_id, token, endpoint, where, repo_type)
    with _hub_errors(api, repo_id, where):
        info = api.whoami()
    return str(info.get("name", "")) if isinstance(info, dict) else ""


def push_run_to_hub(
        run_dir: PathLike,
        repo_id: str,
        token: Optional[str] = None,
        private: bool = False,
        *,
        commit_message: Optional[str] = None,
        overwrite: bool = False,
        license: Optional[str] = None,
        endpoint: Optional[str] = None,
) -> str:
    """Write the model card of a run and upload its ``model/`` folder to the Hub.

    The card (``model/README.md``) and the training record (``model/training_config.yaml``,
    ``model/training_results.json``) are written before anything is sent, so the local export is
    complete on disk whatever happens next.

    Args:
        run_dir: A run directory of ``recipes/train.py``.
        repo_id: ``ORG/NAME`` on the Hub (created if missing).
        token: A Hub token; None uses the saved login / ``HF_TOKEN``.
        private: Create the repo private (ignored when it exists).
        commit_message: The commit's message (default: names the loss and dataset).
        overwrite: Upload even when the repo already holds something this package did not publish.
        license: Optional license id for the card's metadata.
        endpoint: The Hub endpoint (default: ``HF_ENDPOINT`` or huggingface.co).

    Returns:
        The URL of the commit.

    Raises:
        ValueError: The run directory is incomplete or ``repo_id`` is not ``ORG/NAME``.
        HubPushError: No token, the Hub unreachable, the token rejected, or a repo with other content.
    """
    _check_repo_id(repo_id, "model")
    run = read_run(run_dir)
    write_model_card(run_dir, repo_id, license=license)
    write_training_record(run_dir)
    model_dir = run["model_dir"]
    where = f"The local export is complete at {str(model_dir)!r}; push it again with " \
            f"spl_losses.hub.push_run_to_hub({str(run_dir)!r}, {repo_id!r}) once fixed."
    api = _hub_api(repo_id, token, endpoint, where)
    message = commit_message or f"Upload {run['results'].get('loss') or run['config'].get('loss') or 'spl_losses'} " \
                                f"model trained on {run['results'].get('dataset') or run['config'].get('dataset')}"
    with _hub_errors(api, repo_id, where):
        # create first: a single request without retries, so an unreachable Hub fails fast
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if not overwrite:
            conflict = _remote_conflict(api, repo_id)
            if conflict:
                raise HubPushError(f"the Hub repo {repo_id!r} already exists and holds other content ({conflict}); "
                                   f"its model card has no {MODEL_CARD_TAG!r} tag, so it was not published by "
                                   f"spl_losses. Pick another name or pass overwrite=True. {where}")
        info = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(model_dir),
                                 commit_message=message, ignore_patterns=_IGNORE_PATTERNS)
    return str(getattr(info, "commit_url", info))
