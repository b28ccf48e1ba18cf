"""Fixtures of the production image's tests (see indb_image.py); they run only through `make test-image`."""

from __future__ import annotations

import pytest
from indb_image import IMAGE, docker_client, remove, start_indb


@pytest.fixture(scope="session")
def image() -> str:
    try:
        docker_client().images.get(IMAGE)
    except Exception as e:  # docker.errors.ImageNotFound, or no engine at all
        pytest.fail(f"image {IMAGE} not available ({e}); run the image tests with `make test-image`")
    return IMAGE


@pytest.fixture(scope="module")
def server(image, tmp_path_factory):
    """A container of the image for one test module: the password from a secret file, a fresh volume."""
    db = start_indb(image, tmp_path_factory.mktemp("secrets"), password_file=True)
    yield db
    remove(db)
