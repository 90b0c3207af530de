"""One real service (tiny model) shared by each client-library compatibility test module."""

from tests.integration.conftest import stack_fixture

# SD_MODEL=tiny also brings the random LCM-LoRA and TAESD, so the fast preset is there too; the clients'
# inpainting runs on a tiny inpainting checkpoint, as a deployment with SD_INPAINT_MODEL does.
stack = stack_fixture(MODEL_SERVER_QUEUE_SIZE=4, SD_MODEL="tiny", SD_INPAINT_MODEL="tiny")
