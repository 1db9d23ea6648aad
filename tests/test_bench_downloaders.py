"""Issue 14: the downloader comparison serves distinct sheet-sized images, and herbid's half runs alone.

img2dataset lives in its own virtual environment, so its half is not tested here; the
benchmark must then say it skipped it.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from PIL import Image

from herbid.data.imaging import decode_rgb, perceptual_hash, resize_copies
from herbid.data.phash import near_duplicates_of_hex

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
pytestmark = [pytest.mark.usefixtures("loopback_only"), pytest.mark.timeout(120)]


@pytest.fixture
def downloaders(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import downloaders

    return downloaders


def test_every_url_index_gets_its_own_sheet(downloaders: ModuleType) -> None:
    bases, stop = downloaders.start_image_server(2, image_size=(240, 336), distinct=6)
    try:
        urls = downloaders.make_urls(bases, 8)
        with httpx.Client() as client:
            bodies = [client.get(url).content for url in urls]
        stats = downloaders.server_stats(bases)
    finally:
        stop()
    assert len({hashlib.sha256(body).hexdigest() for body in bodies[:6]}) == 6
    assert bodies[6:] == bodies[:2]  # URL n gets image n % distinct
    assert {Image.open(io.BytesIO(body)).size for body in bodies} == {(240, 336)}
    hashes = [perceptual_hash(resize_copies(decode_rgb(body)[0])[1]) for body in bodies[:6]]
    assert near_duplicates_of_hex(hashes, 40) == []  # distinct content, not just distinct bytes
    assert sum(s["served"] for s in stats.values()) == 8
    assert sum(s["bytes"] for s in stats.values()) == sum(len(body) for body in bodies)


def test_herbid_half_runs_and_img2dataset_half_is_skipped(downloaders: ModuleType,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = downloaders.measure(urls=6, hosts=2, image_size=(400, 560), start_up=False)
    assert result["img2dataset_skipped"] == downloaders.NOT_FOUND
    assert set(result["runs"]) == {"herbid build", "herbid download only"}
    build = result["runs"]["herbid build"]
    assert (build["stored"], build["requests"], build["near_duplicates"], build["exact_duplicates"]) == (6, 6, 0, 0)
    assert result["runs"]["herbid download only"]["stored"] == 6
    assert downloaders.NOT_FOUND in downloaders.table(result)
