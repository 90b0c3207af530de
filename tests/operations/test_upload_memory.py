"""Memory at the largest allowed upload: what decoding costs the model server, measured on the real process.

The model server decodes uploads at submit, one at a time (its IO thread), and keeps only the
resized RGB image and mask a job needs. So however many arrive at once, the transient cost is one
decode of the largest image allowed (MAX_UPLOAD_PIXELS, 4096x4096 by default), in the format that
costs most to decode. Measured on this machine: about 340 MiB for a WebP init image with a WebP
mask (libwebp's decoder holds several full-size buffers), 200 MiB for PNG; a JPEG decodes at a
reduced scale (model_server.uploads). UPLOAD_PEAK_MIB is the bound docs/operations.md states.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.helpers.images import large_upload
from tests.helpers.processes import wait_until

UPLOAD_PEAK_MIB = 512
SIDE = 4096  # MAX_UPLOAD_PIXELS's default is SIDE x SIDE


def status_kib(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("VmHWM", "VmRSS")}


@pytest.mark.parametrize("fmt", ["WEBP", "PNG", "PNG16", "JPEG"])
def test_the_largest_upload_stays_within_its_memory_bound_and_is_given_back(service_factory, fmt):
    service = service_factory(model_env={"FAKE_STEP_SECONDS": "0.02"})
    pid, data = service.model.pid, large_upload(fmt, SIDE)
    before = status_kib(pid)

    def submit(_):
        form = {"prompt": "a red fox", "mode": "inpaint", "strength": "0.5", "steps": "4",
                "width": "1024", "height": "1024"}
        files = {"init_image": ("image", data), "mask": ("mask", data)}
        return requests.post(service.url + "/v1/jobs", data=form, files=files, timeout=60)

    with ThreadPoolExecutor(4) as pool:  # four at once: decoding is serial, so the peak is one upload's
        responses = list(pool.map(submit, range(4)))
    assert [r.status_code for r in responses] == [202] * 4, responses[0].text
    for r in responses:
        wait_until(lambda r=r: service.get(f"/v1/jobs/{r.json()['id']}").json()["state"] == "succeeded",
                   60, what="the job to finish")
    after = status_kib(pid)
    peak_mib = (after["VmHWM"] - before["VmRSS"]) / 1024
    assert peak_mib < UPLOAD_PEAK_MIB, f"{fmt}: decoding peaked {peak_mib:.0f} MiB above idle"
    # Nothing of the uploads is kept once the jobs are done (the worker trims the heap when idle).
    wait_until(lambda: status_kib(pid)["VmRSS"] - before["VmRSS"] < 64 * 1024, 10, what="memory to be given back")
