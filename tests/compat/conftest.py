"""One real service (tiny model) shared by each client-library compatibility test module."""

from tests.integration.conftest import stack_fixture

# SD_MODEL=tiny also brings the random LCM-LoRA and TAESD, so the fast preset is there too; the clients'
# inpainting runs on a tiny inpainting checkpoint, as a deployment with SD_INPAINT_MODEL does.
# Also an SD-Turbo-shaped model and two LoRAs, for model and LoRA selection; one gateway worker (the
# default with per-process rate limits), so an A1111 client's chosen checkpoint is kept for its next call.
stack = stack_fixture({"GATEWAY_WORKERS": 1}, loras=True, MODEL_SERVER_QUEUE_SIZE=4, SD_MODEL="tiny",
                      SD_INPAINT_MODEL="tiny", SD_MODELS="tiny-turbo")
