"""The build stage: base image, wheels and code assembled into a deterministic image (no docker build).

`image.py` is the stage (resolve the base by digest, choose and fetch the wheels, assemble, load,
keep a build record per build digest); `layers.py` writes the deterministic pieces (layer tars, image
configs, `docker load` archives, OCI layouts); `wheels.py` turns locked packages into a venv for the
base's interpreter; `bootstrap.py` makes a base from Debian packages with mmdebstrap; `export.py`
takes an image out of the engine (OCI layout, push by digest); `rebuild.py` is `xrun rebuild`.
"""
