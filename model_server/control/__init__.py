"""Control: the ControlNets a job may name (catalog.py) and the preprocessors that make its control maps
(preprocessors.py); torch-free. The engine runs them (engine/controlnets.py)."""
