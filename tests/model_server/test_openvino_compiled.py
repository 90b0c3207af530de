"""A compiled OpenVINO model frees its activations' buffers between jobs and runs the same after (real OpenVINO,
a small IR made here whose one intermediate is 64 MiB)."""

from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from model_server import memory  # noqa: E402
from model_server.engine.openvino_compiled import StaticIR  # noqa: E402

MIB = 2**20


@pytest.fixture
def ir(tmp_path):
    """3 channels to 64 and back at 512x512: the 64-channel map between the two convolutions is 64 MiB in f32."""
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    image = ops.parameter([1, 3, 512, 512], np.float32, name="image")
    wide = ops.convolution(image, ops.constant(rng.standard_normal((64, 3, 3, 3)).astype(np.float32)),
                           [1, 1], [1, 1], [1, 1], [1, 1])
    narrow = ops.convolution(ops.relu(wide), ops.constant(rng.standard_normal((3, 64, 3, 3)).astype(np.float32)),
                             [1, 1], [1, 1], [1, 1], [1, 1])
    path = tmp_path / "net.xml"
    ov.save_model(ov.Model([narrow], [image], "net"), path)
    return path


def test_release_memory_frees_each_compiled_models_buffers_and_the_next_call_gives_the_same_result(ir):
    net = StaticIR(ir, "f32", 2)
    image = np.random.default_rng(1).standard_normal((1, 3, 512, 512)).astype(np.float32)
    first = net.infer({"image": image})
    holding = memory.rss_bytes()
    memory.release_memory()  # what the worker does between jobs
    released = memory.rss_bytes()
    assert holding - released > 40 * MIB  # the 64 MiB intermediate (and its neighbours) handed back
    again = net.infer({"image": image})  # allocated again: no compile, the same numbers
    np.testing.assert_array_equal(first, again)
    assert memory.rss_bytes() - released > 40 * MIB
    net.release()  # a dropped compiled model has nothing to free; releasing again is harmless
    memory.release_memory()
