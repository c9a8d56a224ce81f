"""Hugging Face hub ids (`org/name[@revision]`) as model sources, through huggingface_hub's own snapshot_download:
its cache, HF_HOME, HF_HUB_OFFLINE, revisions and tokens are the hub's, not re-implemented here. A local path that
exists always wins over a hub id that looks the same."""
from __future__ import annotations

import re
from pathlib import Path

from modelport.formats.errors import BadInput, RuntimeMissing

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
# weights in formats modelport never reads (pickles among them) are not downloaded
IGNORE = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.ot"]


def is_hub_id(text: str) -> bool:
    return bool(HUB_ID.match(text)) and ".." not in text


def split(ref: str) -> tuple[str, str | None]:
    repo, _, revision = ref.partition("@")
    return repo, revision or None


def snapshot(ref: str) -> Path:
    """The local snapshot folder of hub id `ref` (downloaded into the hub cache unless it is there already, or
    HF_HUB_OFFLINE is set); a missing repo or revision, a gated repo or no network is a one-line error (exit 2)."""
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:
        raise RuntimeMissing(ref, "hub ids need huggingface_hub: pip install huggingface_hub") from None
    repo, revision = split(ref)
    # most specific first: a gated repo is also a repository error, a missing revision an HTTP error
    reasons = [(errors.GatedRepoError, "gated repo: accept its terms on the hub and log in (HF_TOKEN)"),
               (errors.RevisionNotFoundError, f"no revision {revision!r} in {repo}"),
               (errors.RepositoryNotFoundError, "no such repo on the hub (or it is private: log in with HF_TOKEN)"),
               (errors.LocalEntryNotFoundError, f"revision {revision or 'main'} is not in the local hub cache and "
                                                "the hub cannot be reached (HF_HUB_OFFLINE or no network)"),
               (errors.HfHubHTTPError, "hub request failed")]
    try:
        # local_files_only as HF_HUB_OFFLINE says: huggingface_hub 1.x asks the hub for a commit hash's file list
        # even when offline, and fails on a snapshot its cache holds
        return Path(huggingface_hub.snapshot_download(repo, revision=revision, ignore_patterns=IGNORE,
                                                      local_files_only=huggingface_hub.constants.HF_HUB_OFFLINE))
    except tuple(kind for kind, _ in reasons) as e:
        why = next(reason for kind, reason in reasons if isinstance(e, kind))
        raise BadInput(ref, why) from None
    except ValueError as e:  # an invalid repo id
        raise BadInput(ref, str(e).splitlines()[0]) from None


def local(path: str | Path) -> Path:
    """A model argument as a local path: itself when it exists, else a hub id's snapshot."""
    if Path(path).exists() or not is_hub_id(str(path)):
        return Path(path)
    return snapshot(str(path))
