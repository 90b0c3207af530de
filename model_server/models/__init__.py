"""What a job may name: the models (catalog), the LoRAs (loras) and the Pipeline over whichever
model a job asks for, one resident at a time (model_set). No torch here: the engine loads."""
