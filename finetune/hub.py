"""Push a run's exports to the Hugging Face Hub with a model card, and publish a chat-only Space
for a pushed model (the template in finetune/ui/chat_space/).

    HF_TOKEN=hf_... python -m finetune push runs/NAME --repo NAME --merge --gguf q8_0
    HF_TOKEN=hf_... python -m finetune push runs/NAME --repo NAME --merge --space NAME-chat

The token is the owner's: HF_TOKEN (a Space secret on a Space), or the login `hf auth login`
saved. It is sent as the Authorization header and never written into a file, card or Space.
Repositories are private unless asked otherwise. `HF_ENDPOINT` points everything at another Hub
(the tests use a local stand-in of its HTTP API).
"""

from __future__ import annotations

import contextlib
import json
import os
import string
import time
from pathlib import Path
from typing import Any, Callable

from finetune import export, runinfo
from finetune.errors import FinetuneError

CHAT_TEMPLATE_DIR = Path(__file__).resolve().parent / "ui" / "chat_space"
CHAT_FILES = ("app.py", "requirements.txt", "packages.txt", "README.md")
# finetune's own modules the Space's app.py imports, shipped beside it: the compiled CPU decode
CHAT_MODULES = (Path(__file__).resolve().parent / "fastdecode.py",)
SPACE_NOTE = ("This app runs on a Hugging Face Space, whose disk is wiped when the Space restarts "
              "or sleeps: push what you want to keep to the Hub (Share tab) before leaving.")


class HubError(FinetuneError):
    """The Hub refused or could not be reached; the message says what to do."""


# --- who may share, with which token ------------------------------------------------------------


def on_space() -> bool:
    from finetune.access import on_space as space

    return space()


def get_token(token: str | None = None) -> str:
    """The token to push with: the one given, else HF_TOKEN, else the saved login."""
    token = (token or "").strip() or os.environ.get("HF_TOKEN", "").strip()
    if not token:
        try:
            from huggingface_hub import get_token as saved

            token = saved() or ""
        except Exception:  # noqa: BLE001 - no saved login is the same as none
            token = ""
    if not token:
        where = ("add it as the secret HF_TOKEN in this Space's settings (a token with write "
                 "access from https://huggingface.co/settings/tokens), then restart the Space"
                 if on_space() else "set HF_TOKEN, run `hf auth login`, or paste a token")
        raise HubError(f"No Hugging Face token to push with: {where}.")
    return token


def api(token: str):
    from huggingface_hub import HfApi

    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)


@contextlib.contextmanager
def hub_errors(token: str | None, what: str):
    """Hub failures as HubError with what to do; the token never shows in a message."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    def clean(text: str) -> str:
        return text.replace(token, "hf_***") if token else text

    try:
        yield
    except OfflineModeIsEnabled:
        raise HubError(f"Could not {what}: HF_HUB_OFFLINE is set, so the Hub is not contacted. "
                       "Unset it to push.") from None
    except HfHubHTTPError as e:
        code = getattr(e.response, "status_code", None)
        hint = {401: "the token is not valid (check HF_TOKEN)",
                403: "the token may not write there (it needs write access, and the namespace "
                     "must be yours or an organization you can write to)",
                404: "no such repository or user (check the name)",
                409: "that name is taken by a repository of another kind"}.get(code, "")
        raise HubError(clean(f"Could not {what}: {hint + ': ' if hint else ''}"
                             f"{str(e).splitlines()[0]}")) from None
    except (ConnectionError, OSError) as e:
        if isinstance(e, FinetuneError):
            raise
        raise HubError(clean(f"Could not {what}: the Hub is not reachable ({e}).")) from None


def whoami(token: str) -> str:
    with hub_errors(token, "check the token"):
        return api(token).whoami()["name"]


def full_id(repo_id: str, user: str) -> str:
    repo_id = (repo_id or "").strip().strip("/")
    if not repo_id:
        raise HubError("Give a repository name, e.g. my-model or your-name/my-model.")
    return repo_id if "/" in repo_id else f"{user}/{repo_id}"


# --- push -------------------------------------------------------------------------------------


def push(run_dir: str | Path, repo_id: str, token: str | None = None, folder: str | Path | None
         = None, adapter: bool | None = None, merge: bool = False, gguf_types=(),
         private: bool = True, check: bool = True, force: bool = False, limit: int | None = None,
         progress: Callable[[float, str], Any] | None = None, log=print) -> dict:
    """Upload an export of the run (`folder`, made by `export.export_run`; exported now into the
    run's export/ when not given) with a model card to `repo_id` (under the token's user when it
    has no owner). Refuses an export a check flagged unless `force`. Returns {'repo_id', 'url',
    'files', 'private'}; the same is saved as hub.json in the run directory."""
    run_dir = runinfo.run_path(run_dir)
    token = get_token(token)
    user = whoami(token)
    repo_id = full_id(repo_id, user)

    def tell(fraction: float, desc: str, start: float = 0.0, span: float = 1.0) -> None:
        if progress is not None:
            progress(start + span * fraction, desc)

    if folder is None:
        folder = export.default_out(run_dir)
        export.export_run(run_dir, folder, adapter, merge, gguf_types, check=check, limit=limit,
                          progress=lambda f, d: tell(f, d, 0.0, 0.7), log=log)
        start = 0.7
    else:
        start = 0.0
    folder = Path(folder)
    manifest = export.read_manifest(folder)
    if manifest["run"] != run_dir.name:
        raise HubError(f"{folder} is an export of {manifest['run']}, not of {run_dir.name}.")
    if manifest.get("flagged") and not force:
        raise HubError(f"Not pushed: the check flagged {', '.join(manifest['flagged'])} (its "
                       "answers differ from the tuned model's beyond rounding noise; see the "
                       "Evaluate tab). Export again, or push anyway (--force).")
    from finetune import card

    for adapter_config in folder.rglob("adapter_config.json"):  # no paths of this machine
        settings = json.loads(adapter_config.read_text(encoding="utf-8"))
        settings["base_model_name_or_path"] = card.public_name(settings["base_model_name_or_path"])
        adapter_config.write_text(json.dumps(settings, indent=2), encoding="utf-8")
    manifest["base_model"] = card.public_name(manifest["base_model"])
    runinfo.write_json(folder / "export.json", manifest)
    card.build_card(run_dir, manifest, repo_id, out=folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    size = sum(p.stat().st_size for p in files)
    log(f"Pushing {len(files)} files ({size / 1e6:.1f} MB) to {repo_id} "
        f"({'private' if private else 'public'})...")
    hub = api(token)
    with hub_errors(token, f"push to {repo_id}"):
        url = str(hub.create_repo(repo_id, private=private, exist_ok=True))
        _upload(hub, repo_id, "model", [(str(p.relative_to(folder)), p) for p in files],
                f"Upload {manifest['run']} ({', '.join(e['name'] for e in manifest['exports'])})",
                lambda f, d: tell(f, d, start, 1.0 - start))
    result = {"repo_id": repo_id, "url": url.rstrip("/"), "private": private,
              "files": [str(p.relative_to(folder)) for p in files],
              "pushed": time.strftime("%Y-%m-%d %H:%M:%S")}
    runinfo.write_json(run_dir / "hub.json", result)
    tell(1.0, "pushed")
    log(f"Pushed: {result['url']}")
    return result


def _upload(hub, repo_id: str, repo_type: str, files: list[tuple[str, Any]], message: str,
            progress: Callable[[float, str], Any]) -> None:
    """One commit of `files` ((path in repo, local path or bytes)); large files are uploaded one
    by one first so progress moves file by file."""
    from huggingface_hub import CommitOperationAdd

    ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(src) if isinstance(src, Path)
                              else src) for name, src in files]
    sizes = [op.upload_info.size for op in ops]
    total, sent = max(1, sum(sizes)), 0
    for op, size in sorted(zip(ops, sizes), key=lambda x: -x[1]):
        progress(sent / total * 0.95, f"uploading {op.path_in_repo} ({size / 1e6:.1f} MB)")
        hub.preupload_lfs_files(repo_id, additions=[op], repo_type=repo_type)
        sent += size
    progress(0.95, "committing")
    hub.create_commit(repo_id, operations=ops, commit_message=message, repo_type=repo_type)


# --- chat Space -------------------------------------------------------------------------------


def chat_space_files(model_repo: str, title: str = "", system: str = "",
                     gguf_file: str | None = None) -> dict[str, bytes]:
    """The files of a chat-only Space for `model_repo`: the template in finetune/ui/chat_space/
    and the modules its app.py imports (`CHAT_MODULES`)."""
    from finetune import bundled

    settings = {"model": model_repo, "gguf_file": gguf_file, "system": system,
                "title": title or model_repo.split("/")[-1]}
    values = {"model": model_repo, "title": settings["title"],
              "sdk_version": _gradio_pin(), "bundled": bundled.BUNDLED_NAME}
    files = {}
    for name in CHAT_FILES:
        text = (CHAT_TEMPLATE_DIR / name).read_text(encoding="utf-8")
        if name == "README.md":
            text = string.Template(text).substitute(values)
        files[name] = text.encode("utf-8")
    for module in CHAT_MODULES:
        files[module.name] = module.read_bytes()
    files["chat_config.json"] = (json.dumps(settings, indent=2) + "\n").encode("utf-8")
    return files


def _gradio_pin() -> str:
    req = Path(__file__).resolve().parent.parent / "requirements.txt"
    for line in req.read_text(encoding="utf-8").splitlines():
        if line.startswith("gradio=="):
            return line.split("==", 1)[1].strip()
    from importlib.metadata import version  # the pin is missing: what is installed

    return version("gradio")


def publish_chat_space(model_repo: str, space_id: str | None = None, token: str | None = None,
                       private: bool = False, title: str = "", system: str = "",
                       gguf_file: str | None = None,
                       progress: Callable[[float, str], Any] | None = None, log=print) -> dict:
    """Create (or update) a Gradio Space that chats with the pushed `model_repo`. Returns
    {'space_id', 'url', 'note'}: the note says what the Space still needs (a token secret when the
    model is private)."""
    token = get_token(token)
    user = whoami(token)
    model_repo = full_id(model_repo, user)
    space_id = full_id(space_id or model_repo.split("/")[-1] + "-chat", user)
    if not (CHAT_TEMPLATE_DIR / "app.py").is_file():
        raise HubError(f"The chat Space template is missing ({CHAT_TEMPLATE_DIR}): restore "
                       "finetune/ui/chat_space/ from the repository.")
    hub = api(token)
    tell = progress or (lambda f, d: None)
    with hub_errors(token, f"publish the Space {space_id}"):
        info = hub.model_info(model_repo)
        model_private = bool(getattr(info, "private", False))
        names = [s.rfilename for s in (getattr(info, "siblings", None) or [])]
        if gguf_file is None and names and not {"config.json", "adapter_config.json"} & set(names):
            ggufs = sorted((n for n in names if n.endswith(".gguf")),
                           key=lambda n: ("q8_0" not in n.lower(), n))
            gguf_file = ggufs[0] if ggufs else None  # a GGUF-only repository
        files = chat_space_files(model_repo, title, system, gguf_file)
        tell(0.1, f"creating the Space {space_id}")
        url = str(hub.create_repo(space_id, repo_type="space", space_sdk="gradio",
                                  private=private, exist_ok=True))
        _upload(hub, space_id, "space", sorted(files.items()),
                f"Chat with {model_repo}", lambda f, d: tell(0.1 + 0.9 * f, d))
    note = ""
    if model_private:
        note = (f"{model_repo} is private, so the Space cannot load it yet: make the model public, "
                "or add a read-only token as the secret HF_TOKEN in the Space's settings.")
    tell(1.0, "published")
    log(f"Chat Space: {url}" + (f" ({note})" if note else ""))
    return {"space_id": space_id, "url": url.rstrip("/"), "note": note}


def last_push(run_dir: str | Path) -> dict | None:
    """What was last pushed from this run (hub.json), or None."""
    return runinfo.read_json(Path(run_dir) / "hub.json")
