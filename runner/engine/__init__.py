"""The container engine: connecting to it, the labels on xrun's containers, running one, and clean-up.

`client.py` connects to the Docker engine (DOCKER_HOST honoured) and runs throwaway probes in an
image; `labels.py` names the labels xrun puts on its containers and the runner identity they carry;
`execute.py` runs the training container (no network, read-only root, limits, logs) and reports its
result; `watchdog.py` removes the containers of a runner that died and marks its run failed. Nothing
here imports the pipeline: the stages above call down into the engine.
"""
