"""Images before anything starts: pull what is missing (with progress), build what is built.

A service built from `build:` whose `x-atendeai.bundle` is true gets this very package
(app/) and wheels of its dependencies for the base image's Python (wheels/) added to its build
context, so the image builds with no network access inside the build. Those wheels are the pins
of requirements/runtime.txt, the same resolution as the development lock, hash-checked on the
host and again in the image. Built images carry a content hash label and are rebuilt only when
that hash changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

from atendeai_ctl.errors import AtendeaiError
from atendeai_ctl.stack.engine import Engine
from atendeai_ctl.stack.runtime import Progress
from atendeai_ctl.stack.spec import Build, Service, StackSpec

if TYPE_CHECKING:
    import docker

BUILD_HASH = "io.atendeai.build-hash"
PACKAGE = "atendeai_ctl"
_SKIP = {"__pycache__", "_project", ".mypy_cache", ".pytest_cache"}
_PROBE = (
    "import sys, platform, os, glob; "
    "libc = 'musl' if glob.glob('/lib/ld-musl-*') else 'glibc ' + platform.libc_ver()[1]; "
    "print(f'{platform.python_version()}|{platform.machine()}|{libc}')"
)


def cache_dir() -> Path:
    return Path(os.environ.get("ATENDEAI_CACHE_DIR") or platformdirs.user_cache_dir("atendeai"))


def runtime_lock() -> Path | None:
    """requirements/runtime.txt: the runtime dependencies pinned with hashes, from the same
    resolution as the development lock (scripts/lock). At a checkout's top level, or under
    _project/ in the wheel."""
    package = Path(__file__).resolve().parent.parent
    for path in (
        package.parent.parent / "requirements" / "runtime.txt",
        package / "_project" / "requirements" / "runtime.txt",
    ):
        if path.is_file():
            return path
    return None


def _lock_text() -> str:
    path = runtime_lock()
    if path is None:
        raise AtendeaiError(
            "failed",
            "requirements/runtime.txt, the auth image's pinned dependencies, is missing",
            "reinstall atendeai-ctl (its wheel carries the file) or run from a checkout",
        )
    return path.read_text()


def pinned_requirements(lock: str, version: str, machine: str) -> list[str]:
    """The lock's pins that apply to CPython `version` on Linux/`machine`, as `name==version
    --hash=...` lines with each marker already decided for that target: pip would judge
    markers by the host's Python, not the image's (redis needs async-timeout below 3.11.3)."""
    from packaging.markers import Marker, default_environment

    env: dict[str, str] = {
        **{k: str(v) for k, v in default_environment().items()},
        "python_full_version": version,
        "python_version": ".".join(version.split(".")[:2]),
        "implementation_name": "cpython",
        "implementation_version": version,
        "platform_python_implementation": "CPython",
        "platform_machine": machine,
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
    }
    pins = []
    for line in lock.replace("\\\n", " ").splitlines():
        if not line or line[0] in "# -":
            continue
        requirement, *hashes = line.split("--hash=")
        pin, _, marker = requirement.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate(env):
            continue
        pins.append(" ".join([pin.strip(), *(f"--hash={h.strip()}" for h in hashes)]))
    return pins


def _files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not _SKIP.intersection(p.relative_to(root).parts) and p.suffix != ".pyc"
    )


def _bundle_sources(project_dir: Path) -> list[tuple[Path, Path]]:
    """(source, destination under app/) for the package and the project files it reads."""
    package = Path(__file__).resolve().parent.parent
    pairs = [(p, Path(PACKAGE) / p.relative_to(package)) for p in _files(package)]
    for sub in ("compose", "migrations", "configs"):
        root = project_dir / sub
        if root.is_dir():
            pairs += [
                (p, Path(PACKAGE) / "_project" / sub / p.relative_to(root)) for p in _files(root)
            ]
    return pairs


def _build_hash(
    service: Service, build: Build, bundle: list[tuple[Path, Path]], base_id: str
) -> str:
    digest = hashlib.sha256()
    context = Path(build.context)
    for path in _files(context):
        digest.update(str(path.relative_to(context)).encode() + b"\0" + path.read_bytes())
    for src, dest in bundle:
        digest.update(str(dest).encode() + b"\0" + src.read_bytes())
    lock = runtime_lock()
    pins = lock.read_text() if lock else ""
    digest.update(json.dumps([build.args, build.dockerfile, base_id, pins]).encode())
    return digest.hexdigest()


def _platform_tags(machine: str, libc: str) -> list[str]:
    if libc == "musl":
        return [f"musllinux_1_{minor}_{machine}" for minor in (1, 2)]
    glibc_minor = int(libc.split(".")[-1]) if "." in libc else 17
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(17, glibc_minor + 1)]
    return [*tags, f"manylinux2014_{machine}"]


def wheelhouse(client: docker.DockerClient, base_image: str, progress: Progress) -> Path:
    """Wheels for `base_image`'s Python, exactly the runtime lock's pins (hash-checked), made
    on the host once and cached. Their requirements.txt keeps the hashes, so the image's
    `pip install` checks them again."""
    try:
        raw = client.containers.run(base_image, ["python", "-c", _PROBE], remove=True)
    except Exception as exc:
        raise AtendeaiError(
            "failed",
            f"cannot run python in base image {base_image}: {exc}",
            "set ATENDEAI_PYTHON_IMAGE to an image with python and pip",
        ) from exc
    version, machine, libc = raw.decode().strip().split("|")
    reqs = pinned_requirements(_lock_text(), version, machine)
    key = hashlib.sha256(json.dumps([version, machine, libc, reqs]).encode()).hexdigest()[:16]
    target = cache_dir() / "wheelhouse" / key
    if (target / "requirements.txt").is_file():
        return target
    progress("wheels", f"downloading wheels for Python {version} ({machine}, {libc})", None, None)
    cache_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="wheels-", dir=cache_dir()))
    (tmp / "requirements.txt").write_text("\n".join(reqs) + "\n")
    _pip_download(tmp, version, _platform_tags(machine, libc))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _pip_download(dest: Path, version: str, tags: list[str]) -> None:
    """dest/requirements.txt's wheels into dest. --no-deps: the lock is the whole closure."""
    abi = "cp" + "".join(version.split(".")[:2])
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
        "--no-deps", "--require-hashes", "-r", str(dest / "requirements.txt"),
        "--dest", str(dest), "--python-version", version, "--implementation", "cp",
        "--abi", abi, "--abi", "abi3", "--abi", "none",
    ]  # fmt: skip
    for tag in tags:
        cmd += ["--platform", tag]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise AtendeaiError(
            "failed",
            f"cannot fetch the auth service's dependency wheels: {last}",
            "the host needs access to a Python package index (or PIP_FIND_LINKS with the wheels)",
        )


def _image_id(
    client: docker.DockerClient, name: str, engine: Engine | None = None
) -> dict[str, Any] | None:
    if engine is not None:  # a read: no SDK import when every image is already here
        return engine.inspect_image(name)
    from docker.errors import ImageNotFound

    try:
        return dict(client.api.inspect_image(name))
    except ImageNotFound:
        return None


def _pull(client: docker.DockerClient, image: str, progress: Progress) -> None:
    from docker.errors import DockerException

    repo, _, tag = (
        image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
    )
    layers: dict[str, tuple[float, float]] = {}
    try:
        for event in client.api.pull(repo, tag=tag, stream=True, decode=True):
            if "error" in event:
                raise AtendeaiError("not_found", f"cannot pull image {image}: {event['error']}")
            detail = event.get("progressDetail") or {}
            if event.get("id") and detail.get("total"):
                layers[event["id"]] = (float(detail.get("current", 0)), float(detail["total"]))
            done = sum(c for c, _ in layers.values())
            total = sum(t for _, t in layers.values()) or None
            progress(f"pull {image}", str(event.get("status", "")), done, total)
    except DockerException as exc:
        raise AtendeaiError(
            "not_found",
            f"image {image} is not here and cannot be pulled: {exc}",
            "build stand-ins with scripts/offline-images and set ATENDEAI_*_IMAGE, "
            "or `docker load` the image",
        ) from exc
    except AtendeaiError as exc:
        exc.hint = exc.hint or (
            "build stand-ins with scripts/offline-images and set ATENDEAI_*_IMAGE, "
            "or `docker load` the image"
        )
        raise


def build_image(
    client: docker.DockerClient,
    spec: StackSpec,
    service: Service,
    progress: Progress,
    engine: Engine | None = None,
) -> str:
    """Build `service`'s image unless one with the same content hash exists; its id."""
    assert service.build is not None
    build = service.build
    args = dict(build.args)
    bundle = bool((service.extensions.get("x-atendeai") or {}).get("bundle"))
    base = args.get("PYTHON_IMAGE")
    base_info = _image_id(client, base, engine) if base else None
    if base and base_info is None:
        _pull(client, base, progress)
        base_info = _image_id(client, base, engine)
    sources = _bundle_sources(spec.path.parent.parent) if bundle else []
    wanted = _build_hash(service, build, sources, (base_info or {}).get("Id", ""))
    current = _image_id(client, service.image, engine)
    if current and (current.get("Config") or {}).get("Labels", {}).get(BUILD_HASH) == wanted:
        return str(current["Id"])
    with tempfile.TemporaryDirectory(prefix="atendeai-build-") as tmp:
        context = Path(tmp)
        shutil.copytree(build.context, context, dirs_exist_ok=True)
        if bundle:
            assert base is not None, "a bundled build needs a PYTHON_IMAGE build arg"
            shutil.copytree(wheelhouse(client, base, progress), context / "wheels")
            for src, dest in sources:
                (context / "app" / dest).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, context / "app" / dest)
        progress(f"build {service.image}", "building", None, None)
        image_id = None
        for event in client.api.build(
            path=str(context),
            dockerfile=build.dockerfile,
            tag=service.image,
            buildargs=args,
            labels={BUILD_HASH: wanted},
            rm=True,
            forcerm=True,
            decode=True,
        ):
            if "error" in event:
                raise AtendeaiError(
                    "failed",
                    f"building image {service.image} failed: {event['error'].strip()}",
                    f"see {build.context}/{build.dockerfile}",
                )
            if "stream" in event and event["stream"].strip():
                progress(f"build {service.image}", event["stream"].strip(), None, None)
            if "aux" in event and "ID" in event["aux"]:
                image_id = event["aux"]["ID"]
    new_id = str(image_id or client.api.inspect_image(service.image)["Id"])
    if current and current["Id"] != new_id:
        _remove_quietly(client, str(current["Id"]))
    return new_id


def _remove_quietly(client: docker.DockerClient, image_id: str) -> None:
    """Drop the image a rebuild replaced, unless a container still uses it."""
    from docker.errors import APIError

    with contextlib.suppress(APIError):
        client.api.remove_image(image_id)


def ensure_images(
    client: docker.DockerClient, spec: StackSpec, progress: Progress, engine: Engine | None = None
) -> dict[str, str]:
    """Every service's image present locally; image name -> id. Fails before anything starts.

    With `engine`, images are looked up through it, so `client` (which may connect lazily) is
    used only to pull or build."""
    ids: dict[str, str] = {}
    for service in spec.services.values():
        if service.build is not None and service.image not in ids:
            ids[service.image] = build_image(client, spec, service, progress, engine)
    for service in spec.services.values():
        if service.image in ids:
            continue
        info = _image_id(client, service.image, engine)
        if info is None:
            _pull(client, service.image, progress)
            info = _image_id(client, service.image, engine)
        if info is None:
            raise AtendeaiError("not_found", f"image {service.image} is missing after the pull")
        ids[service.image] = str(info["Id"])
    return ids
