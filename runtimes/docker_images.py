"""The docker runtime's images: the pull of an image source (with the platform's registry credentials only
for the server's own builds), the refusal of another server's build under any name, the image a PyPI
package source runs from (built by the worker's `PackageImages` unless present) with the entry point it
starts, and an image's own `/etc/passwd`.

`DockerImages` is the part of `runtimes.docker.DockerExecutor` that does this; the executor's `__init__`
sets the attributes declared here.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import Callable
from typing import Any

from docker.errors import APIError, DockerException, NotFound
from docker.errors import ImageNotFound as DockerImageNotFound

from core import package_image
from core.failures import ImageNotFound, PermanentFailure, RuntimeFailure
from core.sources import ImageSource, PackageSource
from core.tenancy import image_refusal
from runtimes.base import LABEL_SERVER, LaunchSpec, PackageImages
from runtimes.docker_engine import DockerEngine
from runtimes.docker_spec import ContainerTarget, is_missing_image


class DockerImages(DockerEngine):
    """Images and package images of the servers the runtime runs."""

    registry: str | None
    auth_for: Callable[[str, str], dict[str, str] | None] | None
    package_images: PackageImages | None
    bridge_max_sessions: int
    bridge_idle_seconds: float
    _package_locks: dict[str, asyncio.Lock]
    _entry_points: dict[str, list[str]]

    async def _prepare(self, spec: LaunchSpec) -> str:
        source = spec.source
        self._check_source(source)
        if isinstance(source, PackageSource):
            return (await self._target(spec)).description
        assert isinstance(source, ImageSource)
        self._refuse_foreign_name(spec, source.image)
        client = self._docker()
        try:
            image = await self._call(client.images.get, source.image)
            return f"image {source.image} present ({image.short_id})"
        except (NotFound, DockerImageNotFound):
            pass
        try:
            # The platform's registry credentials go only with pulls of this server's own images (or of the
            # build a promotion took from another of the owner's servers).
            auth = None
            if self.auth_for is not None:
                for owner in filter(None, (spec.server_id, spec.image_builder)):
                    auth = auth or self.auth_for(source.image, owner)
            image = await asyncio.to_thread(client.images.pull, source.image, auth_config=auth)
        except (NotFound, DockerImageNotFound):
            raise ImageNotFound(f"image {source.image!r} was not found in its registry") from None
        except APIError as exc:
            if is_missing_image(exc):
                raise ImageNotFound(f"image {source.image!r} could not be pulled: {exc.explanation or exc}") from None
            raise RuntimeFailure(f"pulling {source.image} failed: {exc.explanation or exc}") from None
        except DockerException as exc:
            raise RuntimeFailure(f"container engine unreachable: {exc}") from None
        return f"pulled image {source.image} ({image.short_id})"

    def _refuse_foreign_name(self, spec: LaunchSpec, image_ref: str) -> None:
        refusal = image_refusal(image_ref, self.registry, spec.server_id, spec.image_builder)
        if refusal is not None:
            raise PermanentFailure(refusal)

    async def _refuse_foreign_image(self, spec: LaunchSpec, image_ref: str) -> None:
        """Checked again where the container is made, by name and by what the engine holds under it: the
        platform labels its builds with their server, so another server's build is refused under any
        name the engine resolves to it."""
        self._refuse_foreign_name(spec, image_ref)
        try:
            image = await self._call(self._docker().images.get, image_ref)
        except (NotFound, DockerImageNotFound):
            raise ImageNotFound(f"image {image_ref!r} is not available to the container engine") from None
        built_for = (image.labels or {}).get(LABEL_SERVER)
        if built_for and built_for not in (spec.server_id, spec.image_builder):
            raise PermanentFailure(
                f"image {image_ref!r} is the platform's build of another server; a server runs only its own build"
            )

    # ---- package images ---------------------------------------------------------------------------

    @staticmethod
    def _check_source(source: Any) -> None:
        if isinstance(source, PackageSource) and source.registry != "pypi":
            raise PermanentFailure(
                "npm packages run on the process runtime; the docker runtime runs PyPI packages and images"
            )
        if not isinstance(source, ImageSource | PackageSource):
            raise PermanentFailure("the docker runtime runs image and PyPI package sources only")

    async def _target(self, spec: LaunchSpec) -> ContainerTarget:
        source = spec.source
        self._check_source(source)
        if isinstance(source, ImageSource):
            await self._refuse_foreign_image(spec, source.image)
            return ContainerTarget(image=source.image, port=source.port, path=source.path)
        assert isinstance(source, PackageSource)
        tag, image_id, built = await self._package_image(source)
        scripts = await self._read_entry_points(image_id)
        script = package_image.choose_script(source, scripts)
        command, env = package_image.container_command(source, script)
        if source.transport == "stdio":
            env = env | {
                "MCPHOST_BRIDGE_MAX_SESSIONS": str(self.bridge_max_sessions),
                "MCPHOST_BRIDGE_IDLE_SECONDS": str(self.bridge_idle_seconds),
            }
        how = "built" if built else "present"
        return ContainerTarget(
            image=tag,
            port=package_image.CONTAINER_PORT,
            path=source.path,
            command=command,
            env=env,
            description=f"image {tag} {how} ({image_id.removeprefix('sha256:')[:12]}); runs {script}",
        )

    async def _package_image(self, source: PackageSource) -> tuple[str, str, bool]:
        """The package's image (tag, id), built unless an image of the same key is there already."""
        images = self.package_images
        if images is None:
            raise PermanentFailure("this process builds no package images: package sources are prepared by the worker")
        key, tag = images.name(source)
        found = await self._find_package_image(tag, key)
        if found is not None:
            return tag, found, False
        # Two deploys of one requirement on this worker build it once; other workers may build it too,
        # which costs time, not correctness (same key, same content).
        async with self._package_locks.setdefault(key, asyncio.Lock()):
            found = await self._find_package_image(tag, key)
            if found is not None:
                return tag, found, False
            return tag, await images.build(source, key, tag), True

    async def _find_package_image(self, tag: str, key: str) -> str | None:
        try:
            image = await self._call(self._docker().images.get, tag)
        except (NotFound, DockerImageNotFound):
            return None
        if (image.labels or {}).get(package_image.LABEL_PACKAGE_BUILD) != key:
            return None
        return str(image.id)

    async def _read_entry_points(self, image_id: str) -> list[str]:
        """The console scripts the image's build recorded, read from a container that is never started."""
        if image_id not in self._entry_points:
            try:
                self._entry_points[image_id] = await self._call(self._read_entry_points_file, image_id)
            except NotFound:
                raise RuntimeFailure(f"the package image {image_id[:19]} went away while being read") from None
        return self._entry_points[image_id]

    def _read_entry_points_file(self, image_id: str) -> list[str]:
        container = self._docker().containers.create(
            image_id, command=[package_image.BRIDGE_PYTHON], network_mode="none"
        )
        try:
            chunks, _ = container.get_archive(package_image.ENTRY_POINTS_FILE)
            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
                member = archive.next()
                handle = archive.extractfile(member) if member is not None else None
                data = handle.read() if handle is not None else b""
        finally:
            container.remove(force=True)
        try:
            scripts = json.loads(data)
        except ValueError:
            scripts = None
        if not isinstance(scripts, list) or not all(isinstance(s, str) for s in scripts):
            raise RuntimeFailure(f"the package image {image_id[:19]} has no readable list of entry points")
        return scripts

    def _image_passwd(self, image_ref: str) -> str | None:
        """The image's `/etc/passwd`, read from a container that is created and never started."""
        container = self._docker().containers.create(image_ref, command=["/nonexistent"], entrypoint=[])
        try:
            chunks, _ = container.get_archive("/etc/passwd")
            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
                member = archive.extractfile("passwd")
                return member.read(1 << 20).decode(errors="replace") if member is not None else None
        except NotFound:
            return None
        finally:
            container.remove(force=True)
