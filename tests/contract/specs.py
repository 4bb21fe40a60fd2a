"""Find the vendor's OpenAPI specs for the contract tests: ``load_spec(name)``.

Where from, in order:

1. the folder in ``SENDMUX_API_SPECS``, else ``<repo>/../shared/sendmux-api``
   (the project's reference copy);
2. otherwise the ``sendmux-mcp`` 2.2.0 wheel from PyPI, which ships the same
   files as ``sendmux_mcp/openapi/*.json``: downloaded once with
   ``pip download --no-deps`` into ``<repo>/.cache/specs`` (gitignored) and
   read straight from the zip.

When no spec can be had the test is skipped with the reason, except in CI
(``CI=true``), where a missing spec fails: contract tests must not turn into
silent skips there.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["SPEC_FILES", "load_spec", "schema_validator"]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SPECS_DIR = REPO.parent / "shared" / "sendmux-api"
CACHE_DIR = REPO / ".cache" / "specs"
WHEEL_REQUIREMENT = "sendmux-mcp==2.2.0"
#: Short names accepted by :func:`load_spec`, and the file each stands for.
SPEC_FILES = {"sending": "openapi-sending.json", "app": "openapi-app.json"}


def _file_name(name: str) -> str:
    if name in SPEC_FILES.values():
        return name
    try:
        return SPEC_FILES[name]
    except KeyError:
        known = [*SPEC_FILES, *SPEC_FILES.values()]
        raise ValueError(f"unknown spec {name!r}: use one of {known}") from None


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason} (CI=true: the contract tests must run, not skip)")
    pytest.skip(reason)


def _specs_dir() -> Path:
    configured = os.environ.get("SENDMUX_API_SPECS")
    return Path(configured) if configured else DEFAULT_SPECS_DIR


def _wheel() -> Path | None:
    wheels = sorted(CACHE_DIR.glob("sendmux_mcp-2.2.0-*.whl"))
    if wheels:
        return wheels[0]
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_REQUIREMENT]
    command += ["--only-binary=:all:", "-d", str(CACHE_DIR), "--quiet"]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    wheels = sorted(CACHE_DIR.glob("sendmux_mcp-2.2.0-*.whl"))
    return wheels[0] if wheels else None


def _from_wheel(file_name: str) -> dict[str, Any] | None:
    wheel = _wheel()
    if wheel is None:
        return None
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.endswith(f"sendmux_mcp/openapi/{file_name}"):
                loaded: dict[str, Any] = json.loads(archive.read(member))
                return loaded
    return None


@functools.cache
def _load(file_name: str) -> dict[str, Any] | None:
    path = _specs_dir() / file_name
    if path.is_file():
        loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return loaded
    return _from_wheel(file_name)


def load_spec(name: str) -> dict[str, Any]:
    """The parsed spec, by short name (``"sending"``, ``"app"``) or file name.

    Cached per process; treat the result as read-only.
    """
    file_name = _file_name(name)
    spec = _load(file_name)
    if spec is None:
        _missing(
            f"{file_name} not found in {_specs_dir()} (set SENDMUX_API_SPECS) and "
            f"'pip download {WHEEL_REQUIREMENT}' into {CACHE_DIR} failed"
        )
        raise AssertionError("unreachable")  # pragma: no cover (skip/fail raise)
    return spec


def schema_validator(name: str, pointer: str) -> Draft202012Validator:
    """A 2020-12 validator for the schema at ``pointer`` (``#/components/schemas/X``) of a spec.

    The whole spec is registered as a resource, so ``#/components/...``
    references inside the schema resolve.
    """
    uri = f"urn:sendmux-spec:{_file_name(name)}"
    resource = Resource.from_contents(load_spec(name), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(uri, resource)
    return Draft202012Validator(
        {"$ref": f"{uri}{pointer}"},
        registry=registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
