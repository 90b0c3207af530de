"""Single-file checkpoints and one-step models on the real engine: a diffusers model written as the
original one-file layout people download, converted once and loaded like a folder; and the turbo
preset on an SD-Turbo-shaped tiny model."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model_server.engine import single_file  # noqa: E402
from model_server.engine.diffusers_pipeline import DiffusersPipeline  # noqa: E402
from model_server.engine.tiny_model import build_tiny_pipeline  # noqa: E402
from model_server.pipeline import PipelineLoadError  # noqa: E402
from model_server.settings import ModelServerSettings  # noqa: E402
from protocol.messages import GenerationParams  # noqa: E402
from bench.ldm_checkpoint import write_ldm_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow


def pixels(pipe, **kw) -> np.ndarray:
    p = GenerationParams(**{"prompt": "a cat", "seed": 3, "steps": 2, "width": 64, "height": 64, **kw})
    steps = []
    image = pipe.generate(p, p.seed, lambda step, *a: steps.append(step), lambda: None)
    assert steps[0] == 1 and steps[-1] == p.steps  # (PNDM reports its extra warm-up evaluation as the last step)
    return np.asarray(image, dtype=np.float32)


def test_the_ldm_writer_round_trips_through_diffusers_own_conversion(tmp_path, tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    original = build_tiny_pipeline()
    path = write_ldm_checkpoint(original, tmp_path / "model.safetensors")
    loaded = StableDiffusionPipeline.from_single_file(str(path), config=str(tiny_model_dir), local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k].reshape(mine[k].shape)) for k in mine), name


def test_a_single_file_checkpoint_is_converted_once_and_runs_like_its_folder(tmp_path, tiny_model_dir):
    checkpoint = write_ldm_checkpoint(build_tiny_pipeline(), tmp_path / "models" / "my-model.safetensors")
    settings = ModelServerSettings(model=str(checkpoint), cache_dir=str(tmp_path / "cache"), dtype="float32",
                                   single_file_config=str(tiny_model_dir))
    pipe = DiffusersPipeline.load(settings)
    folder = DiffusersPipeline.load(ModelServerSettings(model=str(tiny_model_dir), cache_dir=str(tmp_path / "c2"),
                                                        dtype="float32"))
    assert np.array_equal(pixels(pipe), pixels(folder))  # the same weights, the same image
    assert pipe.optimizations()["checkpoint_hash"] == single_file.file_sha256(checkpoint)[:10]
    converted = list((tmp_path / "cache" / "checkpoints").iterdir())
    assert len(converted) == 1 and converted[0].name.startswith("my-model-")
    stamp = converted[0].stat().st_mtime_ns
    DiffusersPipeline.load(settings)  # a second load reuses the copy
    assert [p.stat().st_mtime_ns for p in (tmp_path / "cache" / "checkpoints").iterdir()] == [stamp]


def test_a_checkpoint_that_cannot_be_converted_says_what_to_set(tmp_path, tiny_model_dir):
    bogus = tmp_path / "bogus.safetensors"
    from safetensors.torch import save_file

    save_file({"something.else": torch.zeros(2)}, str(bogus))
    settings = ModelServerSettings(model=str(bogus), cache_dir=str(tmp_path / "cache"), dtype="float32",
                                   single_file_config=str(tiny_model_dir))
    with pytest.raises(PipelineLoadError, match="could not convert the single-file checkpoint bogus.safetensors") \
            as info:
        DiffusersPipeline.load(settings)
    assert "SD_SINGLE_FILE_CONFIG" in info.value.error.hint and str(tmp_path) not in info.value.error.message
    missing = ModelServerSettings(model=str(tmp_path / "gone.safetensors"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(PipelineLoadError, match="does not exist"):
        DiffusersPipeline.load(missing)


def test_the_turbo_preset_runs_one_step_from_the_last_timestep_with_the_tiny_decoder(tmp_path):
    pipe = DiffusersPipeline.load(ModelServerSettings(model="tiny-turbo", cache_dir=str(tmp_path), dtype="float32"))
    one = pixels(pipe, steps=1, guidance_scale=0.0, preset="turbo")
    assert pipe.fast_pipe is not None and type(pipe.fast_pipe.vae).__name__ == "AutoencoderTiny"
    assert pipe.fast_pipe.scheduler.timesteps.tolist() == [999]  # trailing: one step starts from pure noise
    assert one.shape == (64, 64, 3) and one.std() > 1
    four = pixels(pipe, steps=4, guidance_scale=0.0, preset="turbo")
    assert pipe.fast_pipe.scheduler.timesteps.tolist() == [999, 749, 499, 249]
    assert not np.array_equal(four, one)
    assert "LCM" not in str(pipe.unavailable_presets())  # the tiny LCM-LoRA is there; the model set decides


def test_an_sdxl_single_file_is_told_by_its_keys_and_converted_with_its_familys_config(tmp_path, tiny_model_dir):
    from model_server.engine.tiny_sdxl import build_tiny_sdxl, write_tiny_sdxl
    from model_server.families import detect

    config = write_tiny_sdxl(tmp_path / "tiny-sdxl-config")
    checkpoint = write_ldm_checkpoint(build_tiny_sdxl(seed=4), tmp_path / "models" / "my-xl.safetensors")
    assert detect(str(checkpoint), "single_file") == "sdxl"
    per_family = f"sd1={tiny_model_dir},sdxl={config}"
    pipe = DiffusersPipeline.load(ModelServerSettings(model=str(checkpoint), cache_dir=str(tmp_path / "cache"),
                                                      dtype="float32", single_file_config=per_family))
    assert type(pipe.pipe).__name__ == "StableDiffusionXLPipeline" and pipe.optimizations()["family"] == "sdxl"
    original = build_tiny_sdxl(seed=4)
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        mine, loaded = getattr(original, name).state_dict(), getattr(pipe.pipe, name).state_dict()
        assert all(torch.equal(mine[k], loaded[k]) for k in mine), name
    assert pixels(pipe).std() > 1
