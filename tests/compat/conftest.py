"""One real service (tiny model) shared by each client-library compatibility test module."""

from tests.integration.conftest import stack_fixture

# SD_MODEL=tiny also brings the random LCM-LoRA and TAESD, so the fast preset is there too.
stack = stack_fixture(MODEL_SERVER_QUEUE_SIZE=4, SD_MODEL="tiny")
