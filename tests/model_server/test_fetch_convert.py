"""``python -m model_server fetch --convert``: this machine's one-time conversions made ahead, so the
first start only loads and the first fast job waits for nothing."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import PYTHON, ROOT, base_env

pytestmark = pytest.mark.slow
pytest.importorskip("openvino")


def test_fetch_convert_makes_the_irs_the_first_start_fast_job_and_controlnet_job_would(tmp_path):
    from model_server.engine.tiny_controlnets import write_tiny_controlnets

    controlnets = tmp_path / "controlnets"
    write_tiny_controlnets(controlnets)  # tiny's (sd1) and tiny-sdxl's: only the model's family is converted
    env = base_env(SD_MODEL="tiny", SD_BACKEND="openvino", SD_DTYPE="float32", SD_CACHE_DIR=str(tmp_path),
                   SD_LCM_LORA="tiny", SD_TINY_VAE="tiny", DEFAULT_SIZE="64", HF_HUB_OFFLINE="1",
                   CONTROLNET_DIR=str(controlnets))
    done = subprocess.run([PYTHON, "-m", "model_server", "fetch", "--convert"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    made = tmp_path / "openvino"
    assert list(made.glob("*-lora-*/unet.xml")), "the fast preset's fused UNet"
    assert list(made.glob("*-vae_decoder/*.xml")) and "converted for this machine" in done.stderr
    assert list(made.glob("*/unet_control.xml")), "the UNet for ControlNet jobs"
    nets = sorted(p.parent.name.rsplit("-", 2)[0] for p in made.glob("*/controlnet.xml"))
    assert nets == ["tiny-controlnet", "tiny-controlnet-single.safetensors"]  # tiny-sdxl's is not tiny's family
