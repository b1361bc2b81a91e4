"""The build stage: base image, wheels and code assembled into a deterministic image (no docker build)."""
