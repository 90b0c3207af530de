"""Image-to-image on the model server: init images are hostile input; steps run are steps x strength."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
import zmq
from PIL import Image

from gateway.model_client import RemoteError
from protocol import codec
from protocol.errors import ErrorCode
from protocol.messages import Accepted, Completed, JobState, Submit, Working
from tests.helpers.images import large_upload
from tests.helpers.servers import params


def encoded(size=(80, 48), fmt="PNG", color=(255, 0, 0), exif_rotated=False) -> bytes:
    img = Image.new("RGB", size, color)
    buffer = io.BytesIO()
    if exif_rotated:
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
        img.save(buffer, fmt, exif=exif)
    else:
        img.save(buffer, fmt)
    return buffer.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size and whose data is tiny (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data, fragment", [
    (b"", "needs an init image"), (b"plain text, not an image", "cannot be read"),
    (encoded(fmt="GIF"), "GIF"), (encoded(fmt="BMP"), "BMP"), (encoded()[:60], "cannot be read"),
    (png_header_claiming(100_000, 100_000), "more than"), (png_header_claiming(5000, 5000), "5000x5000"),
])
def test_unusable_init_images_are_refused_at_submit(start_server, data, fragment):
    server, client = start_server()
    with pytest.raises(RemoteError) as caught:
        client.submit(params(mode="img2img", strength=0.5), init_image=data)
    assert caught.value.error.code is ErrorCode.INVALID_PARAMS and fragment in caught.value.error.message
    assert server.table.depth == 0 and client.ping().model_state.value == "ready"


def test_an_init_image_must_match_the_mode(start_server):
    _, client = start_server()
    with pytest.raises(RemoteError) as caught:
        client.submit(params(), init_image=encoded())
    assert caught.value.error.code is ErrorCode.INVALID_PARAMS and "txt2img" in caught.value.error.message


def test_img2img_runs_steps_x_strength_and_the_init_image_shows_through(start_server):
    _, client = start_server(max_upload_pixels=10_000)
    job = client.submit(params(steps=10, strength=0.3, mode="img2img", width=64, height=64),
                        init_image=encoded(size=(96, 64)))
    assert job.progress.total_steps == 3
    events = list(client.watch(job.job_id))
    assert isinstance(events[-1], Completed) and events[-1].job.progress.step == 3
    assert max(e.job.progress.step for e in events if e.job.state is JobState.RUNNING) <= 3
    image = Image.open(io.BytesIO(client.fetch(job.job_id)[1]))
    assert image.size == (64, 64)  # resized to the job's size
    red, green, _ = image.convert("RGB").getpixel((32, 32))
    assert red > green + 60  # the fake blends 70% of the red init image in
    assert "Denoising strength: 0.3" in image.text["parameters"]


def test_exif_orientation_is_applied_before_resizing(start_server):
    from model_server.uploads import decode_init_image

    upright = decode_init_image(encoded(size=(80, 40), fmt="JPEG", exif_rotated=True), 40, 80, 10_000)
    assert upright.size == (40, 80)
    tall = decode_init_image(encoded(size=(80, 40), fmt="JPEG", exif_rotated=True), 8, 8, 10_000)
    assert tall.mode == "RGB"


@pytest.mark.parametrize("mode, round_", [("stretch", False), ("crop", True), ("fill", True)])
def test_a1111s_resize_modes_keep_a_circle_round_or_stretch_it(mode, round_):
    from PIL import ImageDraw

    from model_server.uploads import decode_init_image, decode_mask

    wide = Image.new("RGB", (200, 100), "black")
    ImageDraw.Draw(wide).ellipse((60, 10, 140, 90), fill="white")
    buffer = io.BytesIO()
    wide.save(buffer, "PNG")
    image = np.array(decode_init_image(buffer.getvalue(), 64, 64, 100_000, mode).convert("L")) > 128
    mask = np.array(decode_mask(buffer.getvalue(), None, "luminance", 64, 64, 100_000, mode=mode)) > 128
    ys, xs = np.nonzero(image)
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert bool(abs(width - height) <= 2) is round_, (width, height)
    assert (image == mask).mean() > 0.99  # the mask is shaped exactly as the image
    if mode == "fill":  # the bands above and below are the image's edge rows stretched: black here, never grey
        assert not image[:10].any() and not image[-10:].any()


def test_masks_repaint_white_or_transparent_and_their_edge_is_blurred_as_asked():
    from model_server.uploads import decode, decode_mask

    half = Image.new("L", (64, 64), 0)
    half.paste(255, (0, 0, 32, 64))
    buffer = io.BytesIO()
    half.save(buffer, "PNG")
    hard = decode_mask(buffer.getvalue(), None, "luminance", 64, 64, 10_000)
    soft = decode_mask(buffer.getvalue(), None, "luminance", 64, 64, 10_000, blur=4)
    assert (hard.getpixel((10, 10)), hard.getpixel((50, 10))) == (255, 0)
    assert 0 < soft.getpixel((32, 10)) < 255 and soft.getpixel((2, 10)) > 250 and soft.getpixel((62, 10)) < 5
    rgba = Image.new("RGBA", (64, 64), (9, 9, 9, 255))
    rgba.paste((9, 9, 9, 0), (32, 0, 64, 64))
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")
    init = decode(buffer.getvalue(), "init_image", 10_000)
    from_alpha = decode_mask(b"", init, "alpha", 64, 64, 10_000)  # no mask: the image's own alpha
    assert (from_alpha.getpixel((10, 10)), from_alpha.getpixel((50, 10))) == (0, 255)


def test_an_image_job_that_would_run_no_step_is_refused_at_submit(start_server):
    _, client = start_server()
    with pytest.raises(RemoteError) as caught:
        client.submit(params(steps=5, strength=0.1, mode="img2img"), init_image=encoded())
    assert caught.value.error.code is ErrorCode.INVALID_PARAMS and "run no step" in caught.value.error.message


def test_uploads_are_decoded_off_the_io_thread_and_waiting_senders_hear_working(start_server):
    server, client = start_server(heartbeat_seconds=0.1)
    data = large_upload("WEBP")  # about a second to decode, with its mask
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(server.bound_address)
    try:
        burst = [Submit(params=params(mode="inpaint", strength=0.5, width=512, height=512), init_image=data, mask=data,
                        client_id=f"c{i}") for i in range(3)]
        for ref, msg in enumerate(burst, 1):
            sock.send_multipart(codec.encode(msg, ref))
        started = time.monotonic()
        assert client.ping().model_state.value == "ready"
        assert time.monotonic() - started < 0.5  # answered while three uploads wait to be decoded
        replies: dict[int, list] = {}
        while sum(isinstance(b, Accepted) for bodies in replies.values() for b in bodies) < 3:
            assert sock.poll(20_000), "no reply within 20 s"
            envelope, _ = codec.decode(sock.recv_multipart())
            replies.setdefault(envelope.ref, []).append(envelope.body)
        assert any(isinstance(b, Working) for b in replies[3])  # the last one waited through heartbeats
        assert all(isinstance(bodies[-1], Accepted) for bodies in replies.values())
    finally:
        sock.close(linger=0)


def test_uploads_being_decoded_hold_their_places_in_the_queue(start_server):
    server, client = start_server(max_queued_per_client=1, step_seconds=1.0)
    client.submit(params(steps=20), client_id="alice")  # runs
    client.submit(params(steps=20), client_id="alice")  # queued: alice's one place
    with pytest.raises(RemoteError) as caught:  # refused before its upload is decoded
        client.submit(params(mode="img2img", strength=0.5), init_image=b"not even an image", client_id="alice")
    assert caught.value.error.code is ErrorCode.QUEUE_FULL
    server.table.reserve("bob")  # bob's upload is being decoded: his place is taken
    with pytest.raises(RemoteError) as caught:
        client.submit(params(), client_id="bob")
    assert caught.value.error.code is ErrorCode.QUEUE_FULL
    server.table.release("bob")
    assert client.submit(params(), client_id="bob").state is JobState.QUEUED
    with pytest.raises(RemoteError):  # an unreadable upload gives its place back
        client.submit(params(mode="img2img", strength=0.5), init_image=b"junk", client_id="carol")
    assert client.submit(params(), client_id="carol").state is JobState.QUEUED
