"""Pull progress: a raw dockerd stream folds into few, correct summary lines."""

from __future__ import annotations

from typing import Any

from byoc_orch.pull_progress import PullProgress, PullSummary

IMAGE = "127.0.0.1:5000/workers/whisper:2024.11"
MB = 1_000_000


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def downloading(layer: str, current: int, total: int) -> dict[str, Any]:
    return {
        "status": "Downloading",
        "id": layer,
        "progressDetail": {"current": current, "total": total},
        "progress": f"[=>    ] {current / MB:.1f}MB/{total / MB:.1f}MB",
    }


def status(text: str, layer: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"status": text, "progressDetail": {}}
    if layer is not None:
        message["id"] = layer
    return message


def feed(progress: PullProgress, messages: list[dict[str, Any]]) -> list[PullSummary]:
    return [s for s in (progress.update(m) for m in messages) if s is not None]


def test_realistic_stream_counts_layers_and_bytes() -> None:
    clock = FakeClock(100.0)
    progress = PullProgress(image=IMAGE, interval=5.0, clock=clock)
    messages = [
        status("Pulling from workers/whisper", "2024.11"),
        status("Already exists", "aaa111"),
        status("Pulling fs layer", "bbb222"),
        status("Pulling fs layer", "ccc333"),
        status("Waiting", "ccc333"),
        downloading("bbb222", 1 * MB, 10 * MB),
        downloading("bbb222", 6 * MB, 10 * MB),
        downloading("ccc333", 2 * MB, 30 * MB),
        status("Verifying Checksum", "bbb222"),
        status("Download complete", "bbb222"),
        {
            "status": "Extracting",
            "id": "bbb222",
            "progressDetail": {"current": 4 * MB, "total": 25 * MB},
        },
        status("Pull complete", "bbb222"),
    ]
    assert feed(progress, messages) == []  # the clock never moved: no line is due

    clock.now = 103.0
    summary = progress.summary()
    assert summary == PullSummary(
        image=IMAGE,
        layers_done=2,  # aaa111 already existed, bbb222 is complete
        layers_total=3,  # "Pulling from" names the tag, not a layer
        bytes_done=10 * MB + 2 * MB,  # Extracting's own counters are not download bytes
        bytes_total=10 * MB + 30 * MB,
        elapsed_seconds=3.0,
    )
    assert summary.as_log_fields() == {
        "image": IMAGE,
        "layers": "2/3",
        "downloaded_mb": 12.0,
        "total_mb": 40.0,
        "elapsed_s": 3.0,
    }

    rest = [
        downloading("ccc333", 30 * MB, 30 * MB),
        status("Download complete", "ccc333"),
        status("Extracting", "ccc333"),
        status("Pull complete", "ccc333"),
        status("Digest: sha256:" + "d" * 64),
        status(f"Status: Downloaded newer image for {IMAGE}"),
    ]
    assert feed(progress, rest) == []
    clock.now = 106.0
    final = progress.summary()
    assert (final.layers_done, final.layers_total) == (3, 3)
    assert (final.bytes_done, final.bytes_total) == (40 * MB, 40 * MB)
    assert final.elapsed_seconds == 6.0


def test_download_complete_fills_a_layer_whose_last_progress_was_partial() -> None:
    progress = PullProgress(image=IMAGE, clock=FakeClock())
    feed(
        progress,
        [downloading("l1", 3 * MB, 8 * MB), status("Download complete", "l1")],
    )
    summary = progress.summary()
    assert (summary.bytes_done, summary.bytes_total) == (8 * MB, 8 * MB)
    assert (summary.layers_done, summary.layers_total) == (0, 1)  # not extracted yet


def test_pulling_from_lines_are_not_layers() -> None:
    progress = PullProgress(image=IMAGE, clock=FakeClock())
    feed(
        progress,
        [
            status("Pulling from library/busybox", "latest"),
            status("Pulling from library/busybox", "1.36"),
            status("Digest: sha256:" + "e" * 64),
            status("Status: Image is up to date for busybox:latest"),
        ],
    )
    assert progress.summary().layers_total == 0


def test_summaries_come_at_most_once_per_interval() -> None:
    clock = FakeClock(0.0)
    progress = PullProgress(image=IMAGE, interval=5.0, clock=clock)
    layers = [f"layer{n}" for n in range(5)]
    due: list[float] = []
    for i in range(500):
        clock.now = i / 25  # 500 messages over 20 s
        layer = layers[i % len(layers)]
        if progress.update(downloading(layer, i * 1000, 1_000_000)) is not None:
            due.append(clock.now)
    assert due == [5.0, 10.0, 15.0]


def test_summary_is_due_after_a_quiet_gap_but_not_twice() -> None:
    clock = FakeClock(0.0)
    progress = PullProgress(image=IMAGE, interval=5.0, clock=clock)
    clock.now = 4.999
    assert progress.update(status("Waiting", "l1")) is None
    clock.now = 60.0  # a long stall: one line, not a burst catching up
    first = progress.update(status("Waiting", "l1"))
    assert first is not None
    assert first.elapsed_seconds == 60.0
    assert progress.update(status("Waiting", "l1")) is None
    clock.now = 64.9
    assert progress.update(status("Waiting", "l1")) is None
    clock.now = 65.0
    assert progress.update(status("Waiting", "l1")) is not None


def test_summary_reflects_the_message_that_made_it_due() -> None:
    clock = FakeClock(0.0)
    progress = PullProgress(image=IMAGE, interval=5.0, clock=clock)
    progress.update(downloading("l1", 1 * MB, 4 * MB))
    clock.now = 5.0
    summary = progress.update(downloading("l1", 3 * MB, 4 * MB))
    assert summary is not None
    assert (summary.bytes_done, summary.bytes_total) == (3 * MB, 4 * MB)


def test_downloading_without_total_keeps_the_known_total() -> None:
    progress = PullProgress(image=IMAGE, clock=FakeClock())
    feed(
        progress,
        [
            downloading("l1", 1 * MB, 9 * MB),
            {"status": "Downloading", "id": "l1", "progressDetail": {"current": 2 * MB}},
        ],
    )
    summary = progress.summary()
    assert (summary.bytes_done, summary.bytes_total) == (2 * MB, 9 * MB)
