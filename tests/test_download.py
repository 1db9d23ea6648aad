"""The image downloader and the JSON helper, against the fake portal on 127.0.0.1."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from fake_portal import FakePortal, closed_port
from herbid.data import download
from herbid.data.download import (
    FetchError,
    download_images,
    existing_download,
    get_json,
    guess_extension,
    parse_retry_after,
)
from herbid.data.sources.base import ProblemLog

pytestmark = [pytest.mark.usefixtures("loopback_only"), pytest.mark.timeout(30)]


class Sleeps(list):
    """A stand-in for ``time.sleep`` that records how long it was asked to wait."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def fetch(portal: FakePortal, paths: list[str], dest: Path, problems: ProblemLog | None = None,
          **kwargs) -> tuple[dict[str, Path], ProblemLog, Sleeps]:
    problems = problems if problems is not None else ProblemLog()
    sleeps = Sleeps()
    kwargs.setdefault("progress", False)
    kwargs.setdefault("allow_private_hosts", True)  # the fake portal is on 127.0.0.1
    urls = [p if "://" in p else portal.url + p for p in paths]
    return download_images(urls, dest, problems, sleep=sleeps, **kwargs), problems, sleeps


def reasons(problems: ProblemLog) -> dict[str, str]:
    return {p.where: p.reason for p in problems}


def test_downloads_images_named_by_url_hash(fake_portal: FakePortal, tmp_path: Path) -> None:
    paths = ["/img/a.jpg", "/img/b.jpg", "/img/c.jpg"]
    got, problems, _ = fetch(fake_portal, paths, tmp_path, workers=2)
    assert len(problems) == 0
    assert set(got) == {fake_portal.url + p for p in paths}
    for path in paths:
        url = fake_portal.url + path
        local = got[url]
        assert local == tmp_path / (hashlib.sha1(url.encode()).hexdigest() + ".jpg")
        assert local.read_bytes() == fake_portal.image_bytes(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in got.values())


def test_extension_comes_from_the_bytes_when_the_url_has_none(fake_portal: FakePortal, tmp_path: Path) -> None:
    got, _, _ = fetch(fake_portal, ["/img/sheet"], tmp_path)
    assert got[fake_portal.url + "/img/sheet"].suffix == ".png"


def test_guess_extension_order() -> None:
    jpeg = b"\xff\xd8\xff\xe0" + b"\0" * 12
    assert guess_extension("http://h/x.png", "image/png", jpeg) == ".jpg"  # bytes win
    assert guess_extension("http://h/x", "image/tiff", b"????") == ".tiff"
    assert guess_extension("http://h/x.JPEG?size=big", None, b"????") == ".jpeg"
    assert guess_extension("http://h/x", "application/octet-stream", b"????") == ".bin"


def test_duplicate_urls_are_fetched_once(fake_portal: FakePortal, tmp_path: Path) -> None:
    got, _, _ = fetch(fake_portal, ["/img/a.jpg"] * 3, tmp_path)
    assert len(got) == 1
    assert fake_portal.hits("/img/a.jpg") == 1


def test_second_run_makes_no_requests_for_completed_files(fake_portal: FakePortal, tmp_path: Path) -> None:
    paths = ["/img/a.jpg", "/img/b.jpg", "/img/sheet"]
    first, _, _ = fetch(fake_portal, paths, tmp_path)
    before = fake_portal.hits()
    second, problems, _ = fetch(fake_portal, paths, tmp_path)
    assert fake_portal.hits() == before == 3
    assert second == first
    assert len(problems) == 0


def test_interrupted_body_leaves_no_file_and_is_fetched_again(fake_portal: FakePortal, tmp_path: Path) -> None:
    url = fake_portal.url + "/img/a.jpg"
    fake_portal.plan("/img/a.jpg", ("truncate",))
    got, problems, _ = fetch(fake_portal, ["/img/a.jpg"], tmp_path, retries=0)
    assert got == {}
    assert reasons(problems)[url].startswith("network error")
    # neither a final file nor a leftover .part; only the failed-URL log
    assert [p.name for p in tmp_path.iterdir()] == ["failed.jsonl"]
    assert existing_download(tmp_path, url) is None

    got, problems, _ = fetch(fake_portal, ["/img/a.jpg"], tmp_path)
    assert fake_portal.hits("/img/a.jpg") == 2
    assert len(problems) == 0
    assert got[url].read_bytes() == fake_portal.image_bytes("/img/a.jpg")
    with Image.open(got[url]) as image:
        image.load()


def test_truncated_body_is_retried_within_one_run(fake_portal: FakePortal, tmp_path: Path) -> None:
    fake_portal.plan("/img/a.jpg", ("truncate",))
    got, problems, sleeps = fetch(fake_portal, ["/img/a.jpg"], tmp_path, retries=2)
    assert len(got) == 1 and len(problems) == 0
    assert fake_portal.hits("/img/a.jpg") == 2
    assert sleeps == [0.5]


def test_stale_partial_file_does_not_count_as_complete(fake_portal: FakePortal, tmp_path: Path) -> None:
    url = fake_portal.url + "/img/a.jpg"
    stem = hashlib.sha1(url.encode()).hexdigest()
    (tmp_path / f".{stem}.jpg.x1y2.part").write_bytes(b"\xff\xd8\xff half")  # a killed earlier run
    (tmp_path / f"{stem}.jpg").write_bytes(b"")  # an empty file is no download either
    got, _, _ = fetch(fake_portal, ["/img/a.jpg"], tmp_path)
    assert fake_portal.hits("/img/a.jpg") == 1
    assert got[url].read_bytes() == fake_portal.image_bytes("/img/a.jpg")


def test_429_waits_for_retry_after(fake_portal: FakePortal, tmp_path: Path) -> None:
    fake_portal.plan("/img/a.jpg", ("status", 429, {"Retry-After": "7"}))
    got, problems, sleeps = fetch(fake_portal, ["/img/a.jpg"], tmp_path)
    assert len(got) == 1 and len(problems) == 0
    assert sleeps == [7.0]
    assert fake_portal.hits("/img/a.jpg") == 2


def test_429_wait_is_capped(fake_portal: FakePortal, tmp_path: Path) -> None:
    fake_portal.plan("/img/a.jpg", ("status", 429, {"Retry-After": "86400"}))
    got, _, sleeps = fetch(fake_portal, ["/img/a.jpg"], tmp_path, max_wait=60.0)
    assert len(got) == 1
    assert sleeps == [60.0]


def test_parse_retry_after_accepts_seconds_and_dates() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < parse_retry_after(future) <= 31


def test_server_error_is_retried_with_exponential_backoff(fake_portal: FakePortal, tmp_path: Path) -> None:
    fake_portal.plan("/img/a.jpg", ("status", 500), ("status", 503))
    got, problems, sleeps = fetch(fake_portal, ["/img/a.jpg"], tmp_path, retries=3)
    assert len(got) == 1 and len(problems) == 0
    assert sleeps == [0.5, 1.0]
    assert fake_portal.hits("/img/a.jpg") == 3


def test_persistent_server_error_is_reported_after_retries(fake_portal: FakePortal, tmp_path: Path) -> None:
    url = fake_portal.url + "/img/a.jpg"
    fake_portal.plan("/img/a.jpg", *[("status", 500)] * 5)
    got, problems, sleeps = fetch(fake_portal, ["/img/a.jpg"], tmp_path, retries=2)
    assert got == {}
    [problem] = problems.items
    assert (problem.stage, problem.where, problem.action) == ("fetch", url, "dropped")
    assert problem.reason == "server error: 500 Internal Server Error"
    assert problem.detail == "3 attempts"
    assert sleeps == [0.5, 1.0]
    assert fake_portal.hits("/img/a.jpg") == 3


def test_timeout_is_reported(fake_portal: FakePortal, tmp_path: Path) -> None:
    url = fake_portal.url + "/img/a.jpg"
    fake_portal.plan("/img/a.jpg", ("slow", 1.5), ("slow", 1.5))
    start = time.monotonic()
    got, problems, _ = fetch(fake_portal, ["/img/a.jpg", "/img/b.jpg"], tmp_path, timeout=0.3, retries=1)
    assert time.monotonic() - start < 1.5
    assert list(got) == [fake_portal.url + "/img/b.jpg"]
    assert reasons(problems)[url] == "timed out: no answer within 0.3 s"
    assert fake_portal.hits("/img/a.jpg") == 2


def test_declared_size_over_the_cap_is_refused_unread(fake_portal: FakePortal, tmp_path: Path) -> None:
    got, problems, _ = fetch(fake_portal, ["/huge.jpg"], tmp_path, max_bytes=1_000_000)
    assert got == {}
    assert reasons(problems)[fake_portal.url + "/huge.jpg"] == (
        "too large: Content-Length 1000000000000 > 1000000 bytes")
    assert fake_portal.hits("/huge.jpg") == 1  # not retried
    assert [p.name for p in tmp_path.iterdir()] == ["failed.jsonl"]


def test_streamed_size_over_the_cap_is_refused(fake_portal: FakePortal, tmp_path: Path) -> None:
    got, problems, _ = fetch(fake_portal, ["/stream-big.jpg", "/img/a.jpg"], tmp_path, max_bytes=100_000)
    assert list(got) == [fake_portal.url + "/img/a.jpg"]
    assert reasons(problems)[fake_portal.url + "/stream-big.jpg"] == "too large: more than 100000 bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [got[fake_portal.url + "/img/a.jpg"].name, "failed.jsonl"])


@pytest.mark.parametrize(("url", "reason"), [
    ("ftp://example.org/a.jpg", "unsupported URL scheme: 'ftp'"),
    ("file:///etc/passwd", "unsupported URL scheme: 'file'"),
    ("/data/a.jpg", "refused: not an http(s) URL"),
    ("", "refused: not an http(s) URL"),
    ("http://", "refused: not an http(s) URL"),
])
def test_non_http_urls_are_refused_without_a_request(fake_portal: FakePortal, tmp_path: Path, url: str,
                                                     reason: str) -> None:
    problems = ProblemLog()
    assert download_images([url], tmp_path, problems, progress=False) == {}
    assert [(p.stage, p.where, p.reason, p.action) for p in problems] == [
        ("fetch", url, reason, "dropped")]
    assert fake_portal.hits() == 0


def test_404_is_reported_once_without_retry(fake_portal: FakePortal, tmp_path: Path) -> None:
    got, problems, sleeps = fetch(fake_portal, ["/gone.jpg"], tmp_path)
    assert got == {}
    assert reasons(problems) == {fake_portal.url + "/gone.jpg": "http error: 404 Not Found"}
    assert sleeps == []
    assert fake_portal.hits("/gone.jpg") == 1


def test_html_answer_is_not_an_image(fake_portal: FakePortal, tmp_path: Path) -> None:
    got, problems, _ = fetch(fake_portal, ["/page.html"], tmp_path)
    assert got == {}
    assert reasons(problems) == {fake_portal.url + "/page.html": "not an image: content-type text/html"}


def test_paths_in_urls_never_escape_dest_dir(fake_portal: FakePortal, tmp_path: Path) -> None:
    dest = tmp_path / "downloads"
    url = fake_portal.url + "/img/../../../../etc/passwd.jpg"
    got, _, _ = fetch(fake_portal, [url], dest)
    assert all(path.parent == dest for path in got.values())
    assert [p.name for p in tmp_path.iterdir()] == ["downloads"]


def test_offline_run_with_131_unreachable_urls_is_quick(tmp_path: Path) -> None:
    """Unresolvable hosts (the loopback guard fails every lookup) fail fast, with real sleeps."""
    urls = [f"http://herbarium{i % 3}.example.org/images/{i}.jpg" for i in range(131)]
    problems = ProblemLog()
    start = time.monotonic()
    got = download_images(urls, tmp_path, problems, progress=False)
    assert time.monotonic() - start < 5
    assert got == {}
    assert len(problems) == 131
    assert problems.by_reason() == {"unreachable": 131}
    assert all(p.stage == "fetch" and p.action == "dropped" for p in problems)


def test_refused_connections_are_retried_once_quickly(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/a.jpg"
    problems = ProblemLog()
    sleeps = Sleeps()
    assert download_images([url], tmp_path, problems, progress=False, sleep=sleeps, allow_private_hosts=True) == {}
    [problem] = problems.items
    assert problem.reason.startswith("unreachable: ")
    assert problem.detail == "2 attempts"
    assert sleeps == [0.25]


def test_backoff_sleep_can_be_patched_module_wide(fake_portal: FakePortal, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps = Sleeps()
    monkeypatch.setattr(download, "backoff_sleep", sleeps)
    fake_portal.plan("/img/a.jpg", ("status", 502))
    got = download_images([fake_portal.url + "/img/a.jpg"], tmp_path, ProblemLog(), progress=False,
                          allow_private_hosts=True)
    assert len(got) == 1
    assert sleeps == [0.5]


def test_caller_supplied_client_is_used_and_left_open(fake_portal: FakePortal, tmp_path: Path) -> None:
    with httpx.Client(headers={"X-Test": "yes"}) as client:
        got, _, _ = fetch(fake_portal, ["/img/a.jpg"], tmp_path, client=client)
        assert len(got) == 1
        assert not client.is_closed


def test_progress_bar_on_a_non_terminal_is_harmless(fake_portal: FakePortal, tmp_path: Path) -> None:
    got, _, _ = fetch(fake_portal, ["/img/a.jpg"], tmp_path, progress=True)
    assert len(got) == 1


# --- get_json ---


def test_get_json_retries_429_and_5xx(fake_portal: FakePortal) -> None:
    fake_portal.plan("/v2/search/media", ("status", 429, {"Retry-After": "2"}), ("status", 500))
    sleeps = Sleeps()
    with httpx.Client() as client:
        answer = get_json(client, fake_portal.url + "/v2/search/media", {"limit": 1}, retries=3, sleep=sleeps,
                          allow_private_hosts=True)
    assert answer["itemCount"] == 7
    assert len(answer["items"]) == 1
    assert sleeps == [2.0, 1.0]


def test_get_json_client_error_quotes_the_body(fake_portal: FakePortal) -> None:
    fake_portal.plan("/v1/occurrence/search", ("status", 400))
    with httpx.Client() as client, pytest.raises(FetchError) as caught:
        get_json(client, fake_portal.url + "/v1/occurrence/search", None, sleep=Sleeps(), allow_private_hosts=True)
    assert caught.value.status == 400
    assert not caught.value.unreachable
    assert caught.value.reason == 'http error: 400 Bad Request: {"error": "planned"}'
    assert fake_portal.hits() == 1


def test_get_json_unreachable(tmp_path: Path) -> None:
    sleeps = Sleeps()
    with httpx.Client() as client, pytest.raises(FetchError) as caught:
        get_json(client, f"http://127.0.0.1:{closed_port()}/v1/x", None, retries=5, sleep=sleeps,
                 allow_private_hosts=True)
    assert caught.value.unreachable
    assert caught.value.reason.startswith("unreachable: ")
    assert sleeps == [0.25]  # one quick retry, not five slow ones


def test_get_json_rejects_non_objects(fake_portal: FakePortal) -> None:
    with httpx.Client() as client, pytest.raises(FetchError) as caught:
        get_json(client, fake_portal.url + "/page.html", None, sleep=Sleeps(), allow_private_hosts=True)
    assert caught.value.reason.startswith("not JSON")
