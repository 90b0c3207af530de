"""The committed v1 messages whose bytes must keep decoding (see test_golden.py).

Run ``python -m tests.protocol.golden_messages`` only when adding a new golden message; never
rewrite an existing ``.bin`` file: old bytes must keep decoding forever within v1.
"""

from __future__ import annotations

from pathlib import Path

from protocol import codec
from protocol.errors import ErrorCode
from protocol.messages import (Accepted, Cancel, ErrorInfo, FetchPreview, FetchResult, GenerationParams, GetJob, ImageInfo,
                               JobState, JobView, ModelState, Ping, StopMode, Pong, ProgressInfo, Rejected, Result,
                               Submit, Watch)

GOLDEN_DIR = Path(__file__).with_name("golden_v1")
_PARAMS = GenerationParams(prompt="a cat", seed=1234, negative_prompt="blurry", steps=20, guidance_scale=7.0,
                           width=512, height=384, scheduler="dpmpp_2m", n=2, format="webp", quality=80)
_VIEW = JobView(job_id="0123456789abcdef0123456789abcdef", state=JobState.RUNNING, created_at=1795680000.5,
                params=_PARAMS, started_at=1795680001.0,
                progress=ProgressInfo(step=5, total_steps=20, image_index=1, seconds_per_step=2.5,
                                      eta_seconds=37.5, elapsed_seconds=12.5))

GOLDEN = {
    "ping": Ping(),
    "submit": Submit(params=_PARAMS, client_id="127.0.0.1", request_id="req-1"),
    "get_job": GetJob(job_id=_VIEW.job_id),
    "watch": Watch(job_id=_VIEW.job_id),
    "fetch_result": FetchResult(job_id=_VIEW.job_id, index=1),
    "cancel": Cancel(job_id=_VIEW.job_id),
    "cancel_interrupt": Cancel(job_id=_VIEW.job_id, mode=StopMode.INTERRUPT),
    "fetch_preview": FetchPreview(job_id=_VIEW.job_id),
    "pong": Pong(model="CompVis/stable-diffusion-v1-4", model_state=ModelState.READY,
                 optimizations={"dtype": "bfloat16", "threads": 2, "safety_checker": False},
                 queue_depth=1, queue_capacity=16, running_job=_VIEW.job_id, rss_bytes=2_500_000_000),
    "accepted": Accepted(job=_VIEW),
    "result": Result(job_id=_VIEW.job_id, image=ImageInfo(index=1, seed=1235, media_type="image/webp",
                                                          width=512, height=384, size_bytes=1000)),
    "rejected": Rejected(error=ErrorInfo(code=ErrorCode.QUEUE_FULL, message="the queue is full",
                                         hint="Retry later.", retryable=True, retry_after=30.0)),
}


def write_missing() -> None:
    GOLDEN_DIR.mkdir(exist_ok=True)
    for name, message in GOLDEN.items():
        path = GOLDEN_DIR / f"{name}.bin"
        if not path.exists():
            path.write_bytes(codec.encode(message, ref=7)[1])


if __name__ == "__main__":
    write_missing()
